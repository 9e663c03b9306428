"""``UnitQuantiles``: per-unit activation quantiles with exactly mergeable state."""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Sequence

import torch
from torch import Tensor
from torchmetrics.utilities import rank_zero_warn

from lightning_dissect._utils.checks import check_activations, check_count, check_levels
from lightning_dissect._utils.parallel import run_tasks, worker_count
from lightning_dissect.config import DissectionConfig
from lightning_dissect.functional.quantiles import (
    LogHistogramSpec,
    quantiles_from_histogram,
    unit_histogram,
)
from lightning_dissect.functional.upsample import _size2, upsample_units_first
from lightning_dissect.metrics._base import SumStateMetric

__all__ = ["UnitQuantiles"]

_CHUNK_VALUES = 1 << 20


class UnitQuantiles(SumStateMetric):
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
        quantiles: One level in ``[0, 1]`` (a number or a 0-d tensor; ``compute`` returns
            ``(U,)``) or a sequence / 1-D tensor of ``Q`` levels (``compute`` returns ``(U, Q)``).
        relative_accuracy: Worst relative error of a returned quantile.
        min_magnitude: Smallest magnitude resolved; smaller ones count as zero.
        max_magnitude: Largest magnitude resolved; larger ones are clamped (and counted in
            :attr:`overflow`, with a warning at compute time if a quantile falls there).
        validate_args: Check shapes and finiteness of every batch. Without the check, NaN and
            infinite activations count as overflow.
        kwargs: Passed to :class:`torchmetrics.Metric` (e.g. ``process_group``); ``dist_sync_fn``
            defaults to :func:`~lightning_dissect.metrics.all_reduce_sum`.

    The bucket layout (set by ``relative_accuracy``, ``min_magnitude`` and ``max_magnitude``) is
    kept in the persistent buffer ``histogram_layout``; ``load_state_dict`` refuses a histogram
    saved with another layout or another ``num_units``.

    Examples:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> metric = UnitQuantiles(num_units=3, quantiles=[0.5, 0.99])
        >>> acts = torch.randn(8, 3, 4, 4).relu()
        >>> metric.update(acts, size=(16, 16))
        >>> metric.compute().shape
        torch.Size([3, 2])
    """

    higher_is_better: bool | None = None

    histogram: Tensor
    overflow: Tensor
    histogram_layout: Tensor
    _setting_buffers = ("histogram_layout",)

    def __init__(
        self,
        num_units: int,
        quantiles: float | Sequence[float] | Tensor = DissectionConfig.quantile,
        relative_accuracy: float = 0.005,
        min_magnitude: float = 1e-6,
        max_magnitude: float = 1e6,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_units = check_count(num_units, "num_units")
        self.levels, self._scalar = check_levels(quantiles, "quantiles")
        self.spec = LogHistogramSpec(relative_accuracy, min_magnitude, max_magnitude)
        self.validate_args = validate_args
        self._add_sum_state("histogram", (self.num_units, self.spec.num_buckets))
        self._add_sum_state("overflow", (self.num_units,))
        self.register_buffer("histogram_layout", self._layout(self.spec), persistent=True)

    @staticmethod
    def _layout(spec: LogHistogramSpec) -> Tensor:
        return torch.tensor([spec.mantissa_bits, spec.key_low, spec.key_high], dtype=torch.int64)

    def _settings_text(self) -> str:
        s = self.spec
        return (
            f"num_units={self.num_units}, relative_accuracy={s.relative_accuracy}, "
            f"min_magnitude={s.min_magnitude}, max_magnitude={s.max_magnitude}"
        )

    def _state_axes(self) -> dict[str, tuple[tuple[str, int], ...]]:
        buckets = ("relative_accuracy / min_magnitude / max_magnitude (histogram buckets)", self.spec.num_buckets)
        return {
            "histogram": (("num_units", self.num_units), buckets),
            "overflow": (("num_units", self.num_units),),
        }

    def _setting_mismatch(self, key: str, value: Tensor) -> str | None:
        mine = self.histogram_layout.cpu()
        if not isinstance(value, Tensor) or value.shape != mine.shape:
            return f"buffer `{key}` must be a tensor of shape (3,), got {value!r}"
        theirs = value.to("cpu", torch.int64)
        if torch.equal(theirs, mine):
            return None
        which = []
        if theirs[0] != mine[0]:
            which.append(
                f"`relative_accuracy` (the loaded histogram resolves 2**-{int(theirs[0]) + 1}, this "
                f"metric {self.spec.relative_accuracy} resolves 2**-{int(mine[0]) + 1})"
            )
        else:
            if theirs[1] != mine[1]:
                which.append(f"`min_magnitude` (this metric: {self.spec.min_magnitude})")
            if theirs[2] != mine[2]:
                which.append(f"`max_magnitude` (this metric: {self.spec.max_magnitude})")
        return (
            "the histogram was saved by a UnitQuantiles with another bucket layout: build this "
            "one with the same " + " and ".join(which)
        )

    def update(self, activations: Tensor, size: int | tuple[int, int] | None = None) -> None:
        """Add a batch.

        Args:
            activations: ``(B, U, h, w)`` maps or ``(N, U)`` values.
            size: If given, the quantiles are those of the maps bilinearly upsampled
                (``align_corners=False``) to ``(H, W)`` (one positive int or a pair).
        """
        if size is not None:
            size = _size2(size)
        check_activations(
            activations,
            num_units=self.num_units,
            allow_flat=size is None,
            check_values=self.validate_args,
        )
        activations = activations.detach()
        if activations.shape[0] == 0:  # an empty batch adds nothing
            return
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

        def add(start: int) -> None:  # one unit group; the groups write disjoint rows
            values = upsample_units_first(activations[:, start : start + step], size)
            counts, overflow = unit_histogram(values, self.spec)
            self.histogram[start : start + step] += counts
            self.overflow[start : start + step] += overflow

        run_tasks(
            [partial(add, start) for start in range(0, self.num_units, step)],
            worker_count(activations.device),
        )

    def compute(self) -> Tensor:
        """Quantiles, ``(U,)`` for one level or ``(U, Q)`` for several (float32)."""
        return self._quantiles(self.levels)

    def quantile(self, levels: float | Sequence[float] | Tensor) -> Tensor:
        """Quantiles at other levels from the same (synced) state, ``(U,)`` or ``(U, Q)``.

        ``levels`` is one level (a number or a 0-d tensor; returns ``(U,)``) or a sequence.

        Call it on every rank under DDP: it synchronises like ``compute``.
        """
        tensor, scalar = check_levels(levels, "levels")
        with self.synced_states():
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
                    "clamped; build UnitQuantiles with a larger `max_magnitude` (or, with "
                    "validate_args=False, the `activations` may have held NaN or Inf values, "
                    "which count as overflow)."
                )
        return values.to(torch.float32)

    def plot(self, val: Tensor | None = None, ax: Any = None, *, sort: bool = False) -> tuple[Any, Any]:
        """The per-unit quantile profile: each unit's quantile, one line per level (TorchMetrics' ``plot``).

        Args:
            val: Quantiles ``(U,)`` or ``(U, Q)`` at this metric's levels (default: :meth:`compute`).
            ax: Axes to draw into (default: a new figure).
            sort: Order units by their value at the highest level (the x axis then ranks units).

        Returns:
            ``(fig, ax)``. Needs matplotlib.

        Examples:
            >>> metric = UnitQuantiles(num_units=3, quantiles=[0.5, 0.99])
            >>> metric.update(torch.arange(24.0).reshape(2, 3, 2, 2))
            >>> fig, ax = metric.plot()
            >>> [line.get_label() for line in ax.get_lines()]
            ['q = 0.5', 'q = 0.99']
        """
        from lightning_dissect.metrics._plot import figure_and_axes

        values = (self.compute() if val is None else val).detach().float().cpu()
        if values.ndim == 1:
            values = values[:, None]
        levels = [float(q) for q in self.levels.flatten()]
        if values.ndim != 2 or values.shape[1] != len(levels):
            raise ValueError(
                f"`val` must be (U,) or (U, {len(levels)}) quantiles at levels {levels}, "
                f"got shape {tuple(values.shape)}"
            )
        order = torch.argsort(values[:, -1], descending=True, stable=True) if sort else torch.arange(len(values))
        values = values[order]
        fig, ax = figure_and_axes(ax, (6.4, 3.6))
        marker = "o" if len(values) <= 64 else None
        for j, q in enumerate(levels):
            ax.plot(range(len(values)), values[:, j].numpy(), marker=marker, markersize=3, label=f"q = {q:g}")
        ax.set_xlabel("unit (ranked by the highest level)" if sort else "unit")
        ax.set_ylabel("activation quantile")
        ax.set_title("Per-unit activation quantiles")
        if not sort and len(values) <= 32:
            ax.set_xticks(range(len(values)))
        ax.legend()
        return fig, ax
