"""Distributed synchronisation by all-reduce for metrics whose states are all sums.

TorchMetrics' default ``gather_all_tensors`` materialises ``world_size`` copies of every state
before summing them; for large count states that is ``world_size`` times the memory. All-reduce
sums in place. The function returns a one-element list so that TorchMetrics' stack-then-reduce
step leaves the already-summed tensor unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["all_reduce_sum"]


def all_reduce_sum(tensor: Tensor, group: Any | None = None) -> list[Tensor]:
    """Sum ``tensor`` over all processes; usable as a TorchMetrics ``dist_sync_fn``.

    Examples:
        >>> all_reduce_sum(torch.tensor([1, 2]))  # no process group: the tensor itself
        [tensor([1, 2])]
    """
    out = tensor.clone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM, group=group)
    return [out]
