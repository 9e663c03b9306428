"""A fixed, seeded bank of latents, addressable by index and shardable across ranks.

The same seed gives the same bank on every process and at every dissection round, so rounds are
comparable and any process can regenerate the image of latent ``i`` (e.g. a unit's top images).

Latents may be *structured*: a tensor, a tuple (or list) of tensors, or a dict of tensors, each
with the batch first — e.g. ``(z, noise)`` or ``{"z": z, "truncation": t}`` for a StyleGAN-style
generator. Indexing a bank returns a batch in the same structure, which ``generate(generator,
latents)`` receives as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Sequence, Union

import torch
from torch import Tensor

from lightning_dissect._utils.checks import check_int
from lightning_dissect._utils.seeds import derive_seed

__all__ = [
    "Latents",
    "LatentSampler",
    "LatentBank",
    "batch_shard",
    "shard_indices",
    "map_latents",
    "latent_count",
    "noise_seed",
]

Latents = Union[Tensor, tuple, list, Mapping[str, Any]]
"""A batch of latents: a tensor, a tuple/list of tensors or a dict of tensors, batch first."""

LatentSampler = Callable[[int, torch.Generator], Latents]
"""``(n, generator) -> latents`` of ``n`` rows drawn with the given private ``torch.Generator``."""


def map_latents(fn: Callable[[Tensor], Tensor], latents: Latents) -> Latents:
    """Apply ``fn`` to every tensor of a (possibly structured) batch of latents.

    Examples:
        >>> out = map_latents(lambda t: t * 2, {"z": torch.ones(2, 3), "w": (torch.ones(2),)})
        >>> out["z"].sum().item(), type(out["w"]).__name__
        (12.0, 'tuple')
    """
    if isinstance(latents, Tensor):
        return fn(latents)
    if isinstance(latents, Mapping):
        return {k: map_latents(fn, v) for k, v in latents.items()}
    if isinstance(latents, (tuple, list)):
        mapped = [map_latents(fn, v) for v in latents]
        if hasattr(latents, "_fields"):  # a named tuple
            return type(latents)(*mapped)
        return type(latents)(mapped)
    raise TypeError(
        f"latents must be a Tensor, a tuple/list or a dict of tensors, got {type(latents).__name__}"
    )


def _leaves(latents: Latents) -> list[Tensor]:
    found: list[Tensor] = []
    map_latents(lambda t: found.append(t) or t, latents)
    return found


def latent_count(latents: Latents, argument: str = "latents") -> int:
    """Number of latents (rows) in a batch; every tensor of a structure must have the same.

    Examples:
        >>> latent_count((torch.zeros(4, 8), torch.zeros(4, 1, 16, 16)))
        4
    """
    leaves = _leaves(latents)
    if not leaves:
        raise ValueError(f"`{argument}` holds no tensor")
    sizes = {int(t.shape[0]) if t.ndim else -1 for t in leaves}
    if len(sizes) != 1 or -1 in sizes:
        shapes = [tuple(t.shape) for t in leaves]
        raise ValueError(f"every tensor of `{argument}` needs the same batch (first) size; got shapes {shapes}")
    return sizes.pop()


def shard_indices(num_samples: int, rank: int, world_size: int) -> Tensor:
    """Contiguous share of ``range(num_samples)`` for ``rank`` (sizes differ by at most one).

    Examples:
        >>> [shard_indices(5, r, 2).tolist() for r in range(2)]
        [[0, 1, 2], [3, 4]]
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside [0, {world_size})")
    base, extra = divmod(num_samples, world_size)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    return torch.arange(start, stop)


