"""The top-k latents of every unit by spatial maximum activation, merged exactly across ranks."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_dissect._utils.distributed import all_gather_cat

__all__ = ["TopK"]


def _merge(
    values: Tensor, indices: Tensor, new_values: Tensor, new_indices: Tensor, k: int, *, in_order: bool = False
) -> tuple[Tensor, Tensor]:
    """Keep the ``k`` largest per row; ties go to the smaller latent index (deterministic).

    ``in_order``: the rows of ``values`` are already in that order and every row of ``new_indices``
    ascends from above all of ``indices`` (a pass's next batch): the columns are then in index order
    among equal values, and one stable sort by value gives the same result.
    """
    all_values = torch.cat([values, new_values], 1)
    all_indices = torch.cat([indices, new_indices], 1)
    if not in_order:
        order = torch.sort(all_indices, dim=1, stable=True).indices
        all_values = all_values.gather(1, order)
        all_indices = all_indices.gather(1, order)
    order = torch.sort(all_values, dim=1, descending=True, stable=True).indices[:, :k]
    return all_values.gather(1, order), all_indices.gather(1, order)


class TopK:
    """Running top-``k`` (value, latent index) per unit.

    Examples:
        >>> top = TopK(2, k=2)
        >>> top.update(torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.0, 5.0]]), torch.tensor([7, 8, 9]))
        >>> top.indices.tolist()
        [[8, 9], [9, 7]]
    """

    def __init__(self, num_units: int, k: int, device: torch.device | str = "cpu") -> None:
        self.k = k
        self.values = torch.empty(num_units, 0, device=device)
        self.indices = torch.empty(num_units, 0, dtype=torch.long, device=device)
        #: The largest latent index merged so far (``-1``: none).
        self._last = -1

    def update(self, values: Tensor, indices: Tensor) -> None:
        """Merge ``values`` ``(U, B)`` of the latents ``indices`` ``(B,)``."""
        listed = indices.reshape(-1).tolist()
        # a pass's batches come in ascending latent order: no sort by index is needed then
        in_order = bool(listed) and listed[0] > self._last and all(a < b for a, b in zip(listed, listed[1:]))
        self._last = max([self._last, *listed])
        idx = indices.to(values.device).expand_as(values)
        self.values, self.indices = _merge(self.values, self.indices, values, idx, self.k, in_order=in_order)

    def gathered(self, world_size: int) -> tuple[Tensor, Tensor]:
        """``(values, indices)`` over all ranks (every rank gets the same)."""
        if world_size == 1:
            return self.values, self.indices
        values, indices = self.values, self.indices
        # a rank with fewer than k latents holds fewer columns: pad to k so all_gather shapes agree
        missing = self.k - values.shape[1]
        if missing > 0:
            values = torch.cat([values, values.new_full((values.shape[0], missing), float("-inf"))], 1)
            indices = torch.cat([indices, indices.new_full((indices.shape[0], missing), -1)], 1)
        merged_v, merged_i = _merge(
            values[:, :0], indices[:, :0], all_gather_cat(values, 1), all_gather_cat(indices, 1), self.k
        )
        real = int((merged_i[0] >= 0).sum())  # padding sorts last (value -inf)
        return merged_v[:, :real], merged_i[:, :real]
