"""A fixed, seeded bank of latent vectors, addressable by index and shardable across ranks.

The same seed gives the same bank on every process and at every dissection round, so rounds are
comparable and any process can regenerate the image of latent ``i`` (e.g. a unit's top images).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["LatentSampler", "LatentBank", "shard_indices"]

LatentSampler = Callable[[int, torch.Generator], Tensor]
"""``(n, generator) -> (n, ...)`` latents drawn with the given private ``torch.Generator``."""


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


class LatentBank:
    """``num_samples`` latents drawn once from a private generator seeded with ``seed``.

    Args:
        num_samples: Size of the bank.
        latent_shape: Shape of one latent, e.g. ``(128,)`` or ``(128, 1, 1)``; used by the
            default sampler (standard normal).
        seed: Seed of the private ``torch.Generator`` (the global RNG is never touched).
        sampler: Optional custom ``(n, generator) -> Tensor``; overrides ``latent_shape``.

    Examples:
        >>> bank = LatentBank(4, (3,), seed=1)
        >>> torch.equal(bank[[2, 3]], LatentBank(4, (3,), seed=1).latents[2:])
        True
        >>> bank.latents.shape
        torch.Size([4, 3])
    """

    def __init__(
        self,
        num_samples: int,
        latent_shape: Sequence[int] | None = None,
        seed: int = 1,
        sampler: LatentSampler | None = None,
    ) -> None:
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"`num_samples` must be a positive int, got {num_samples!r}")
        if sampler is None and latent_shape is None:
            raise ValueError("LatentBank needs `latent_shape` or a `sampler`")
        generator = torch.Generator(device="cpu")
        generator.manual_seed(int(seed))
        if sampler is not None:
            latents = sampler(num_samples, generator)
            if not isinstance(latents, Tensor) or latents.shape[0] != num_samples:
                raise ValueError(
                    f"`sampler` must return a tensor with {num_samples} rows, got "
                    f"{getattr(latents, 'shape', type(latents).__name__)}"
                )
        else:
            shape = tuple(int(s) for s in latent_shape)  # type: ignore[union-attr]
            latents = torch.randn((num_samples, *shape), generator=generator)
        self.latents = latents
        self.seed = int(seed)

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def __getitem__(self, indices: Sequence[int] | Tensor | slice) -> Tensor:
        if isinstance(indices, slice):
            return self.latents[indices]
        return self.latents[torch.as_tensor(indices, dtype=torch.long)]