def batch_shard(num_samples: int, rank: int, world_size: int, batch_size: int) -> Tensor:
    """Contiguous share of ``range(num_samples)`` for ``rank``, made of whole batches of ``batch_size``.

    The batches are those of a single process (``range(num_samples)`` cut every ``batch_size``),
    dealt to the ranks in contiguous runs whose counts differ by at most one. Every sample is thus
    run in the same batch whatever the number of ranks, and what a network computes on it is the
    same to the last bit. With fewer batches than ranks the share is :func:`shard_indices`' (then
    floating-point values may differ from a single process in their last bits).

    Examples:
        >>> [batch_shard(9, r, 2, 2).tolist() for r in range(2)]
        [[0, 1, 2, 3, 4, 5], [6, 7, 8]]
        >>> [batch_shard(3, r, 2, 2).tolist() for r in range(2)]
        [[0, 1], [2]]
    """
    num_batches = -(-int(num_samples) // int(batch_size))
    if num_batches < world_size:
        return shard_indices(num_samples, rank, world_size)
    batches = shard_indices(num_batches, rank, world_size)
    start = int(batches[0]) * batch_size
    stop = min((int(batches[-1]) + 1) * batch_size, num_samples)
    return torch.arange(start, stop)


def noise_seed(bank_seed: int, first_index: int) -> int:
    """Seed of the generator noise of the batch of a bank whose first latent is ``first_index``.

    Every pass splits a rank's shard into the same batches, so the same latents always get the
    same noise (and the strips show exactly the images that were ranked).

    Examples:
        >>> noise_seed(1, 0), noise_seed(1, 32)
        (1000003, 1000035)
    """
    return derive_seed(bank_seed, "noise", first_index)


class LatentBank:
    """``num_samples`` latents drawn once from a private generator seeded with ``seed``.

    Args:
        num_samples: Size of the bank.
        latent_shape: Shape of one latent, e.g. ``(128,)`` or ``(128, 1, 1)``; used by the
            default sampler (standard normal).
        seed: Seed of the private ``torch.Generator`` (the global RNG is never touched).
        sampler: Optional custom ``(n, generator) -> latents`` (a tensor, tuple or dict of
            tensors with ``n`` rows each); overrides ``latent_shape``.

    Examples:
        >>> bank = LatentBank(4, (3,), seed=1)
        >>> torch.equal(bank[[2, 3]], LatentBank(4, (3,), seed=1).latents[2:])
        True
        >>> bank.latents.shape
        torch.Size([4, 3])
        >>> styled = LatentBank(4, sampler=lambda n, g: {"z": torch.randn(n, 8, generator=g),
        ...                                              "noise": torch.randn(n, 1, 4, 4, generator=g)})
        >>> {k: tuple(v.shape) for k, v in styled[[0, 1]].items()}
        {'z': (2, 8), 'noise': (2, 1, 4, 4)}
    """

    def __init__(
        self,
        num_samples: int,
        latent_shape: Sequence[int] | None = None,
        seed: int = 1,
        sampler: LatentSampler | None = None,
    ) -> None:
        num_samples = check_int(num_samples, "num_samples", minimum=1)
        if sampler is None and latent_shape is None:
            raise ValueError("LatentBank needs `latent_shape` or a `sampler`")
        generator = torch.Generator(device="cpu")
        generator.manual_seed(int(seed))
        if sampler is not None:
            latents = sampler(num_samples, generator)
            try:
                count = latent_count(latents, "sampler output")
            except (TypeError, ValueError) as err:
                raise ValueError(f"`sampler` must return latents with {num_samples} rows: {err}") from err
            if count != num_samples:
                raise ValueError(f"`sampler` must return {num_samples} rows, got {count}")
        else:
            shape = tuple(int(s) for s in latent_shape)  # type: ignore[union-attr]
            latents = torch.randn((num_samples, *shape), generator=generator)
        self.latents: Latents = latents
        self.seed = int(seed)

    @classmethod
    def from_latents(cls, latents: Latents, seed: int = 0) -> LatentBank:
        """A bank holding the given latents (no draw); ``seed`` seeds their generator noise.

        Examples:
            >>> len(LatentBank.from_latents(torch.zeros(5, 2)))
            5
        """
        latent_count(latents)
        bank = cls.__new__(cls)
        bank.latents = latents
        bank.seed = int(seed)
        return bank

    def __len__(self) -> int:
        return latent_count(self.latents)

    def noise_seed(self, first_index: int) -> int:
        """Seed of the generator noise of the batch starting at latent ``first_index`` (see :func:`noise_seed`)."""
        return noise_seed(self.seed, first_index)

    def __getitem__(self, indices: Sequence[int] | Tensor | slice) -> Latents:
        if isinstance(indices, slice):
            return map_latents(lambda t: t[indices], self.latents)
        index = torch.as_tensor(indices, dtype=torch.long)
        return map_latents(lambda t: t[index.to(t.device)], self.latents)
