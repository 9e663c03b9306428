"""``UnitQuantiles``: per-unit activation quantiles with exactly mergeable state."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn

from lightning_dissect.functional._checks import check_activations
from lightning_dissect.functional.quantiles import (
    LogHistogramSpec,
    quantiles_from_histogram,
    unit_histogram,
)
from lightning_dissect.functional.upsample import _size2, upsample_units_first
from lightning_dissect.metrics._sync import all_reduce_sum

__all__ = ["UnitQuantiles"]

_CHUNK_VALUES = 1 << 20


class UnitQuantiles(Metric):
    r"""Per-unit quantiles of activations (optionally of their bilinearly upsampled maps).

    The state is a signed log-bucket histogram per unit (see
    :mod:`lightning_dissect.functional.quantiles`): integer counts that add across batches and
    processes, so the result does not depend on how samples are split over GPUs and a DDP run
    equals a single-process run bit for bit. The returned value for level ``q`` is within a
    relative error of ``relative_accuracy`` (the default gives ``2**-8 ≈ 0.39 %``) of the exact
    order statistic ``torch.kthvalue(x, max(1, ceil(q * N)))`` for magnitudes in
    ``[min_magnitude, max_magnitude]``; magnitudes below ``min_magnitude`` are returned as 0
    (ReLU zeros are exact). For finer thresholds lower ``relative_accuracy`` (memory grows as
    ``1 / relative_accuracy``).

    Memory is fixed, independent of the number of samples: ``8 * num_buckets + 8`` bytes per unit,
    i.e. about 80 KiB per unit at the defaults (``num_buckets = 10207``); halving
    ``relative_accuracy`` roughly doubles it, narrowing the magnitude range shrinks it.

    Args:
        num_units: Number of units ``U`` (channels).
        quantiles: One level in ``[0, 1]`` (``compute`` returns ``(U,)``) or a sequence of ``Q``
            levels (``compute`` returns ``(U, Q)``).
        relative_accuracy: Worst relative error of a returned quantile.
        min_magnitude: Smallest magnitude resolved; smaller ones count as zero.
        max_magnitude: Largest magnitude resolved; larger ones are clamped (and counted in
            :attr:`overflow`, with a warning at compute time if a quantile falls there).
        validate_args: Check shapes and finiteness of every batch.
        kwargs: Passed to :class:`torchmetrics.Metric` (e.g. ``process_group``).

    Examples:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> metric = UnitQuantiles(num_units=3, quantiles=[0.5, 0.99])
        >>> acts = torch.randn(8, 3, 4, 4).relu()
        >>> metric.update(acts, size=(16, 16))
        >>> metric.compute().shape
        torch.Size([3, 2])
    """

    full_state_update: bool = False
    is_differentiable: bool = False
    higher_is_better: bool | None = None

    histogram: Tensor
    overflow: Tensor

    def __init__(
        self,
        num_units: int,
        quantiles: float | Sequence[float] = 0.99,
        relative_accuracy: float = 0.005,
        min_magnitude: float = 1e-6,
        max_magnitude: float = 1e6,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dist_sync_fn", all_reduce_sum)
        super().__init__(**kwargs)
        if not isinstance(num_units, int) or num_units < 1:
            raise ValueError(f"`num_units` must be a positive int, got {num_units!r}")
        self._scalar = isinstance(quantiles, (int, float))
        levels = torch.tensor([quantiles] if self._scalar else list(quantiles), dtype=torch.float64)
        if levels.numel() == 0 or not bool(((levels >= 0) & (levels <= 1)).all()):
            raise ValueError(f"`quantiles` must be levels in [0, 1], got {quantiles!r}")
        self.num_units = num_units
        self.levels = levels
        self.spec = LogHistogramSpec(relative_accuracy, min_magnitude, max_magnitude)
        self.validate_args = validate_args
        self.add_state(
            "histogram",
            torch.zeros(num_units, self.spec.num_buckets, dtype=torch.int64),
            dist_reduce_fx="sum",
        )
        self.add_state("overflow", torch.zeros(num_units, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, activations: Tensor, size: int | tuple[int, int] | None = None) -> None:
        """Add a batch.

        Args:
            activations: ``(B, U, h, w)`` maps or ``(N, U)`` values.
            size: If given, the quantiles are those of the maps bilinearly upsampled
                (``align_corners=False``) to ``(H, W)``.
        """
        check_activations(
            activations,
            num_units=self.num_units,
            allow_flat=size is None,
            check_values=self.validate_args,
        )
        activations = activations.detach()
        if activations.ndim == 2:
            counts, overflow = unit_histogram(activations.T, self.spec)
            self.histogram += counts
            self.overflow += overflow
            return
        # Upsample a few units at a time so the maps stay in cache (about 1M values per chunk);
        # the counts are the same integers as for one big pass.
        per_unit = activations.shape[0] * (
            activations[0, 0].numel() if size is None else math.prod(_size2(size))
        )
        step = max(1, _CHUNK_VALUES // max(1, per_unit))
        for start in range(0, self.num_units, step):
            values = upsample_units_first(activations[:, start : start + step], size)
            counts, overflow = unit_histogram(values, self.spec)
            self.histogram[start : start + step] += counts
            self.overflow[start : start + step] += overflow

    def compute(self) -> Tensor:
        """Quantiles, ``(U,)`` for one level or ``(U, Q)`` for several (float32)."""
        return self._quantiles(self.levels)

    def quantile(self, levels: float | Sequence[float] | Tensor) -> Tensor:
        """Quantiles at other levels from the same (synced) state, ``(U,)`` or ``(U, Q)``.

        Call it on every rank under DDP: it synchronises like ``compute``.
        """
        scalar = isinstance(levels, (int, float))
        tensor = torch.as_tensor([levels] if scalar else levels, dtype=torch.float64).reshape(-1)
        if tensor.numel() == 0 or not bool(((tensor >= 0) & (tensor <= 1)).all()):
            raise ValueError(f"`levels` must be quantile levels in [0, 1], got {levels!r}")
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn,
            should_sync=self._to_sync,
            should_unsync=self._should_unsync,
        ):
            values = self._values(tensor)
        return values[:, 0] if scalar else values

    def _quantiles(self, levels: Tensor) -> Tensor:
        values = self._values(levels)
        return values[:, 0] if self._scalar else values

    def _values(self, levels: Tensor) -> Tensor:
        if int(self.histogram[0].sum()) == 0:
            raise RuntimeError("UnitQuantiles.compute() called before any update()")
        values = quantiles_from_histogram(self.histogram, levels.to(self.histogram.device), self.spec)
        if bool(self.overflow.any()):
            top = self.spec.bucket_values(values.device).abs().max()
            if bool((values.abs() >= top).any()):
                rank_zero_warn(
                    f"Some quantiles exceed max_magnitude={self.spec.max_magnitude} and are "
                    "clamped; build UnitQuantiles with a larger `max_magnitude`."
                )
        return values.to(torch.float32)
