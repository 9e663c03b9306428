"""``UnitQuantiles``: per-unit activation quantiles with exactly mergeable state."""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Sequence

import torch
from torch import Tensor
from torchmetrics.utilities import rank_zero_warn

from lightning_dissect._utils.checks import check_activations, check_int, check_levels
from lightning_dissect._utils.parallel import run_tasks, worker_count
from lightning_dissect.config import DissectionConfig
from lightning_dissect.functional.quantiles import (
    ANCHOR_UNSET,
    LogHistogramSpec,
    accumulate_anchored_histogram,
    accumulate_native_histogram,
    anchored_spec,
    magnitude_exponents,
    magnitude_exponents_of_maps,
    native_key_offsets,
    quantiles_from_histogram,
    shift_histogram,
    unit_histogram,
)
from lightning_dissect.functional.upsample import _size2, upsample_bilinear
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
    order statistic ``torch.kthvalue(x, max(1, ceil(q * N)))``; ReLU zeros are exact. For finer
    thresholds lower ``relative_accuracy`` (memory grows as ``1 / relative_accuracy``).

    **Any scale** (the default): the histogram follows each unit's own scale. It is anchored at
    the power of two above the unit's largest magnitude seen so far and resolves magnitudes down
    to ``1 / dynamic_range`` of it (default ``2**40 ≈ 1.1e12``); smaller ones count as zero.
    Multiplying a unit's activations by any positive constant multiplies its quantiles by that
    constant (exactly for a power of two, within ``relative_accuracy`` otherwise), from float32's
    smallest normal number to its largest. The anchors are a state too: histograms with
    different anchors are aligned (an exact shift by whole binades) before they are added, under
    DDP (an all-reduce of the anchors by maximum, then the usual sum) and in ``merge_state``.

    **A fixed window** (``min_magnitude`` or ``max_magnitude`` given): magnitudes in
    ``[min_magnitude, max_magnitude]`` are resolved, smaller ones are 0, larger ones clamped.

    Memory is fixed, independent of the number of samples: ``8 * num_buckets + 16`` bytes per unit,
    i.e. about 80 KiB per unit at the defaults (``num_buckets = 10243``); halving
    ``relative_accuracy`` roughly doubles it, a smaller ``dynamic_range`` shrinks it.

    Args:
        num_units: Number of units ``U`` (channels).
        quantiles: One level in ``[0, 1]`` (a number or a 0-d tensor; ``compute`` returns
            ``(U,)``) or a sequence / 1-D tensor of ``Q`` levels (``compute`` returns ``(U, Q)``).
        relative_accuracy: Worst relative error of a returned quantile.
        min_magnitude: Fixed window: smallest magnitude resolved; smaller ones count as zero
            (default ``None``: the anchored histogram; with only ``max_magnitude`` given, 1e-6).
        max_magnitude: Fixed window: largest magnitude resolved; larger ones are clamped (and
            counted in :attr:`overflow`, with a warning at compute time if a quantile falls
            there). Default ``None`` (anchored; with only ``min_magnitude`` given, 1e6).
        dynamic_range: Anchored histogram: magnitudes below ``1 / dynamic_range`` of a unit's
            largest (rounded to a power of two) count as zero.
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
        min_magnitude: float | None = None,
        max_magnitude: float | None = None,
        validate_args: bool = True,
        dynamic_range: float = 2.0**40,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_units = check_int(num_units, "num_units", minimum=1)
        self.levels, self._scalar = check_levels(quantiles, "quantiles")
        self.anchored = min_magnitude is None and max_magnitude is None
        if self.anchored:
            self.spec = anchored_spec(relative_accuracy, dynamic_range)
        else:
            self.spec = LogHistogramSpec(
                relative_accuracy,
                1e-6 if min_magnitude is None else min_magnitude,
                1e6 if max_magnitude is None else max_magnitude,
            )
        self.validate_args = validate_args
        self._add_sum_state("histogram", (self.num_units, self.spec.num_buckets))
        self._add_sum_state("overflow", (self.num_units,))
        if self.anchored:
            # ``anchor[u] = e - ANCHOR_UNSET``: the unit's values are counted as ``x * 2**-e``;
            # stored offset so that the reset value 0 means "no non-zero value seen yet"
            self._add_sum_state("anchor", (self.num_units,))
        self.register_buffer("histogram_layout", self._layout(self.spec), persistent=True)

    @staticmethod
    def _layout(spec: LogHistogramSpec) -> Tensor:
        return torch.tensor([spec.mantissa_bits, spec.key_low, spec.key_high], dtype=torch.int64)

    def _settings_text(self) -> str:
        s = self.spec
        if self.anchored:
            return (
                f"num_units={self.num_units}, relative_accuracy={s.relative_accuracy}, "
                f"dynamic_range=2**{round(-math.log2(s.min_magnitude))}"
            )
        return (
            f"num_units={self.num_units}, relative_accuracy={s.relative_accuracy}, "
            f"min_magnitude={s.min_magnitude}, max_magnitude={s.max_magnitude}"
        )

    def _state_axes(self) -> dict[str, tuple[tuple[str, int], ...]]:
        what = "dynamic_range" if self.anchored else "min_magnitude / max_magnitude"
        buckets = (f"relative_accuracy / {what} (histogram buckets)", self.spec.num_buckets)
        axes = {
            "histogram": (("num_units", self.num_units), buckets),
            "overflow": (("num_units", self.num_units),),
        }
        if self.anchored:
            axes["anchor"] = (("num_units", self.num_units),)
        return axes

    # ------------------------------------------------------------------ anchors
    def _exponents(self, anchor: Tensor | None = None) -> Tensor:
        """The anchor exponents ``e`` (``ANCHOR_UNSET`` where none)."""
        stored = self.anchor if anchor is None else anchor
        return torch.where(stored == 0, torch.full_like(stored, ANCHOR_UNSET), stored + ANCHOR_UNSET)

    def _align(self, histogram: Tensor, anchor: Tensor, target: Tensor) -> Tensor:
        """``histogram`` (counted at stored anchors ``anchor``) moved to the stored anchors ``target``."""
        by = torch.where(anchor == 0, torch.zeros_like(anchor), target - anchor)
        return shift_histogram(histogram, by, self.spec)

    def _raise_anchor(self, exponents: Tensor) -> None:
        """Raise each unit's anchor to at least ``exponents`` (moving its counts down)."""
        stored = torch.where(exponents == ANCHOR_UNSET, torch.zeros_like(exponents), exponents - ANCHOR_UNSET)
        target = torch.maximum(self.anchor, stored.to(self.anchor.device))
        # only units that have counts and whose anchor rises move (most keep theirs after a few batches)
        moved = ((target != self.anchor) & (self.anchor != 0)).nonzero().flatten()
        if len(moved):
            self.histogram[moved] = self._align(self.histogram[moved], self.anchor[moved], target[moved])
        self.anchor = target

    def _reduce_states(self, incoming_state: dict[str, Any]) -> None:
        """Add another histogram (``merge_state``, ``forward``): aligned to the larger anchors first."""
        if not self.anchored:
            super()._reduce_states(incoming_state)
            return
        theirs = incoming_state["anchor"].to(self.anchor.device)
        target = torch.maximum(self.anchor, theirs)
        self.histogram = self._align(self.histogram, self.anchor, target) + self._align(
            incoming_state["histogram"].to(self.histogram.device), theirs, target
        )
        self.overflow = self.overflow + incoming_state["overflow"].to(self.overflow.device)
        self.anchor = target

    def _sync_dist(self, dist_sync_fn: Any = None, process_group: Any | None = None) -> None:
        """Align every process's histogram to the largest anchors (all-reduce max), then sum."""
        if self.anchored and torch.distributed.is_available() and torch.distributed.is_initialized():
            target = self.anchor.clone()
            torch.distributed.all_reduce(target, op=torch.distributed.ReduceOp.MAX, group=process_group)
            self.histogram = self._align(self.histogram, self.anchor, target)
            # the anchors are then equal everywhere; the states are summed below, so only the
            # first process contributes them
            first = torch.distributed.get_rank(process_group) == 0
            self.anchor = target if first else torch.zeros_like(target)
        super()._sync_dist(dist_sync_fn, process_group=process_group)

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
            if self.anchored and (theirs[1] != mine[1] or theirs[2] != mine[2]):
                which.append(f"`dynamic_range` (this metric: {1.0 / self.spec.min_magnitude:g}; or the "
                             "`min_magnitude` / `max_magnitude` of a fixed window)")
            elif theirs[1] != mine[1]:
                which.append(f"`min_magnitude` (this metric: {self.spec.min_magnitude})")
            if theirs[2] != mine[2] and not self.anchored:
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
            values = activations.T
            if self.anchored:
                self._raise_anchor(magnitude_exponents(values))
                accumulate_anchored_histogram(values, self._exponents(), self.spec, self.histogram, self.overflow)
                return
            counts, overflow = unit_histogram(values, self.spec)
            self.histogram += counts
            self.overflow += overflow
            return
        offsets = None
        if self.anchored:
            # the largest magnitude of the raw maps bounds that of their bilinear upsampling
            self._raise_anchor(magnitude_exponents_of_maps(activations))
            exponents = self._exponents()
            offsets = native_key_offsets(exponents, self.spec) if activations.device.type == "cpu" else None
            # bilinear weights are non-negative: maps with no negative value (ReLU) upsample to none
            nonnegative = offsets is None and bool(activations.amin() >= 0)
        # Upsample a few units at a time so the maps stay in cache (about 1M values per chunk);
        # the counts are the same integers as for one big pass.
        per_unit = activations.shape[0] * (
            activations[0, 0].numel() if size is None else math.prod(_size2(size))
        )
        step = max(1, _CHUNK_VALUES // max(1, per_unit))
        # unit-major raw maps, made once: each group's slice is then upsampled as it is
        maps = activations.transpose(0, 1).contiguous()

        def add(start: int) -> None:  # one unit group; the groups write disjoint rows
            group = maps[start : start + step]
            values = (group if size is None else upsample_bilinear(group, size)).reshape(group.shape[0], -1)
            rows = slice(start, start + step)
            if offsets is not None and accumulate_native_histogram(
                values, offsets[rows], self.spec, self.histogram[rows], self.overflow[rows]
            ):
                return
            if self.anchored:
                accumulate_anchored_histogram(
                    values, exponents[rows], self.spec, self.histogram[rows], self.overflow[rows],
                    nonnegative=nonnegative,
                )
                return
            counts, overflow = unit_histogram(values, self.spec)
            self.histogram[rows] += counts
            self.overflow[rows] += overflow

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
        exponents = self._exponents() if self.anchored else None
        values = quantiles_from_histogram(self.histogram, levels.to(self.histogram.device), self.spec, exponents)
        if self.anchored and bool(self.overflow.any()):
            rank_zero_warn(
                "Some `activations` were NaN or infinite (validate_args=False): they count as the "
                "largest values, and the quantiles of those units are not meaningful."
            )
        elif bool(self.overflow.any()):
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
