"""Process-group helpers: who am I, keeping ranks in step, and reproducible generator noise.

* :func:`world`: ``(rank, world_size)`` of the default process group (``(0, 1)`` without one, or
  when the caller asked for a local run with ``distributed=False``).
* :func:`agree_on_failure`: local loops hold no collectives, so a rank that fails inside one must
  not skip the synchronisation the others wait in. Every rank reports whether it failed and all of
  them raise together.
* :func:`seeded_rng`: generators that draw noise in ``forward`` (StyleGAN-style) get the same noise
  for the same latents in every pass, and the caller's global RNG is restored afterwards.
* :func:`init_distributed`: the process group of a command started under ``torchrun``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch

__all__ = [
    "world",
    "agree_on_failure",
    "OtherRankError",
    "seeded_rng",
    "check_samples_per_rank",
    "all_gather_cat",
    "init_distributed",
]


def world(distributed: bool = True) -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` without one.

    Args:
        distributed: ``False`` ignores any process group (a local run on this process only).

    Examples:
        >>> world()
        (0, 1)
    """
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class OtherRankError(RuntimeError):
    """Raised on the ranks that did not fail when another rank did (see :func:`agree_on_failure`).

    Attributes:
        ranks: The ranks that failed (each raised, and reports, its own error).
    """

    def __init__(self, what: str, ranks: list[int]) -> None:
        self.ranks = list(ranks)
        which = "rank " + ", ".join(str(r) for r in self.ranks) if len(self.ranks) == 1 else (
            "ranks " + ", ".join(str(r) for r in self.ranks)
        )
        super().__init__(f"{what} failed on {which}; that rank reports its own error, tagged [rank N]")


def agree_on_failure(
    error: BaseException | None, device: torch.device, what: str, *, distributed: bool = True
) -> None:
    """Raise on every rank if any rank failed (``error`` is this rank's exception or ``None``).

    A failed rank re-raises its own error; the others raise :class:`OtherRankError` naming the
    ranks that failed.

    Examples:
        >>> agree_on_failure(None, torch.device("cpu"), "pass 1")  # single process, no error
    """
    rank, size = world(distributed)
    failed_ranks = [rank] if error is not None else []
    if size > 1:
        flags = torch.zeros(size, dtype=torch.int64, device=device)
        flags[rank] = 0 if error is None else 1
        torch.distributed.all_reduce(flags)
        failed_ranks = [i for i, flag in enumerate(flags.tolist()) if flag]
    if not failed_ranks:
        return
    if error is not None:
        raise error
    raise OtherRankError(what, failed_ranks)


def check_samples_per_rank(num_samples: int, name: str, *, distributed: bool = True) -> None:
    """Every rank needs at least one latent; the same check gives the same answer on all ranks."""
    _, size = world(distributed)
    if num_samples < size:
        raise ValueError(
            f"`{name}`={num_samples} is smaller than the number of processes ({size}); "
            "every process needs at least one latent"
        )


def all_gather_cat(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate equally shaped ``tensor`` of every rank along ``dim`` (rank order)."""
    _, size = world()
    if size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(size)]
    torch.distributed.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim)


def gather_dicts_to_zero(local: dict, device: torch.device) -> dict:
    """The union of every rank's ``local`` dict on rank 0 (other ranks get ``{}``); a collective.

    The values are pickled (``torch.distributed.gather_object``); keep them small and on the CPU.
    """
    rank, size = world()
    if size == 1:
        return local
    parts: list | None = [None] * size if rank == 0 else None
    # NCCL moves the pickled bytes through the current CUDA device: make it this rank's, for the call
    with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
        torch.distributed.gather_object(local, parts, dst=0)
    merged: dict = {}
    for part in parts or []:
        merged.update(part or {})
    return merged


@contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with the global RNG seeded by ``seed``; restore the caller's RNG after.

    Examples:
        >>> before = torch.get_rng_state()
        >>> with seeded_rng(3, torch.device("cpu")):
        ...     a = torch.rand(1)
        >>> with seeded_rng(3, torch.device("cpu")):
        ...     b = torch.rand(1)
        >>> bool(torch.equal(a, b)), bool(torch.equal(before, torch.get_rng_state()))
        (True, True)
    """
    seed = int(seed) % (2**63)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.random.default_generator.manual_seed(seed)
        if devices:  # only this process's device, whose state fork_rng restores
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def init_distributed(device: str) -> tuple[str, bool]:
    """Initialise the default process group from torchrun's environment variables, if set.

    Returns ``(device, initialised_here)``: on CUDA the device becomes ``cuda:<LOCAL_RANK>``
    (backend ``nccl``); on CPU the backend is ``gloo``. Without ``WORLD_SIZE`` > 1 nothing happens.

    Examples:
        >>> init_distributed("cpu") if "WORLD_SIZE" not in os.environ else ("cpu", False)
        ('cpu', False)
    """
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1 or not torch.distributed.is_available() or torch.distributed.is_initialized():
        return device, False
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
        backend = "nccl"
    else:
        backend = "gloo"
    torch.distributed.init_process_group(backend)
    return device, True
