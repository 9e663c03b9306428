"""Per-unit quantiles from a mergeable log-bucket histogram.

A finite float32 value ``x`` with ``|x| >= min_magnitude`` falls into the bucket given by its sign
and the top bits of its IEEE-754 representation: exponent plus ``m`` leading mantissa bits. Every
bucket ``[lo, hi)`` has ``hi - lo <= lo * 2**-m``, so returning the bucket midpoint is within a
relative error of ``2**-(m + 1)`` of *every* value in it — in particular of the exact order
statistic, because bucket counts are exact integers. Values with ``|x| < min_magnitude`` share one
"zero" bucket (ReLU zeros are returned exactly as 0). Counts merge by summation, so a histogram
split over processes and summed is identical to one built in a single process.

The bucket index is computed with integer operations on the float bits (no logarithm), which
is what makes a pass over upsampled maps cheap.

**Any scale.** A fixed window ``[min_magnitude, max_magnitude]`` cannot serve activations of
every size (a layer whose values all lie below ``min_magnitude`` would get threshold 0). The
*anchored* histogram follows each unit's own scale instead: a unit's values are multiplied by
``2**-e`` (exact in floating point), where ``2**e`` bounds the largest magnitude seen so far
(:func:`magnitude_exponents`), and counted in the window ``[2**-D, 1)``
(:func:`anchored_spec`). When a later batch raises ``e``, the counts move down by whole binades
(:func:`shift_histogram`, exact: a bucket maps onto a bucket) and what falls below the window
joins the zero bucket. The result depends only on the multiset of values, not on their order or
on how they were split, so anchored histograms of several processes, aligned to the largest
anchor and summed, equal the histogram of one process. Scaling a unit by ``2**k`` shifts its
anchor by ``k`` and scales its quantiles by exactly ``2**k``; any other positive factor scales
them within the histogram's relative accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import torch
from torch import Tensor

from lightning_dissect._utils.native import native_library

__all__ = [
    "LogHistogramSpec",
    "histogram_bucket_index",
    "unit_histogram",
    "quantiles_from_histogram",
    "quantile_rank",
    "ANCHOR_UNSET",
    "anchored_spec",
    "magnitude_exponents",
    "magnitude_exponents_of_maps",
    "scale_by_exponents",
    "shift_histogram",
    "accumulate_anchored_histogram",
]

#: Anchor of a unit that has seen no non-zero value yet (below every float32 exponent).
ANCHOR_UNSET = -(1 << 20)


def _float_bits(value: float) -> int:
    return int(torch.tensor(value, dtype=torch.float32).view(torch.int32))


def _bits_float(bits: Tensor) -> Tensor:
    return bits.to(torch.int32).view(torch.float32).to(torch.float64)


@dataclass(frozen=True)
class LogHistogramSpec:
    """Layout of a signed log-bucket histogram.

    Args:
        relative_accuracy: Worst relative error of a returned quantile (for values whose magnitude
            lies in ``[min_magnitude, max_magnitude]``). The achieved bound is
            :attr:`achieved_accuracy`, the largest ``2**-(m+1) <= relative_accuracy``.
        min_magnitude: Magnitudes below this count as zero (absolute error ``< min_magnitude``).
        max_magnitude: Magnitudes above this are clamped to the top bucket and counted as
            overflow.

    Examples:
        >>> spec = LogHistogramSpec(relative_accuracy=0.005)
        >>> spec.mantissa_bits, spec.achieved_accuracy
        (7, 0.00390625)
        >>> spec.num_buckets
        10207
    """

    relative_accuracy: float = 0.005
    min_magnitude: float = 1e-6
    max_magnitude: float = 1e6

    def __post_init__(self) -> None:
        if not 0 < self.relative_accuracy < 0.5:
            raise ValueError(
                f"`relative_accuracy` must be in (0, 0.5), got {self.relative_accuracy}"
            )
        if not 0 < self.min_magnitude < self.max_magnitude < 3e38:
            raise ValueError(
                "`min_magnitude` and `max_magnitude` must satisfy 0 < min < max < 3e38, got "
                f"{self.min_magnitude}, {self.max_magnitude}"
            )

    @cached_property
    def mantissa_bits(self) -> int:
        """Number of leading mantissa bits that define a bucket."""
        bits = max(0, math.ceil(math.log2(1.0 / self.relative_accuracy) - 1.0 - 1e-12))
        if bits > 23:
            raise ValueError("`relative_accuracy` finer than float32 resolution (2**-24)")
        return bits

    @property
    def achieved_accuracy(self) -> float:
        """Guaranteed worst relative error of a returned quantile."""
        return 2.0 ** -(self.mantissa_bits + 1)

    @property
    def shift(self) -> int:
        """Right shift applied to the float bits."""
        return 23 - self.mantissa_bits

    @cached_property
    def key_low(self) -> int:
        """Bucket key of ``min_magnitude``."""
        return _float_bits(self.min_magnitude) >> self.shift

    @cached_property
    def key_high(self) -> int:
        """Bucket key of ``max_magnitude``."""
        return _float_bits(self.max_magnitude) >> self.shift

    @property
    def buckets_per_sign(self) -> int:
        """Buckets on each side of zero."""
        return self.key_high - self.key_low + 1

    @property
    def num_buckets(self) -> int:
        """Total buckets: negatives, one zero bucket, positives."""
        return 2 * self.buckets_per_sign + 1

    @property
    def zero_bucket(self) -> int:
        """Index of the zero bucket."""
        return self.buckets_per_sign

    def bucket_values(self, device: torch.device | str | None = None) -> Tensor:
        """Representative (midpoint) value of every bucket, float64, ascending."""
        keys = torch.arange(self.key_low, self.key_high + 1, dtype=torch.int64)
        low = _bits_float(keys << self.shift)
        high = _bits_float((keys + 1) << self.shift)
        mid = 0.5 * (low + high)
        values = torch.cat([-mid.flip(0), torch.zeros(1, dtype=torch.float64), mid])
        return values.to(device)

    def bucket_edges(self, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """Lower and upper magnitude edge of every bucket (for tests and plots), float64."""
        keys = torch.arange(self.key_low, self.key_high + 1, dtype=torch.int64)
        low = _bits_float(keys << self.shift)
        high = _bits_float((keys + 1) << self.shift)
        zero = torch.zeros(1, dtype=torch.float64)
        lower = torch.cat([-high.flip(0), zero, low])
        upper = torch.cat([-low.flip(0), zero, high])
        return lower.to(device), upper.to(device)


def _wide_keys(values: Tensor, spec: LogHistogramSpec) -> Tensor:
    """Monotone int32 key in ``[0, 2 * (key_high + 2))`` for every value (in place where possible).

    The float bits are made order-preserving (negatives: flip the 31 low bits), shifted to keep
    ``m`` mantissa bits and clamped one bucket beyond ``max_magnitude`` on each side, which then
    holds the overflow.
    """
    bits = values.to(torch.float32).contiguous().view(torch.int32)
    keys = (bits >> 31) & 0x7FFFFFFF
    keys ^= bits
    keys >>= spec.shift
    top = spec.key_high + 1
    keys.clamp_(-(top + 1), top)
    keys += top + 1
    return keys


def _compact(wide: Tensor, spec: LogHistogramSpec) -> tuple[Tensor, Tensor]:
    """Fold ``(..., 2 * (key_high + 2))`` wide counts into the compact layout plus overflow."""
    top = spec.key_high + 1
    low = spec.key_low
    # wide position of magnitude key mk: positive -> mk + top + 1, negative -> top - mk
    overflow = wide[..., 0] + wide[..., -1]
    negative = wide[..., 1 : top - low + 1].clone()
    negative[..., 0] += wide[..., 0]
    zero = wide[..., top - low + 1 : top + low + 1].sum(-1, keepdim=True)
    positive = wide[..., top + low + 1 : -1].clone()
    positive[..., -1] += wide[..., -1]
    return torch.cat([negative, zero, positive], -1), overflow


def histogram_bucket_index(values: Tensor, spec: LogHistogramSpec) -> Tensor:
    """Bucket index in ``[0, spec.num_buckets)`` of every value (int64, same shape).

    Magnitudes below the bucket holding ``min_magnitude`` go to the zero bucket; magnitudes above
    ``max_magnitude`` to the outermost bucket of their sign.

    Examples:
        >>> spec = LogHistogramSpec()
        >>> idx = histogram_bucket_index(torch.tensor([-1.0, 0.0, 1e-9, 1.0]), spec)
        >>> (idx == spec.zero_bucket).tolist()
        [False, True, True, False]
        >>> bool(idx[0] < spec.zero_bucket < idx[3])
        True
    """
    wide = _wide_keys(values, spec).to(torch.int64)
    top = spec.key_high + 1
    low = spec.key_low
    per_sign = spec.buckets_per_sign
    compact = torch.where(wide <= top - low, (wide - 1).clamp(min=0), wide - 2 * low)
    compact = compact.clamp(max=spec.num_buckets - 1)
    is_zero = (wide > top - low) & (wide <= top + low)
    return compact.masked_fill(is_zero, per_sign)


def unit_histogram(
    values: Tensor, spec: LogHistogramSpec, *, chunk_elements: int = 1 << 20
) -> tuple[Tensor, Tensor]:
    """Count the values of each row (unit) of a ``(U, P)`` tensor into histogram buckets.

    Rows are processed in chunks so that the working set stays in cache; the bucket index is pure
    integer arithmetic on the float bits.

    Args:
        values: ``(U, P)`` floating tensor, unit-major.
        spec: The histogram layout.
        chunk_elements: Approximate number of values handled per chunk.

    Returns:
        ``(U, spec.num_buckets)`` int64 counts and ``(U,)`` int64 overflow counts (magnitudes
        beyond ``max_magnitude``, already included in the outermost buckets).

    Examples:
        >>> spec = LogHistogramSpec()
        >>> counts, overflow = unit_histogram(torch.tensor([[0.0, 0.0, 2.0], [-1.0, 1.0, 3e7]]), spec)
        >>> counts.sum(1).tolist(), int(counts[0, spec.zero_bucket]), overflow.tolist()
        ([3, 3], 2, [0, 1])
    """
    units, per_unit = values.shape
    top = spec.key_high + 1
    low = spec.key_low
    # compact position of a wide key w (see _wide_keys): the 2 * low wide keys of magnitudes
    # below min_magnitude collapse into the zero bucket, w -> w - clamp(w - (top - low + 1), 0,
    # 2 * low - 1); the two overflow keys stay at both ends as extra columns
    zero_start = top - low + 1
    width = spec.num_buckets + 2
    counts = torch.empty(units, spec.num_buckets, dtype=torch.int64, device=values.device)
    overflow = torch.empty(units, dtype=torch.int64, device=values.device)
    step = max(1, chunk_elements // max(1, per_unit))
    shift = torch.empty(min(step, units), per_unit, dtype=torch.int32, device=values.device)
    for start in range(0, units, step):
        chunk = values[start : start + step]
        n = chunk.shape[0]
        keys = _wide_keys(chunk, spec)
        collapse = torch.sub(keys, zero_start, out=shift[:n])
        collapse.clamp_(0, 2 * low - 1)
        keys -= collapse
        keys += (torch.arange(n, device=values.device, dtype=torch.int32) * width).unsqueeze(1)
        extended = torch.bincount(keys.reshape(-1), minlength=n * width).view(n, width)
        block = counts[start : start + n]
        block.copy_(extended[:, 1:-1])
        block[:, 0] += extended[:, 0]
        block[:, -1] += extended[:, -1]
        overflow[start : start + n] = extended[:, 0] + extended[:, -1]
    return counts, overflow


def quantile_rank(total: Tensor, levels: Tensor) -> Tensor:
    """The 1-based rank ``k = max(1, ceil(q * N))`` used for the level-``q`` quantile.

    The returned quantile is the ``k``-th smallest value, i.e. ``torch.kthvalue(x, k)``.

    Examples:
        >>> quantile_rank(torch.tensor([100]), torch.tensor([0.99, 0.5, 0.0], dtype=torch.float64)).tolist()
        [[99, 50, 1]]
    """
    n = total.to(torch.float64).unsqueeze(-1)
    q = levels.to(torch.float64)
    # Shrink q*N by a relative 1e-12 first so 0.99 * 100 gives 99, not 99.00000000000001.
    raw = q * n * (1.0 - 1e-12)
    return torch.ceil(raw).clamp(min=1).to(torch.int64)


def quantiles_from_histogram(
    counts: Tensor, levels: Sequence[float] | Tensor, spec: LogHistogramSpec, exponents: Tensor | None = None
) -> Tensor:
    """Per-row quantiles from ``(U, num_buckets)`` counts.

    Args:
        counts: Histogram counts, one row per unit.
        levels: Quantile levels in ``[0, 1]``, shape ``(Q,)``.
        spec: The histogram layout the counts were made with.
        exponents: ``(U,)`` anchors of an anchored histogram (see :func:`magnitude_exponents`):
            the values are multiplied back by ``2**e``.

    Returns:
        ``(U, Q)`` float64 values; NaN for units that saw no values.

    Examples:
        >>> spec = LogHistogramSpec()
        >>> values = torch.arange(1, 101, dtype=torch.float32).unsqueeze(0)
        >>> q = quantiles_from_histogram(unit_histogram(values, spec)[0], [0.5, 0.99], spec)
        >>> [round(v, 1) for v in q[0].tolist()]
        [50.1, 99.2]
    """
    levels = torch.as_tensor(levels, dtype=torch.float64, device=counts.device).reshape(-1)
    index, total = _rank_buckets(counts, levels)
    values = spec.bucket_values(counts.device)[index]
    if exponents is not None:
        e = exponents.to(device=counts.device, dtype=torch.int64)
        e = torch.where(e == ANCHOR_UNSET, torch.zeros_like(e), e)
        values = values * torch.pow(2.0, e.unsqueeze(1).to(torch.float64))  # exact: a power of two
    return values.masked_fill(total.unsqueeze(1) == 0, float("nan"))


#: Buckets summed together by :func:`_rank_buckets` before it looks inside one group.
_RANK_BLOCK = 128


def _rank_buckets(counts: Tensor, levels: Tensor) -> tuple[Tensor, Tensor]:
    """The ``(U, Q)`` bucket holding each row's :func:`quantile_rank` at ``levels``, and the ``(U,)`` totals.

    The first bucket whose cumulative count reaches the rank, as ``searchsorted`` over the whole
    cumulative histogram gives it, found in two steps: the block of :data:`_RANK_BLOCK` buckets
    whose cumulative count reaches the rank, then the bucket inside that block (a cumulative sum
    of a few blocks instead of every bucket: the same integers).
    """
    units, buckets = counts.shape
    full = buckets // _RANK_BLOCK
    sums = counts[:, : full * _RANK_BLOCK].view(units, full, _RANK_BLOCK).sum(2)  # a view: no copy
    if full * _RANK_BLOCK < buckets:  # the last, shorter block
        sums = torch.cat([sums, counts[:, full * _RANK_BLOCK :].sum(1, keepdim=True)], 1)
    blocks = sums.shape[1]
    block_cumulative = sums.cumsum(1)
    total = block_cumulative[:, -1]
    rank = quantile_rank(total, levels)  # (U, Q)
    block = torch.searchsorted(block_cumulative, rank).clamp(max=blocks - 1)
    previous = torch.gather(block_cumulative, 1, (block - 1).clamp(min=0))
    before = torch.where(block > 0, previous, torch.zeros_like(previous))
    # the counts of each rank's block (past the last bucket: none), cumulated from the block's start
    index = block.unsqueeze(-1) * _RANK_BLOCK + torch.arange(_RANK_BLOCK, device=counts.device)
    inside = torch.gather(counts, 1, index.clamp(max=buckets - 1).flatten(1)).view(index.shape)
    inside = inside.masked_fill(index >= buckets, 0).cumsum(2) + before.unsqueeze(-1)
    offset = torch.searchsorted(inside, rank.unsqueeze(-1)).squeeze(-1)
    return (block * _RANK_BLOCK + offset).clamp(max=buckets - 1), total


def anchored_spec(relative_accuracy: float = 0.005, dynamic_range: float = 2.0**40) -> LogHistogramSpec:
    """The layout of an anchored histogram: values scaled into ``(-1, 1)``, resolved down to ``1 / dynamic_range``.

    ``dynamic_range`` is rounded up to a power of two, so that the window's buckets are whole
    binades and :func:`shift_histogram` is exact.

    Examples:
        >>> spec = anchored_spec()
        >>> spec.min_magnitude == 2.0**-40, spec.max_magnitude, spec.num_buckets
        (True, 1.0, 10243)
    """
    if not 2.0 <= float(dynamic_range) <= 2.0**100:
        raise ValueError(f"`dynamic_range` must be in [2, 2**100], got {dynamic_range}")
    binades = math.ceil(math.log2(float(dynamic_range)) - 1e-12)
    return LogHistogramSpec(relative_accuracy, 2.0**-binades, 1.0)


def magnitude_exponents(values: Tensor) -> Tensor:
    """Per row (unit) of a ``(U, P)`` tensor, the smallest ``e`` with ``|x| < 2**e`` for every finite ``x``.

    Rows without a finite non-zero value get :data:`ANCHOR_UNSET`. int64, shape ``(U,)``.

    Examples:
        >>> magnitude_exponents(torch.tensor([[0.5, -3.0], [0.0, 0.0], [1e-9, 0.0]])).tolist()
        [2, -1048576, -29]
    """
    return _exponents_of_largest(values.detach(), (1,))


def magnitude_exponents_of_maps(maps: Tensor) -> Tensor:
    """:func:`magnitude_exponents` of the units of ``(B, U, ...)`` maps, without a unit-major copy.

    Examples:
        >>> maps = torch.tensor([[[0.5, -3.0]], [[0.0, 1.0]]])  # (B=2, U=1, 2)
        >>> magnitude_exponents_of_maps(maps).tolist()
        [2]
    """
    return _exponents_of_largest(maps.detach(), (0, *range(2, maps.ndim)))


def _exponents_of_largest(values: Tensor, dims: tuple[int, ...]) -> Tensor:
    """The anchors of the largest finite magnitude over ``dims`` (see :func:`magnitude_exponents`)."""
    if values.numel():
        # the largest magnitude from the extremes: no |x| copy of the values
        top = torch.maximum(values.amax(dims).abs(), values.amin(dims).abs()).to(torch.float32)
    else:
        kept = [n for d, n in enumerate(values.shape) if d not in dims]
        top = values.new_zeros(kept, dtype=torch.float32)
    if not bool(torch.isfinite(top).all()):  # NaN / Inf (unvalidated input): anchor on the finite values
        finite = values.abs().to(torch.float32)
        top = torch.where(torch.isfinite(finite), finite, torch.zeros_like(finite)).amax(dims)
    _, exponent = torch.frexp(top.to(torch.float32))
    exponent = exponent.to(torch.int64)
    return torch.where(top > 0, exponent, torch.full_like(exponent, ANCHOR_UNSET))


def scale_by_exponents(values: Tensor, exponents: Tensor) -> Tensor:
    """``values * 2**-e`` per row (exact: a power of two), as a new float32 tensor.

    Rows with :data:`ANCHOR_UNSET` are returned as they are (they hold only zeros, or nothing yet).
    The factor is applied in two halves, so that no factor overflows float32.

    Examples:
        >>> scale_by_exponents(torch.tensor([[3.0, -1.0], [2.0**-140, 0.0]]), torch.tensor([2, -139])).tolist()
        [[0.75, -0.25], [0.5, 0.0]]
    """
    e = torch.where(exponents == ANCHOR_UNSET, torch.zeros_like(exponents), exponents)
    first = -(e // 2)
    second = -e - first
    return values.to(torch.float32) * _power_of_two(first, values.device) * _power_of_two(second, values.device)


def _power_of_two(exponent: Tensor, device: torch.device) -> Tensor:
    """``(U, 1)`` float32 ``2**k`` built from its bits (``|k| <= 126``)."""
    bits = ((exponent.to(device=device, dtype=torch.int64) + 127) << 23).to(torch.int32)
    return bits.view(torch.float32).unsqueeze(1)


def shift_histogram(counts: Tensor, by: Tensor, spec: LogHistogramSpec) -> Tensor:
    """Move each row's counts down by ``by[u] >= 0`` binades (the values divided by ``2**by``), exactly.

    ``spec`` must come from :func:`anchored_spec` (buckets are whole binades). Counts that fall
    below the window join the zero bucket; nothing is lost.

    Examples:
        >>> spec = anchored_spec(dynamic_range=4.0)
        >>> counts = unit_histogram(torch.tensor([[0.5, 0.3, -0.5, 0.0]]), spec)[0]
        >>> moved = shift_histogram(counts, torch.tensor([1]), spec)
        >>> torch.equal(moved, unit_histogram(torch.tensor([[0.25, 0.15, -0.25, 0.0]]), spec)[0])
        True
    """
    by = by.to(device=counts.device, dtype=torch.int64).clamp(min=0)
    if not bool(by.any()):
        return counts
    per_sign = spec.buckets_per_sign
    step = by.clamp(max=per_sign) << spec.mantissa_bits  # buckets per binade: 2**m
    step = step.clamp(max=per_sign).unsqueeze(1)
    negative = counts[:, :per_sign]
    zero = counts[:, per_sign : per_sign + 1]
    positive = counts[:, per_sign + 1 :]
    index = torch.arange(per_sign, device=counts.device).unsqueeze(0)
    # positive buckets ascend in magnitude: new[j] = old[j + step]
    source = index + step
    new_positive = torch.gather(positive, 1, source.clamp(max=per_sign - 1)) * (source < per_sign)
    # negative buckets descend in magnitude: new[i] = old[i - step]
    source = index - step
    new_negative = torch.gather(negative, 1, source.clamp(min=0)) * (source >= 0)
    fallen = (positive.sum(1, keepdim=True) - new_positive.sum(1, keepdim=True)) + (
        negative.sum(1, keepdim=True) - new_negative.sum(1, keepdim=True)
    )
    return torch.cat([new_negative, zero + fallen, new_positive], 1)


#: Values per chunk of :func:`accumulate_anchored_histogram`: its buffers stay in a core's cache.
_ANCHORED_CHUNK = 1 << 18


def _anchored_keys_exact(exponents: Tensor, spec: LogHistogramSpec) -> bool:
    """Whether every value the window of these anchors resolves is a normal float32 before scaling.

    Then the bucket of ``x * 2**-e`` is the bucket key of ``x`` minus ``e`` binades, exactly, and
    everything below the window (subnormal or not) stays below it.
    """
    binades = spec.key_high - spec.key_low >> spec.mantissa_bits
    return bool((exponents - binades >= -125).all())


def accumulate_anchored_histogram(
    values: Tensor,
    exponents: Tensor,
    spec: LogHistogramSpec,
    histogram: Tensor,
    overflow: Tensor,
    *,
    nonnegative: bool = False,
) -> None:
    """Add the anchored histogram of ``values * 2**-e`` (per row) to ``histogram`` and ``overflow``, in place.

    The same integers as ``unit_histogram(scale_by_exponents(values, exponents), spec)``, in
    fewer passes over memory: the scaling by ``2**-e`` is a subtraction of ``e`` binades from
    each value's bucket key, made on the float bits. The sign folds in with one XOR: a value
    of key ``k`` lands at ``k`` above the positive zero column, a negative one at ``k`` below
    the negative zero column. Falls back to the two-step computation where a window reaches
    into float32's subnormal numbers (anchors below ``2**-85`` at the default range), which the
    key subtraction does not cover. With ``nonnegative`` (the caller knows no value is negative
    or NaN, e.g. upsampled ReLU maps whose raw minimum is ``>= 0``) only the positive half is
    counted; ``-0.0``, whose arithmetic-shifted key is negative, still lands in the zero bucket.

    Args:
        values: ``(U, P)`` floating values, unit-major.
        exponents: ``(U,)`` anchors (:func:`magnitude_exponents`; :data:`ANCHOR_UNSET` counts as 0).
        spec: An anchored layout (:func:`anchored_spec`).
        histogram: ``(U, spec.num_buckets)`` int64 counts, added to.
        overflow: ``(U,)`` int64 overflow counts, added to.
        nonnegative: No value is negative or NaN (``-0.0`` may occur): skip the sign.

    Examples:
        >>> spec = anchored_spec()
        >>> values = torch.tensor([[3.0, -1.0, 0.0], [2.0**-100, 0.0, 0.5]])
        >>> e = magnitude_exponents(values)
        >>> h, o = torch.zeros(2, spec.num_buckets, dtype=torch.int64), torch.zeros(2, dtype=torch.int64)
        >>> accumulate_anchored_histogram(values, e, spec, h, o)
        >>> torch.equal(h, unit_histogram(scale_by_exponents(values, e), spec)[0])
        True
    """
    exponents = exponents.to(device=values.device, dtype=torch.int64)
    exponents = torch.where(exponents == ANCHOR_UNSET, torch.zeros_like(exponents), exponents)
    if not _anchored_keys_exact(exponents, spec):
        counts, over = unit_histogram(scale_by_exponents(values, exponents), spec)
        histogram += counts
        overflow += over
        return
    offsets = native_key_offsets(exponents, spec) if values.device.type == "cpu" else None
    if offsets is not None and accumulate_native_histogram(values, offsets, spec, histogram, overflow):
        return
    if nonnegative:
        _accumulate_nonnegative(values, exponents, spec, histogram, overflow)
        return
    units, per_unit = values.shape
    per_sign = spec.buckets_per_sign
    # extended columns: [negative overflow, negatives (descending), -zero, +zero, positives, positive overflow]
    plus_zero = per_sign + 2
    width = 2 * per_sign + 4
    # magnitude key - base = 1 + buckets above the window's bottom (<= 0: the zero column; clamped at
    # per_sign + 1: the overflow column)
    base = (spec.key_low - 1 + (exponents << spec.mantissa_bits)).to(torch.int32).unsqueeze(1)
    step = max(1, _ANCHORED_CHUNK // max(1, per_unit))
    rows = min(step, units)
    keys = torch.empty(rows, per_unit, dtype=torch.int32, device=values.device)
    signs = torch.empty_like(keys)
    columns = (torch.arange(rows, dtype=torch.int32, device=values.device) * width + plus_zero).unsqueeze(1)
    for start in range(0, units, step):
        chunk = values[start : start + step]
        n = chunk.shape[0]
        bits = chunk.to(torch.float32).contiguous().view(torch.int32)
        key, sign = keys[:n], signs[:n]
        torch.bitwise_and(bits, 0x7FFFFFFF, out=key)
        key >>= spec.shift
        key -= base[start : start + n]
        key.clamp_(0, per_sign + 1)
        torch.bitwise_right_shift(bits, 31, out=sign)  # 0, or -1 for a negative sign bit
        key ^= sign  # negatives: -key - 1
        key += columns[:n]
        extended = torch.bincount(key.reshape(-1), minlength=n * width).view(n, width)
        block = histogram[start : start + n]
        zero = spec.zero_bucket
        block[:, :zero] += extended[:, 1 : per_sign + 1]
        block[:, zero] += extended[:, per_sign + 1] + extended[:, plus_zero]
        block[:, zero + 1 :] += extended[:, plus_zero + 1 : -1]
        block[:, 0] += extended[:, 0]
        block[:, -1] += extended[:, -1]
        overflow[start : start + n] += extended[:, 0] + extended[:, -1]


def native_key_offsets(exponents: Tensor, spec: LogHistogramSpec) -> Tensor | None:
    """Per-row int32 key offsets of the compiled histogram kernel, or ``None`` where it cannot count.

    ``None`` where the kernels are not available (:mod:`lightning_dissect._utils.native`) or a
    window reaches into float32's subnormal numbers (the torch path then counts, in two steps).
    Computed once per batch; :func:`accumulate_native_histogram` takes a slice per unit group.

    Examples:
        >>> spec = anchored_spec()
        >>> offsets = native_key_offsets(torch.tensor([0, 3]), spec)
        >>> offsets is None or offsets.dtype == torch.int32
        True
    """
    if native_library() is None:
        return None
    exponents = exponents.to(dtype=torch.int64)
    exponents = torch.where(exponents == ANCHOR_UNSET, torch.zeros_like(exponents), exponents)
    if not _anchored_keys_exact(exponents, spec) or spec.zero_bucket != spec.buckets_per_sign:
        return None
    return (spec.key_low - 1 + (exponents << spec.mantissa_bits)).to(torch.int32).cpu().contiguous()


def accumulate_native_histogram(
    values: Tensor, offsets: Tensor, spec: LogHistogramSpec, histogram: Tensor, overflow: Tensor
) -> bool:
    """:func:`accumulate_anchored_histogram` in one compiled pass, with offsets from :func:`native_key_offsets`.

    The same integer operations on the float bits as the torch path, value by value. Returns
    ``False`` (nothing added) where the tensors do not suit the kernel (not on the CPU, not int64
    counts with contiguous rows).
    """
    library = native_library()
    units, per_unit = values.shape
    if (
        library is None
        or values.device.type != "cpu"
        or histogram.dtype != torch.int64
        or overflow.dtype != torch.int64
        or histogram.shape != (units, 2 * spec.buckets_per_sign + 1)
        or histogram.stride(1) != 1
        or overflow.stride(0) != 1
        or offsets.shape != (units,)
    ):
        return False
    if units == 0 or per_unit == 0:
        return True
    values = values.to(torch.float32)  # as the torch path counts them
    if values.stride(1) != 1:
        values = values.contiguous()
    library.ld_anchored_histogram_f32(
        values.data_ptr(), units, per_unit, values.stride(0), offsets.data_ptr(), spec.shift,
        spec.buckets_per_sign, histogram.data_ptr(), histogram.stride(0), overflow.data_ptr(),
    )
    return True


def _accumulate_nonnegative(
    values: Tensor, exponents: Tensor, spec: LogHistogramSpec, histogram: Tensor, overflow: Tensor
) -> None:
    """:func:`accumulate_anchored_histogram` of values that are all ``>= +0.0``: the positive half only."""
    units, per_unit = values.shape
    per_sign = spec.buckets_per_sign
    # extended columns: [zero, positives, overflow]
    width = per_sign + 2
    base = (spec.key_low - 1 + (exponents << spec.mantissa_bits)).to(torch.int32).unsqueeze(1)
    step = max(1, _ANCHORED_CHUNK // max(1, per_unit))
    rows = min(step, units)
    keys = torch.empty(rows, per_unit, dtype=torch.int32, device=values.device)
    columns = (torch.arange(rows, dtype=torch.int32, device=values.device) * width).unsqueeze(1)
    zero = spec.zero_bucket
    for start in range(0, units, step):
        chunk = values[start : start + step]
        n = chunk.shape[0]
        bits = chunk.to(torch.float32).contiguous().view(torch.int32)
        # arithmetic shift: -0.0 (the only value with its sign bit set) gets a negative key -> zero
        key = torch.bitwise_right_shift(bits, spec.shift, out=keys[:n])
        key -= base[start : start + n]
        key.clamp_(0, per_sign + 1)
        key += columns[:n]
        extended = torch.bincount(key.reshape(-1), minlength=n * width).view(n, width)
        block = histogram[start : start + n]
        block[:, zero:] += extended[:, :-1]
        block[:, -1] += extended[:, -1]
        overflow[start : start + n] += extended[:, -1]
