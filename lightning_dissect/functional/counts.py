"""Per-batch unit–concept co-occurrence counts.

For a unit ``u`` with threshold ``t`` and a concept ``c``, over the pixels ``p`` of a batch:

* ``intersection[u, c] = #{p : a_u(p) > t and c in labels(p)}``
* ``unit_area[u] = #{p : a_u(p) > t}`` (every pixel counts, also unlabeled/ignored ones)
* ``concept_area[c] = #{p : c in labels(p)}``
* ``total = #pixels``

where ``a_u`` is the unit's activation map bilinearly upsampled to the segmentation size. With
``K`` ascending candidate thresholds per unit the counts gain a level axis ``k``. All counts are
exact integers, so they add across batches and processes without error.

Every count is a ``bincount`` over integer cells ``(unit, level, concept)``. With ``K`` levels, a
value's level ``#{k : t_k < value}`` comes from a per-unit lookup table keyed on the value's
order-preserving integer key (its float32 bits), bucketed by a right shift; a bucket stores the
thresholds below it and the one threshold inside it, and values in the rare buckets holding two
distinct thresholds are compared with every threshold. float64 maps use a binary search.

With one threshold per unit, a row of an upsampled map mixes at most two rows of the map: their
largest value (plus a margin for rounding) bounds the row. When at most one row in
:data:`_SPARSE_ROW_FRACTION` can exceed the threshold (a top-quantile threshold), only those rows
are upsampled, by the same matrix products as whole maps, and only their on pixels are counted:
each label set's counts, the sample groups' and the per-category unit areas are added from the
labels of those pixels, into the states themselves.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_dissect._utils.checks import (
    check_activations,
    check_int,
    check_segmentation,
    check_thresholds,
)
from lightning_dissect._utils.native import native_library
from lightning_dissect._utils.parallel import run_tasks, worker_count
from lightning_dissect.functional.upsample import (
    _upsample_stages,
    bilinear_matrix,
    upsample_bilinear,
    upsample_units_first,
)

__all__ = [
    "DEFAULT_MAX_TEMPORARY_BYTES",
    "ConceptCounts",
    "accumulate_unit_concept_counts",
    "concept_indicator",
    "concept_labels",
    "unit_concept_counts",
]

# Pixels (batch * H * W) upsampled at a time: bounds the memory of one call.
_MAX_PIXELS_PER_CALL = 1 << 22
# Single threshold: when at most one (unit, pixel) in this many is on, only the on pixels are counted.
_SPARSE_ON_FRACTION = 8
# Buckets per unit of the level lookup table (a power of two).
_LUT_BUCKETS = 4096
_INT32_MAX = (1 << 31) - 1
# Maps whose values lie within +-_MODERATE upsample to finite values (no overflow to inf, no NaN).
_MODERATE = 2.0**100


class ConceptCounts(NamedTuple):
    """Exact integer counts of one or more batches.

    Attributes:
        intersection: ``(U, C)`` or ``(U, K, C)`` pixels where unit is on and concept present.
        unit_area: ``(U,)`` or ``(U, K)`` pixels where the unit is on.
        concept_area: ``(C,)`` pixels carrying the concept.
        total: ``()`` number of pixels.
    """

    intersection: Tensor
    unit_area: Tensor
    concept_area: Tensor
    total: Tensor


def concept_labels(segmentation: Tensor, num_concepts: int, ignore_index: int | None) -> Tensor:
    """Flatten labels to ``(L, B*H*W)``; ignored pixels and repeats in a pixel become ``num_concepts``.

    The extra column ``num_concepts`` is a "no concept" sink that callers drop.

    Examples:
        >>> seg = torch.tensor([[[[1, 2]], [[1, 0]]]])  # (B=1, L=2, H=1, W=2)
        >>> concept_labels(seg, 3, ignore_index=0).tolist()
        [[1, 2], [3, 3]]
    """
    if segmentation.ndim == 3:
        segmentation = segmentation.unsqueeze(1)
    layers = segmentation.transpose(0, 1).reshape(segmentation.shape[1], -1).to(torch.int64)
    sink = num_concepts
    out = layers.clone()
    if ignore_index is not None:
        out.masked_fill_(layers == ignore_index, sink)
    for layer in range(1, layers.shape[0]):
        # a label that an earlier layer of the pixel holds already counts once (in place, no boolean indexing)
        repeat = layers[layer] == layers[0]
        for earlier in range(1, layer):
            repeat |= layers[layer] == layers[earlier]
        out[layer].masked_fill_(repeat, sink)
    return out


def concept_indicator(
    segmentation: Tensor, num_concepts: int, ignore_index: int | None = None
) -> Tensor:
    """Binary ``(B*H*W, C)`` float32 matrix: pixel ``p`` carries concept ``c``.

    Examples:
        >>> concept_indicator(torch.tensor([[[0, 2]]]), 3).tolist()
        [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    """
    labels = concept_labels(segmentation, num_concepts, ignore_index)
    pixels = labels.shape[1]
    indicator = torch.zeros(pixels, num_concepts + 1, dtype=torch.float32, device=labels.device)
    rows = torch.arange(pixels, device=labels.device).expand_as(labels)
    indicator[rows.reshape(-1), labels.reshape(-1)] = 1.0
    return indicator[:, :num_concepts]


def _thresholds_as(thresholds: Tensor, dtype: torch.dtype) -> Tensor:
    """Thresholds in ``dtype`` such that ``value > t`` is unchanged for every ``dtype`` value.

    Widening is exact. Narrowing (float64 thresholds, float32 maps) rounds toward -inf: for a
    float32 ``x``, ``x > t`` holds exactly when ``x`` exceeds the largest float32 ``<= t``.
    Rounding to nearest instead would turn some values just above ``t`` off.
    """
    cast = thresholds.to(dtype)
    if torch.finfo(dtype).bits < torch.finfo(thresholds.dtype).bits:
        above = cast.to(thresholds.dtype) > thresholds
        down = torch.nextafter(cast, torch.full_like(cast, float("-inf")))
        cast = torch.where(above, down, cast)
    return cast


def _counts_single_level(
    values: Tensor, thresholds: Tensor, labels: Tensor, num_concepts: int, chunk_elements: int
) -> tuple[Tensor, Tensor]:
    """One ``bincount`` per chunk and label layer over the cell ``(unit, on, label)``.

    A chunk in which at most one value in ``_SPARSE_ON_FRACTION`` is on (a top-quantile threshold)
    counts only its on pixels' labels instead (same counts, a fraction of the work).
    """
    units, pixels = values.shape
    width = num_concepts + 1
    device = values.device
    cdtype = torch.int32 if 2 * units * width <= _INT32_MAX else torch.int64
    histogram = torch.zeros(units * 2 * width, dtype=torch.int64, device=device)
    unit_area = torch.zeros(units, dtype=torch.int64, device=device)
    step = max(1, chunk_elements // max(1, pixels))
    rows = min(step, units)
    above_buf = torch.empty(rows, pixels, dtype=torch.bool, device=device)
    cell_buf = torch.empty(rows, pixels, dtype=cdtype, device=device)
    row_cell = (torch.arange(rows, device=device, dtype=cdtype) * (2 * width)).unsqueeze(1)
    label_steps: Tensor | None = None  # made on the first dense chunk (a sparse one needs none)
    for start in range(0, units, step):
        n = min(step, units - start)
        above = torch.gt(values[start : start + n], thresholds[start : start + n, None], out=above_buf[:n])
        if int(torch.count_nonzero(above)) * _SPARSE_ON_FRACTION <= above.numel():
            # few pixels on (a top-quantile threshold): count only those, not every (unit, pixel)
            inter, area = _count_on_pixels(above, labels, width)
            histogram.view(units, 2, width)[start : start + n, 1] = inter
            unit_area[start : start + n] = area
            continue
        if label_steps is None:
            label_steps = labels.to(cdtype)
            label_steps = torch.cat([label_steps[:1], label_steps[1:] - label_steps[:-1]])
        cell = torch.add(row_cell[:n], label_steps[0], out=cell_buf[:n])
        cell.add_(above, alpha=width)
        first = start * 2 * width
        for layer, label_step in enumerate(label_steps):
            if layer:
                cell.add_(label_step)
            counts = torch.bincount(cell.view(-1), minlength=n * 2 * width)
            histogram[first : first + n * 2 * width] += counts
            if layer == 0:  # every pixel has exactly one layer-0 entry (a concept or the sink)
                unit_area[start : start + n] = counts.view(n, 2, width)[:, 1].sum(1)
    return histogram.view(units, 2, width)[:, 1, :num_concepts], unit_area


def _native_level_counts(
    values: Tensor, thresholds: Tensor, labels: Tensor, num_concepts: int
) -> tuple[Tensor, Tensor] | None:
    """:func:`_counts_multi_level_search`'s histograms from the compiled kernel, or ``None``.

    ``(U, K + 1, C + 1)`` and ``(U, K + 1)`` histograms of float32 ``(U, P)`` values at ascending,
    NaN-free float32 ``(U, K)`` thresholds, in one pass. ``None`` where the kernels are not
    available (:mod:`lightning_dissect._utils.native`) or the inputs do not suit them (then the
    torch paths count, with the same integers).
    """
    library = native_library()
    if (
        library is None
        or values.device.type != "cpu"
        or values.dtype != torch.float32
        or thresholds.dtype != torch.float32
        or values.ndim != 2
        or thresholds.ndim != 2
        or labels.ndim != 2
        or labels.shape[1] != values.shape[1]
        or bool(torch.isnan(thresholds).any())
        or bool((thresholds[:, 1:] < thresholds[:, :-1]).any())
    ):
        return None
    units, pixels = values.shape
    levels, width = thresholds.shape[1], num_concepts + 1
    values = values if values.stride(1) == 1 else values.contiguous()
    labels = labels.to(torch.int64)
    labels = labels if labels.stride(1) == 1 else labels.contiguous()
    thresholds = thresholds.contiguous()
    histogram = torch.zeros(units, levels + 1, width, dtype=torch.int64, device=values.device)
    area_hist = torch.zeros(units, levels + 1, dtype=torch.int64, device=values.device)
    if units and pixels:
        totals = torch.zeros(width, dtype=torch.int64, device=values.device)  # the kernel's label totals
        library.ld_count_levels_f32(
            values.data_ptr(), units, pixels, values.stride(0), thresholds.data_ptr(), levels, labels.data_ptr(),
            labels.shape[0], labels.stride(0), width, histogram.data_ptr(), area_hist.data_ptr(), totals.data_ptr(),
        )
    return histogram, area_hist


def _upsampled_with_rows(maps: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Upsampled ``(U, B*H*W)`` values, first-stage rows and ``(U,)`` magnitudes of ``(B, U, h, w)`` maps.

    The values are those of :func:`upsample_units_first` (float32 or float64); the rows
    ``(U * B * H, w)`` are the first (row) upsampling stage, one per upsampled row of ``W`` values;
    a magnitude is the largest absolute value of a unit's maps. The values are computed by the
    same operations as :func:`upsample_units_first`'s.
    """
    batch, units, h, w = maps.shape
    x = maps.transpose(0, 1)
    if (h, w) == tuple(size):
        values = x.reshape(units, -1).contiguous()
        if values.dtype not in (torch.float32, torch.float64):
            values = values.to(torch.float32)
        rows = values.view(-1, w)
    else:
        mid, out = _upsample_stages(x.reshape(-1, h, w), size[0], size[1])
        values, rows = out.reshape(units, -1).contiguous(), mid.reshape(-1, w)
    low, high = maps.amin((0, 2, 3)), maps.amax((0, 2, 3))
    magnitude = torch.maximum(low.abs(), high.abs()).to(values.dtype)
    return values, rows, magnitude


def _row_upper_bounds(rows: Tensor, magnitude: Tensor) -> Tensor:
    """``(U, R)`` bounds above every upsampled value of each of the ``R`` rows of ``U`` units.

    ``rows`` are the ``(U * R, w)`` rows of the first upsampling stage and ``magnitude`` the ``(U,)``
    largest absolute value of each unit's maps. The second stage mixes at most two values of a
    row with non-negative float weights that sum to one within a few ulps, and the first stage
    likewise mixes the maps' values: a result exceeds the row's maximum by a few ulps of the maps'
    largest magnitude at most. The bound adds ``2**-14`` of that magnitude (and a few times the
    smallest normal number, for flushed subnormals). A NaN row gets a NaN bound and an infinite
    magnitude an infinite one: they bound nothing, and such rows are always counted.
    """
    units = magnitude.shape[0]
    slack = magnitude.mul(2.0**-14).add_(4 * torch.finfo(rows.dtype).tiny)
    return rows.amax(1).view(units, -1).add_(slack.unsqueeze(1))


def _counts_single_level_rows(
    values: Tensor,
    rows: Tensor,
    magnitude: Tensor,
    thresholds: Tensor,
    labels: Tensor,
    num_concepts: int,
    chunk_elements: int,
) -> tuple[Tensor, Tensor]:
    """:func:`_counts_single_level`, looking only at the upsampled rows that can hold an on value.

    ``rows`` are the first-stage rows of ``values`` (see :func:`_upsampled_with_rows`), ``magnitude``
    the largest absolute value of each unit's maps: a row whose
    bound (:func:`_row_upper_bounds`) is not above the unit's threshold has no value above it and
    adds nothing to the on counts. When most rows can hold one, every value is counted.
    """
    units, pixels = values.shape
    per_unit = rows.shape[0] // max(1, units)
    if units == 0 or pixels == 0 or per_unit * units != rows.shape[0] or pixels % max(1, per_unit):
        return _counts_single_level(values, thresholds, labels, num_concepts, chunk_elements)
    row_width = pixels // per_unit
    # NaN bounds compare false: such rows stay candidates
    bounds = _row_upper_bounds(rows, magnitude)
    candidates = torch.logical_not(bounds <= thresholds.unsqueeze(1)).view(-1).nonzero().view(-1)
    if 2 * candidates.numel() > bounds.numel():
        return _counts_single_level(values, thresholds, labels, num_concepts, chunk_elements)
    width = num_concepts + 1
    device = values.device
    intersection = torch.zeros(units * width, dtype=torch.int64, device=device)
    unit_area = torch.zeros(units, dtype=torch.int64, device=device)
    if candidates.numel() == 0:
        return intersection.view(units, width)[:, :num_concepts], unit_area
    picked = values.view(-1, row_width).index_select(0, candidates)
    unit = torch.div(candidates, per_unit, rounding_mode="floor")
    above = picked > thresholds.index_select(0, unit).unsqueeze(1)
    row = candidates - unit * per_unit
    if int(torch.count_nonzero(above)) * _SPARSE_ON_FRACTION <= above.numel():
        picked_row, column = above.nonzero(as_tuple=True)
        on_unit = unit.index_select(0, picked_row)
        pixel = row.index_select(0, picked_row).mul_(row_width).add_(column)
        unit_area += torch.bincount(on_unit, minlength=units)
        base = on_unit * width
        for layer in labels:
            intersection += torch.bincount(base + layer.index_select(0, pixel), minlength=units * width)
    else:
        cell = (unit * (2 * width)).unsqueeze(1) + above * width
        label_rows = labels.view(labels.shape[0], per_unit, row_width).index_select(1, row)
        for layer, label_row in enumerate(label_rows):
            counts = torch.bincount((cell + label_row).view(-1), minlength=units * 2 * width)
            on = counts.view(units, 2, width)[:, 1]
            intersection += on.reshape(-1)
            if layer == 0:  # every pixel has exactly one layer-0 entry (a concept or the sink)
                unit_area += on.sum(1)
    return intersection.view(units, width)[:, :num_concepts], unit_area


def _count_on_pixels(above: Tensor, labels: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """``(n, width)`` label counts over the pixels where each row of ``above`` is on, and their number.

    Labels of the layers after the first are already their own sink where they repeat an earlier
    layer's (see :func:`concept_labels`), as in the full counting path.
    """
    n = above.shape[0]
    unit, pixel = above.nonzero(as_tuple=True)
    area = torch.bincount(unit, minlength=n)
    base = unit * width
    counts = torch.zeros(n * width, dtype=torch.int64, device=above.device)
    for layer in labels:
        counts += torch.bincount(base + layer[pixel], minlength=n * width)
    return counts.view(n, width), area


def _counts_multi_level_search(
    values: Tensor, thresholds: Tensor, labels: Tensor, num_concepts: int, chunk_elements: int
) -> tuple[Tensor, Tensor]:
    """Reference path: a binary search per value (any dtype, NaN, unsorted thresholds)."""
    units, pixels = values.shape
    levels = thresholds.shape[1]
    bins = levels + 1
    width = num_concepts + 1
    device = values.device
    histogram = torch.zeros(units, bins, width, dtype=torch.int64, device=device)
    area_hist = torch.zeros(units, bins, dtype=torch.int64, device=device)
    step = max(1, chunk_elements // max(1, pixels))
    for start in range(0, units, step):
        chunk = values[start : start + step]
        n = chunk.shape[0]
        # number of thresholds strictly below the value: the unit is "on" at level k iff bin > k
        bin_index = torch.searchsorted(thresholds[start : start + n].contiguous(), chunk)
        if chunk.is_floating_point():  # a NaN is above no threshold (the search puts it above all)
            bin_index.masked_fill_(torch.isnan(chunk), 0)
        offset = (torch.arange(n, device=device) * bins).unsqueeze(1)
        cell = bin_index + offset
        area_hist[start : start + n] += torch.bincount(
            cell.reshape(-1), minlength=n * bins
        ).view(n, bins)
        for layer in labels:
            key = cell * width + layer.unsqueeze(0)
            histogram[start : start + n] += torch.bincount(
                key.reshape(-1), minlength=n * bins * width
            ).view(n, bins, width)
    return histogram, area_hist


def _order_keys(values: Tensor, out: Tensor) -> Tensor:
    """Monotone int32 key of float32 ``values`` into ``out``: ``x < y`` iff ``key(x) < key(y)``.

    Exact for all non-NaN floats except that ``-0.0`` gets the key ``-1`` below ``+0.0``'s ``0``
    (callers give zero thresholds the key ``0``, which makes both zeros compare as equal).
    """
    bits = values.view(torch.int32)
    torch.bitwise_right_shift(bits, 31, out=out)
    out.bitwise_and_(0x7FFFFFFF)
    out.bitwise_xor_(bits)
    return out


class _LevelTable(NamedTuple):
    """Per-unit lookup table from a value's key bucket to its (unit, level) histogram cell."""

    low: Tensor  # (U, 1) clamp floor: keys <= low share bucket -1
    high: Tensor  # (U, 1) clamp ceiling
    base: Tensor  # (U, 1) key of bucket 0's first value
    shift: Tensor  # (U, 1) log2 of the bucket width in keys
    row: Tensor  # (U, 1) offset of the unit's table row (+1 for bucket -1)
    tau: Tensor  # (U * (NB + 2),) the one threshold key inside the bucket (or the kdtype max)
    cells: Tensor  # (2 * U * (NB + 2),) cells of values not above tau, then of values above; -1: ambiguous
    ambiguous: Tensor  # (U,) units with an ambiguous bucket


def _level_table(keys: Tensor, bins: int, width: int, kdtype: torch.dtype) -> _LevelTable:
    """Build the lookup table from ascending ``(U, K)`` int64 threshold keys.

    Bucket ``-1`` holds every key ``<=`` the second smallest distinct threshold key ``k2``;
    buckets ``0 .. NB`` split ``(k2, max]`` into equal power-of-two key ranges (a log-scale in
    value). A value's level is ``#{thresholds < value}``: thresholds below the bucket all count,
    thresholds above none, and a threshold inside the bucket counts iff the value's key exceeds it.
    A threshold at the bucket's last key never counts for a value in it. Buckets holding two or
    more *distinct* inner thresholds are marked ambiguous and resolved exactly by the caller.
    """
    units, levels = keys.shape
    device = keys.device
    nb = _LUT_BUCKETS
    lowest = keys[:, :1]
    above = torch.where(keys > lowest, keys, keys[:, -1:])
    second = above.min(1, keepdim=True).values  # k2 (= lowest if only one distinct key)
    span = keys[:, -1:] - second  # keys in (k2, max]: offsets 0 .. span - 1
    # smallest shift with (span - 1) >> shift < NB
    shift = torch.zeros_like(span)
    for s in range(64):
        too_wide = ((span - 1) >> s) >= nb
        if not bool(too_wide.any()):
            break
        shift += too_wide.to(shift.dtype)
    base = second + 1
    # bucket of every threshold (-1 for keys <= k2) and the last key of that bucket
    bucket = ((keys - base) >> shift).clamp(min=-1)
    last_key = base + ((bucket + 1) << shift) - 1
    inner = keys != last_key
    slots = nb + 2
    slot = bucket + 1  # ascending along the levels, as the keys
    cdtype = torch.int32 if units * bins * width <= _INT32_MAX else torch.int64
    # thresholds in earlier buckets: each slot's position among the thresholds' slots
    every = torch.arange(slots, device=device, dtype=slot.dtype).expand(units, slots).contiguous()
    below = torch.searchsorted(slot, every, out_int32=cdtype == torch.int32)
    count_inner = torch.zeros(units, slots, dtype=below.dtype, device=device)
    count_inner.scatter_add_(1, slot, inner.to(below.dtype))
    big = torch.iinfo(kdtype).max
    tau = torch.full((units, slots), big, dtype=kdtype, device=device)
    tau.scatter_reduce_(1, slot, torch.where(inner, keys, big).to(kdtype), reduce="amin")
    # a bucket's inner thresholds are consecutive levels (the bucket's last key, not inner, comes
    # after them): it holds two distinct ones iff two consecutive inner levels in it differ
    pair = (slot[:, 1:] == slot[:, :-1]) & inner[:, 1:] & inner[:, :-1] & (keys[:, 1:] != keys[:, :-1])
    unit_cell = (torch.arange(units, device=device, dtype=below.dtype) * bins).unsqueeze(1)
    off = below.add_(unit_cell).mul_(width)
    on = count_inner.mul_(width).add_(off)
    ambiguous = pair.any(1)
    if bool(ambiguous.any()):
        marked = torch.zeros(units, slots, dtype=torch.int32, device=device)
        marked.scatter_add_(1, slot[:, 1:], pair.to(torch.int32))
        off.masked_fill_(marked > 0, -1)
        on.masked_fill_(marked > 0, -1)
    cells = torch.cat([off.reshape(-1), on.reshape(-1)]).to(cdtype)
    row = torch.arange(units, device=device).unsqueeze(1) * slots + 1
    return _LevelTable(
        low=second.to(kdtype),
        high=(keys[:, -1:] + 1).to(kdtype),
        base=base.to(kdtype),
        shift=shift.to(kdtype),
        row=row.to(kdtype),
        tau=tau.reshape(-1),
        cells=cells,
        ambiguous=ambiguous,
    )


class _LevelLookup(NamedTuple):
    """A layer's level table, built once per call and shared by every unit step."""

    table: _LevelTable
    thresholds: Tensor  # (U, K) float32 thresholds it was built from
    nonnegative: bool  # every threshold is >= 0 (or -0.0)


# level tables of the thresholds seen recently (a metric counts every batch at the same ones):
# id -> (weak reference, the lookup); the lookup keeps a copy of the thresholds it was built from
_LOOKUPS: dict[int, tuple[weakref.ref, _LevelLookup | None]] = {}
_LOOKUPS_LOCK = threading.Lock()
_LOOKUPS_KEPT = 32


def _level_lookup(thresholds: Tensor) -> _LevelLookup | None:
    """The lookup of ascending NaN-free float32 ``(U, K)`` thresholds (``None`` for other thresholds).

    Its cells are ``unit * (K + 1) + level`` (the caller multiplies by the label width). It is
    reused for the same thresholds tensor while that is alive and holds the same values.
    """
    with _LOOKUPS_LOCK:
        cached = _LOOKUPS.get(id(thresholds))
    if cached is not None and cached[0]() is thresholds:
        lookup = cached[1]
        if lookup is not None and torch.equal(lookup.thresholds, thresholds):
            return lookup
    lookup = _build_level_lookup(thresholds)
    with _LOOKUPS_LOCK:
        for key in [k for k, (ref, _) in _LOOKUPS.items() if ref() is None]:
            del _LOOKUPS[key]
        while len(_LOOKUPS) >= _LOOKUPS_KEPT:
            del _LOOKUPS[next(iter(_LOOKUPS))]
        if lookup is not None:
            _LOOKUPS[id(thresholds)] = (weakref.ref(thresholds), lookup)
    return lookup


def _build_level_lookup(thresholds: Tensor) -> _LevelLookup | None:
    if (
        thresholds.dtype != torch.float32
        or thresholds.numel() == 0
        or bool(torch.isnan(thresholds).any())
        or bool((thresholds[:, 1:] < thresholds[:, :-1]).any())
    ):
        return None
    units, levels = thresholds.shape
    keys = _order_keys(thresholds.contiguous(), torch.empty_like(thresholds, dtype=torch.int32))
    keys = keys.to(torch.int64).masked_fill(thresholds == 0, 0)  # -0.0 == +0.0
    span = int((keys[:, -1] - keys[:, 0]).max())
    fits = span < _INT32_MAX - 1 and 2 * units * (_LUT_BUCKETS + 2) < _INT32_MAX
    kdtype = torch.int32 if fits else torch.int64
    nonnegative = bool((thresholds >= 0).all())
    return _LevelLookup(_level_table(keys, levels + 1, 1, kdtype), thresholds.clone(), nonnegative)


def _counts_multi_level_lookup(
    values: Tensor,
    thresholds: Tensor,
    labels: Tensor,
    num_concepts: int,
    chunk_elements: int,
    lookup: _LevelLookup | None = None,
    first_unit: int = 0,
    nonnegative: bool = False,
) -> tuple[Tensor, Tensor]:
    """Level by table lookup on the float's key bucket, then one bincount per label layer.

    Requires float32 values without NaN and ascending, NaN-free float32 thresholds. Equal to
    :func:`_counts_multi_level_search` for those inputs (including ties, ``-0.0`` and infinities).
    ``lookup`` is a table built for a whole layer, of which ``values`` are the units from
    ``first_unit`` on (``thresholds`` is then ignored); without it the table is built here.
    ``nonnegative``: no value is below zero (``-0.0`` allowed). With thresholds that are all
    ``>= 0`` too, a value's float bits order it as well as its key: the key is not computed
    (``-0.0``, the most negative int32, then compares as ``+0.0``'s key ``0`` does).
    """
    if lookup is None:
        lookup = _build_level_lookup(thresholds)
        assert lookup is not None
        first_unit = 0
    table = lookup.table
    units, pixels = values.shape
    levels = lookup.thresholds.shape[1]
    bins = levels + 1
    width = num_concepts + 1
    device = values.device
    kdtype = table.tau.dtype
    cdtype = table.cells.dtype
    on_offset = table.cells.shape[0] // 2  # the cells of values above tau follow those not above
    bits = nonnegative and lookup.nonnegative
    histogram = torch.zeros(units * bins * width, dtype=torch.int64, device=device)
    area_hist = torch.zeros(units * bins, dtype=torch.int64, device=device)
    step = max(1, chunk_elements // max(1, pixels))
    rows = min(step, units)
    key_buf = None if bits else torch.empty(rows, pixels, dtype=torch.int32, device=device)
    index_buf = torch.empty(rows, pixels, dtype=kdtype, device=device)
    tau_buf = torch.empty(rows, pixels, dtype=kdtype, device=device)
    above_buf = torch.empty(rows, pixels, dtype=kdtype, device=device)
    cell_buf = torch.empty(rows, pixels, dtype=cdtype, device=device)
    label_steps = labels.to(cdtype)
    label_steps = torch.cat([label_steps[:1], label_steps[1:] - label_steps[:-1]])
    for start in range(0, units, step):
        n = min(step, units - start)
        part = slice(first_unit + start, first_unit + start + n)
        chunk = values[start : start + n]
        key = chunk.view(torch.int32) if key_buf is None else _order_keys(chunk, key_buf[:n])
        index = torch.maximum(key, table.low[part], out=index_buf[:n])
        torch.minimum(index, table.high[part], out=index)
        index.sub_(table.base[part]).bitwise_right_shift_(table.shift[part]).add_(table.row[part])
        tau = torch.index_select(table.tau, 0, index.view(-1), out=tau_buf[:n].view(-1))
        above = torch.gt(key, tau.view(n, pixels), out=above_buf[:n])
        index.add_(above, alpha=on_offset)
        cell = torch.index_select(table.cells, 0, index.view(-1), out=cell_buf[:n].view(-1))
        cell = cell.view(n, pixels)
        ambiguous_rows = table.ambiguous[part].nonzero().view(-1)
        if ambiguous_rows.numel():
            _resolve_ambiguous(
                cell, chunk, lookup.thresholds[part], first_unit + start, bins, 1, ambiguous_rows,
            )
        size = n * bins * width
        first_cell = start * bins * width
        for layer, label_step in enumerate(label_steps):
            if layer == 0:
                # the table's cells are (unit, level) bins of the whole layer: this chunk's, times the
                # label width, plus the label
                torch.add(label_step - (first_unit + start) * bins * width, cell, alpha=width, out=cell)
            else:
                cell.add_(label_step)
            counts = torch.bincount(cell.view(-1), minlength=size)
            histogram[first_cell : first_cell + size] += counts
            if layer == 0:  # every pixel has exactly one layer-0 entry (a concept or the sink)
                area_hist[start * bins : (start + n) * bins] += counts.view(n * bins, width).sum(1)
    return histogram.view(units, bins, width), area_hist.view(units, bins)


def _resolve_ambiguous(
    cell: Tensor, values: Tensor, thresholds: Tensor, start: int, bins: int, width: int, rows: Tensor | None = None
) -> None:
    """Exact cells (comparison with every threshold) where the table said ambiguous (-1).

    ``rows``: the only rows that can hold such cells (the units with an ambiguous bucket).
    """
    if rows is None:
        row, col = (cell < 0).nonzero(as_tuple=True)
    else:
        sub, col = (cell.index_select(0, rows) < 0).nonzero(as_tuple=True)
        row = rows[sub]
    if row.numel() == 0:
        return
    level = (values[row, col].unsqueeze(1) > thresholds[row]).sum(1)
    cell[row, col] = ((row + start) * bins + level).mul_(width).to(cell.dtype)


def _counts_multi_level(
    values: Tensor,
    thresholds: Tensor,
    labels: Tensor,
    num_concepts: int,
    chunk_elements: int,
    lookup: _LevelLookup | None = None,
    first_unit: int = 0,
    finite: bool = False,
    nonnegative: bool = False,
) -> tuple[Tensor, Tensor]:
    """``(U, K, C)`` and ``(U, K)`` counts of ``values`` (the units ``first_unit ...`` of ``lookup``'s layer).

    The compiled kernel (:func:`_native_level_counts`) serves ascending NaN-free thresholds on the CPU;
    without it, the table lookup serves float32 values without NaN and thresholds that have a
    ``lookup`` (or, without one, ascending NaN-free float32 ``thresholds``); everything else is
    binary search.
    ``finite``: the values are known to be finite (they are not checked for NaN); ``nonnegative``:
    none is below zero (see :func:`_counts_multi_level_lookup`).
    """
    counted = _native_level_counts(values, thresholds, labels, num_concepts)
    if counted is None and lookup is None and values.dtype == torch.float32:
        lookup = _build_level_lookup(thresholds)
        first_unit = 0
    fast = (
        counted is None
        and lookup is not None
        and values.dtype == torch.float32
        and values.numel() > 0
        # a NaN makes the sum NaN (so does +inf with -inf: then the search path, also exact)
        and (finite or not bool(torch.isnan(values.sum())))
    )
    if counted is not None:
        histogram, area_hist = counted
    elif fast:
        histogram, area_hist = _counts_multi_level_lookup(
            values, thresholds, labels, num_concepts, chunk_elements, lookup, first_unit, nonnegative
        )
    else:
        histogram, area_hist = _counts_multi_level_search(values, thresholds, labels, num_concepts, chunk_elements)
    # on at level k  <=>  bin >= k + 1: suffix sums over bins, dropping bin 0
    intersection = histogram.flip(1).cumsum(1).flip(1)[:, 1:, :num_concepts]
    unit_area = area_hist.flip(1).cumsum(1).flip(1)[:, 1:]
    return intersection, unit_area


#: Default bound on the temporary memory of one counting call (bytes), see ``max_temporary_bytes``.
DEFAULT_MAX_TEMPORARY_BYTES = 64 << 20
# Temporary bytes per upsampled value and unit: the map itself, its upsampling intermediates and
# the key / index / threshold / flag / cell buffers of the level lookup (int64 in the worst case).
_BYTES_PER_VALUE = 48
# Temporary bytes per label layer and pixel (the flattened labels and their working copies).
_BYTES_PER_LABEL = 32


def _plan_chunks(
    batch: int, units: int, pixels_per_image: int, layers: int, bins: int, width: int, budget: int
) -> tuple[int, int]:
    """Images and units per counting step so that the step's temporaries stay within ``budget``.

    A step holds ``images * pixels_per_image`` values of ``units`` units plus up to six ``(units,
    bins, width)`` int64 histograms (the counts, one batch of bincounts, the suffix sums and
    allocator slack). Half the budget goes to one unit's values (images per step), the rest to the
    histograms and to more units. The floor is one image and one unit per step. The estimate is
    conservative: measured peaks stay well below the budget (docs/metrics.md).
    """
    per_image = pixels_per_image * (_BYTES_PER_VALUE + layers * _BYTES_PER_LABEL)
    images = max(1, min(batch, _MAX_PIXELS_PER_CALL // max(1, pixels_per_image), (budget // 2) // per_image))
    per_unit = images * pixels_per_image * _BYTES_PER_VALUE + 6 * 8 * bins * width
    unit_step = max(1, min(units, (budget - images * pixels_per_image * layers * _BYTES_PER_LABEL) // per_unit))
    return images, unit_step


# Labels of a chunk are renumbered densely when at most one label value in this many of the label
# space occurs in the chunk (wide label spaces: the sample groups of the chance baseline, thousands
# of concepts): the counts then take a histogram of the values present, not of the whole space.
_SPARSE_LABEL_FRACTION = 4


class _LabelValues(NamedTuple):
    """A chunk's labels renumbered densely: where each group's present labels go.

    ``spans[g] = (first, end, columns)``: values ``first:end`` of the dense numbering are group
    ``g``'s concepts ``columns`` (sinks left out).
    """

    count: int
    spans: list[tuple[int, int, Tensor]]


def _label_values(
    labels: Tensor, width: int, groups: Sequence[tuple[ConceptCounts, Tensor, int, int | None]], offsets: Sequence[int]
) -> tuple[Tensor, _LabelValues] | None:
    """``labels`` ``(L, P)`` in ``[0, width)`` renumbered by the rank of their value among the values present.

    ``None`` when the values present fill more than one in :data:`_SPARSE_LABEL_FRACTION` of the
    width (renumbering would save little).
    """
    present = torch.zeros(width, dtype=torch.bool, device=labels.device)
    present[labels.reshape(-1)] = True
    values = present.nonzero().view(-1)
    if values.numel() * _SPARSE_LABEL_FRACTION > width:
        return None
    rank = torch.zeros(width, dtype=labels.dtype, device=labels.device)
    rank[values] = torch.arange(values.numel(), dtype=labels.dtype, device=labels.device)
    bounds = torch.searchsorted(
        values, torch.tensor([[o, o + c] for o, (_, _, c, _) in zip(offsets, groups)], device=values.device)
    ).tolist()
    spans = [(lo, hi, values[lo:hi] - offsets[g]) for g, (lo, hi) in enumerate(bounds)]
    return rank[labels], _LabelValues(values.numel(), spans)


def _dense_ranks(key: Tensor, space: int) -> tuple[Tensor, Tensor]:
    """``torch.unique(key, return_inverse=True)`` of non-negative keys below ``space``.

    A small key space is ranked through a presence table (no sort: torch's CPU sort of int64
    runs a parallel section whatever torch's thread count, whose idle threads then spin for a
    while and slow down the statistics' worker threads).
    """
    if space > max(1 << 16, 4 * key.numel()):
        return torch.unique(key, return_inverse=True)
    present = torch.zeros(space, dtype=torch.bool, device=key.device)
    present[key] = True
    values = present.nonzero().view(-1)
    rank = torch.empty(space, dtype=key.dtype, device=key.device)
    rank[values] = torch.arange(values.numel(), dtype=key.dtype, device=key.device)
    return values, rank[key]


def _label_tuples(labels: Tensor, width: int) -> tuple[Tensor, Tensor] | None:
    """The distinct label tuples ``(L, T)`` of ``(L, P)`` labels and each pixel's tuple ``(1, P)``.

    ``None`` for one layer, or when there are at least ``width`` tuples (then counting layer by
    layer is as cheap).
    """
    layers = labels.shape[0]
    if layers < 2:
        return None
    # each pixel's tuple as one integer key, layer by layer; when the next layer would overflow
    # int64, the keys so far are renumbered densely (a 1-D unique, far cheaper than a unique over
    # columns), and the search stops as soon as there are ``width`` distinct tuples
    key, distinct = labels[0], width
    for layer in labels[1:]:
        if distinct * width >= 1 << 62:
            found, key = torch.unique(key, return_inverse=True)
            distinct = found.numel()
            if distinct >= width:
                return None
        key = key * width + layer
        distinct *= width
    unique, inverse = _dense_ranks(key, distinct)
    if unique.numel() >= width:
        return None
    # each tuple's labels, read at the first pixel that holds it
    pixels = torch.arange(inverse.numel(), device=labels.device)
    first = torch.full((unique.numel(),), inverse.numel(), dtype=pixels.dtype, device=labels.device)
    first.scatter_reduce_(0, inverse, pixels, "amin")
    return labels[:, first], inverse.view(1, -1)


def _label_groups(
    out: ConceptCounts,
    segmentation: Tensor,
    num_concepts: int,
    ignore_index: int | None,
    paired: tuple[ConceptCounts, Tensor] | None,
    also: Sequence[tuple[ConceptCounts, Tensor, int, int | None]],
) -> tuple[list[tuple[ConceptCounts, Tensor, int, int | None]], list[int]]:
    """The label groups ``(counts, labels, concepts, ignored label)`` of one batch, and their offsets.

    The groups share one histogram: group ``g``'s labels (its sink included) are shifted by ``offsets[g]``.
    """
    groups: list[tuple[ConceptCounts, Tensor, int, int | None]] = [(out, segmentation, num_concepts, ignore_index)]
    if paired is not None:
        groups.append((paired[0], paired[1], num_concepts, ignore_index))
    groups.extend(also)
    offsets = [0]
    for _, _, concepts, _ in groups:
        offsets.append(offsets[-1] + concepts + 1)
    return groups, offsets


def _block_labels(
    groups: Sequence[tuple[ConceptCounts, Tensor, int, int | None]], offsets: Sequence[int], rows: slice
) -> Tensor:
    """The labels ``(L, n * H * W)`` of images ``rows`` of every label group, shifted by the group's offset.

    Their concept areas are added to each group's counts.
    """
    shifted = []
    for g, (counts, seg, concepts, ignore) in enumerate(groups):
        labels = concept_labels(seg[rows], concepts, ignore)
        counts.concept_area.add_(torch.bincount(labels.reshape(-1), minlength=concepts + 1)[:concepts])
        shifted.append(labels + offsets[g] if g else labels)
    return torch.cat(shifted) if len(shifted) > 1 else shifted[0]


def _chunk_labels(
    labels: Tensor,
    groups: Sequence[tuple[ConceptCounts, Tensor, int, int | None]],
    offsets: Sequence[int],
    counted: int,
) -> tuple[Tensor, Tensor | None, _LabelValues | None]:
    """The shifted labels of one counting step's images (from :func:`_block_labels`), as they are counted.

    Returns ``(labels, tuples, values)``: when the labels present are few next to the label space
    (``values``), they are renumbered densely and the counts of each value are added to its
    concept afterwards. With several label layers (multi-labels, the paired or other label sets)
    each pixel is counted once, by the tuple of its labels or renumbered values (``tuples``), and
    the tuples' counts are spread over their labels or values afterwards. Either is ``None`` when
    not used.
    """
    dense = _label_values(labels, counted + 1, groups, offsets)
    if dense is not None:
        # several layers of few values: each pixel counted once, by its tuple of values
        compact = _label_tuples(dense[0], dense[1].count)
        if compact is None:
            return dense[0], None, dense[1]
        return compact[1], compact[0], dense[1]
    labels = labels.contiguous()
    compact = _label_tuples(labels, counted + 1)
    if compact is None:
        return labels, None, None
    tuples, labels = compact
    return labels, tuples, None


def _label_block(batch: int, images: int, pixels_per_image: int, layers: int, budget: int) -> int:
    """Images whose labels are prepared together: whole steps of ``images``, their labels in a quarter of ``budget``.

    Preparing the labels of several steps at once costs fewer, larger operations.
    """
    steps = max(1, min(-(-batch // images), (budget // 4) // max(1, images * pixels_per_image * layers * 8)))
    return images * steps


# Single threshold: when at most one upsampled row in this many can hold an on value (its bound from
# the maps is above the threshold), only those rows are upsampled and only their on pixels counted.
_SPARSE_ROW_FRACTION = 8
# The matrix products that upsample the candidate rows have at least this many rows and about this
# many multiply-adds: MKL computes some tiny products with other kernels, whose roundings differ from
# those of the products over whole maps; at this size every row gets the floats of the whole maps.
_MIN_PRODUCT_ROWS = 256
_MIN_PRODUCT_SIZE = 1 << 16


class SampleGroupCounts(NamedTuple):
    """Where the counts split by sample group go (see :func:`accumulate_unit_concept_counts`).

    Attributes:
        group: ``(B,)`` the sample group of every image, in ``[0, G)``.
        intersection: ``(U, G, C)`` counts against the segmentation.
        concept_area: ``(G, C)`` concept pixels of the segmentation.
        paired_intersection: ``(U, G, C)`` counts against the paired segmentation.
        paired_concept_area: ``(G, C)`` concept pixels of the paired segmentation.
    """

    group: Tensor
    intersection: Tensor
    concept_area: Tensor
    paired_intersection: Tensor
    paired_concept_area: Tensor


class CategoryAreaCounts(NamedTuple):
    """Where per-category unit areas go (NetDissect-Lite's rule: :mod:`~lightning_dissect.functional.category_area`).

    Attributes:
        concept_category: ``(C,)`` category of every concept, -1 for none.
        unit_area: ``(U, G)`` areas against the segmentation.
        paired_unit_area: ``(U, G)`` areas against the paired segmentation, or ``None``.
        group_unit_area: ``(U, S, G)`` the areas against the segmentation split by the images'
            sample groups (``S`` of them, see :class:`SampleGroupCounts`), or ``None``.
        group_paired_unit_area: ``(U, S, G)`` the same against the paired segmentation, or ``None``.
    """

    concept_category: Tensor
    unit_area: Tensor
    paired_unit_area: Tensor | None
    group_unit_area: Tensor | None = None
    group_paired_unit_area: Tensor | None = None


def _bilinear_sources(in_size: int, out_size: int) -> tuple[Tensor, Tensor]:
    """The first and the last input index that each output index of a 1-D bilinear resampling mixes."""
    weight = bilinear_matrix(in_size, out_size, dtype=torch.float64) > 0
    index = torch.arange(in_size).expand(out_size, -1)
    first = torch.where(weight, index, in_size).amin(1).clamp(max=in_size - 1)
    last = torch.where(weight, index, -1).amax(1).clamp(min=0)
    return first, last


def _padded(a: Tensor, rows: int) -> Tensor:
    """``a`` with zero entries appended along its first axis up to ``rows`` of them."""
    if a.shape[0] >= rows:
        return a
    return torch.cat([a, a.new_zeros(rows - a.shape[0], *a.shape[1:])])


class _OnPixelPlan(NamedTuple):
    """The rows of a batch's upsampled maps that can hold an on value (single threshold)."""

    maps: Tensor  # (B, U, h, w) the maps, float32 or float64
    thresholds: Tensor  # (U,) in the maps' dtype
    rows: Tensor  # (R,) ascending candidate rows (unit * B + image) * H + y
    starts: list[int]  # (U + 1) where each unit's rows start in ``rows``
    size: tuple[int, int]


def _on_pixel_plan(activations: Tensor, thresholds: Tensor, size: tuple[int, int]) -> _OnPixelPlan | None:
    """The rows of the upsampled ``(B, U, h, w)`` maps that can hold a value above ``(U,)`` thresholds.

    ``None`` when more than one row in :data:`_SPARSE_ROW_FRACTION` can. Row ``y`` of an upsampled
    map mixes the input rows ``first[y]`` and ``last[y]`` (see :func:`_bilinear_sources`), each value
    with non-negative weights that sum to one within a few ulps (both stages): no value of the row
    exceeds the largest value of those input rows by more than a few ulps of the map's largest
    magnitude. The bound adds ``2**-14`` of the unit's largest magnitude and a few times the
    smallest normal number, as :func:`_row_upper_bounds`. A row with a NaN gets a NaN bound and a
    unit with an infinite value infinite ones: such rows stay candidates. One pass over the maps.
    """
    batch, units, h, _ = activations.shape
    height = size[0]
    maps = activations
    if maps.dtype not in (torch.float32, torch.float64):
        maps = maps.to(torch.float32)
    levels = _thresholds_as(thresholds, maps.dtype)
    low, high = torch.aminmax(maps, dim=3)  # (B, U, h) each row's extremes (NaN where it holds one)
    magnitude = torch.maximum(low.abs().amax((0, 2)), high.abs().amax((0, 2)))
    slack = magnitude.mul(2.0**-14).add_(4 * torch.finfo(maps.dtype).tiny)
    # an input row is hot where its bound is not below the threshold (NaN bounds compare false); an
    # upsampled row is a candidate where one of its two input rows is hot: rounding is monotone, so
    # max(a, b) + slack <= t exactly when a + slack <= t and b + slack <= t
    hot = torch.logical_not(high.add_(slack.view(1, -1, 1)) <= levels.view(1, -1, 1))
    if int(hot.sum()) * _SPARSE_ROW_FRACTION > hot.numel():  # as many upsampled rows at least
        return None
    hot = hot.transpose(0, 1).reshape(units * batch, h)
    if h != height:
        first, last = (index.to(maps.device) for index in _bilinear_sources(h, height))
        hot = hot[:, first] | hot[:, last]
    candidate = hot.view(units, -1)
    per_unit = candidate.sum(1)
    found = int(per_unit.sum())
    if found * _SPARSE_ROW_FRACTION > candidate.numel():
        return None
    starts = [0, *per_unit.cumsum(0).tolist()]
    return _OnPixelPlan(maps, levels, candidate.view(-1).nonzero().view(-1), starts, tuple(size))


def _on_pixels(plan: _OnPixelPlan, rows: Tensor) -> tuple[Tensor, Tensor]:
    """The on ``(unit, pixel)`` pairs of candidate ``rows``; ``pixel = (image * H + y) * W + x``.

    The rows are upsampled by the matrix products of
    :func:`~lightning_dissect.functional.upsample._upsample_stages` applied to the maps that hold
    them (padded so that no product is tiny): every value is the float the whole maps' upsampling gives.
    """
    maps = plan.maps
    batch, _, h, w = maps.shape
    height, width = plan.size
    map_index = torch.div(rows, height, rounding_mode="floor")
    y = rows - map_index * height
    unit = torch.div(map_index, batch, rounding_mode="floor")
    image = map_index - unit * batch
    if h == height:
        picked = maps[image, unit, y]
    else:
        used, where = torch.unique_consecutive(map_index, return_inverse=True)
        used_unit = torch.div(used, batch, rounding_mode="floor")
        weights = bilinear_matrix(h, height, dtype=maps.dtype, device=maps.device)
        least = max(_MIN_PRODUCT_ROWS, -(-_MIN_PRODUCT_SIZE // (height * h * w)))
        picked = torch.matmul(weights, _padded(maps[used - used_unit * batch, used_unit], least))[where, y]
    if w == width:
        values = picked
    else:
        weights = bilinear_matrix(w, width, dtype=maps.dtype, device=maps.device)
        least = max(_MIN_PRODUCT_ROWS, -(-_MIN_PRODUCT_SIZE // (w * width)))
        values = torch.matmul(_padded(picked, least), weights.T)[: rows.numel()]
    row, column = (values > plan.thresholds.index_select(0, unit).unsqueeze(1)).nonzero(as_tuple=True)
    on_unit = unit.index_select(0, row)
    pixel = (image.index_select(0, row) * height + y.index_select(0, row)) * width + column
    return on_unit, pixel


class _OnLabelSet(NamedTuple):
    """A label set counted on the on pixels: its labels and where its counts go."""

    labels: Tensor  # (L, B * H * W) from concept_labels (the sink: ``concepts``), in a small integer dtype
    concepts: int
    intersection: Tensor  # (U, concepts)
    group_intersection: Tensor | None  # (U, G, concepts), split by the images' sample groups
    category: Tensor | None  # (concepts + 1,) category of every label (-1: none, the sink included)
    category_area: Tensor | None  # (U, categories) per-category unit areas
    group_category_area: Tensor | None  # (U, S, categories) the same split by the images' sample groups


def _add_on_pixel_counts(
    sets: Sequence[_OnLabelSet],
    unit: Tensor,
    pixel: Tensor,
    first: int,
    end: int,
    image_group: Tensor | None,
    overlaps: Sequence[Tensor | None],
    batch: int,
    pixels_per_image: int,
) -> Tensor:
    """Add the intersections of on pairs ``(unit, pixel)`` of units ``first:end`` to every label set's counts.

    ``overlaps[s]`` (for a set with categories): ``(n * B * categories)`` on pixels of each (unit,
    image, category) that carry a label of the category, added to. Returns each pair's
    ``(unit - first) * B + image``.
    """
    n = end - first
    image = torch.div(pixel, pixels_per_image, rounding_mode="floor")
    local = unit - first
    unit_image = local * batch + image
    group = image_group.index_select(0, image) if image_group is not None else None
    for (labels_of, concepts, intersection, grouped, category, area, _), overlap in zip(sets, overlaps):
        labels = labels_of.index_select(1, pixel).to(torch.int64)  # (L, m)
        if overlap is not None and category is not None and area is not None:
            code = category.index_select(0, labels.reshape(-1)).view(labels.shape)
            keep = code >= 0
            cells = (unit_image * area.shape[-1]).unsqueeze(0) + code
            overlap += torch.bincount(cells[keep], minlength=overlap.numel())
        key = (local * (concepts + 1)).unsqueeze(0) + labels
        counts = torch.bincount(key.reshape(-1), minlength=n * (concepts + 1)).view(n, concepts + 1)
        intersection[first:end] += counts[:, :concepts]
        if grouped is None:
            continue
        assert group is not None
        # wide (unit, group, concept) cells: each pair is added into the state itself
        keep = labels != concepts
        ones = torch.ones(int(keep.sum()), dtype=grouped.dtype, device=grouped.device)
        if grouped.is_contiguous():
            cell = ((unit * grouped.shape[1] + group) * concepts).unsqueeze(0) + labels
            grouped.view(-1).index_add_(0, cell[keep], ones)
        else:
            index = (unit.expand_as(labels)[keep], group.expand_as(labels)[keep], labels[keep])
            grouped.index_put_(index, ones, accumulate=True)
    return unit_image


#: Widest label space (label sets x sample groups x concepts) that the compiled kernel counts pixel
#: by pixel rather than from the on pixels: it then costs less than finding the on pixels does.
NATIVE_LABEL_WIDTH = 2048
#: Most upsampled values (images x units x pixels) of a call that the compiled kernel counts pixel by
#: pixel; beyond, upsampling only the rows that can hold an on pixel costs less.
NATIVE_PIXEL_VALUES = 1 << 24


def _count_every_pixel(
    activations: Tensor,
    size: tuple[int, int],
    num_concepts: int,
    paired: tuple[ConceptCounts, Tensor] | None,
    also: Sequence[tuple[ConceptCounts, Tensor, int, int | None]],
    sample_groups: SampleGroupCounts | None,
) -> bool:
    """Whether the compiled kernel should count every pixel (a narrow label space and a small batch on the CPU)."""
    if activations.device.type != "cpu" or native_library() is None:
        return False
    if activations.shape[0] * activations.shape[1] * size[0] * size[1] > NATIVE_PIXEL_VALUES:
        return False
    split = int(sample_groups.intersection.shape[1]) if sample_groups is not None else 1
    width = (num_concepts + 1) * split * (2 if paired is not None else 1) + sum(c + 1 for _, _, c, _ in also)
    return width <= NATIVE_LABEL_WIDTH


def _accumulate_on_pixels(
    out: ConceptCounts,
    activations: Tensor,
    segmentation: Tensor,
    thresholds: Tensor,
    num_concepts: int,
    *,
    ignore_index: int | None,
    max_temporary_bytes: int,
    paired: tuple[ConceptCounts, Tensor] | None,
    also: Sequence[tuple[ConceptCounts, Tensor, int, int | None]],
    sample_groups: SampleGroupCounts | None = None,
    category_area: CategoryAreaCounts | None = None,
) -> bool:
    """:func:`accumulate_unit_concept_counts` of ``(U,)`` thresholds from the on pixels of the few candidate rows.

    Returns ``False``, having added nothing, when more than one upsampled row in
    :data:`_SPARSE_ROW_FRACTION` can hold an on value (see :func:`_on_pixel_plan`); otherwise only
    those rows are upsampled, and every label set's counts come from the labels of their on pixels.
    """
    if activations.shape[0] == 0 or activations.shape[1] == 0:
        return True  # an empty batch adds nothing
    size = tuple(segmentation.shape[-2:])
    if _count_every_pixel(activations, size, num_concepts, paired, also, sample_groups):
        return False
    plan = _on_pixel_plan(activations, thresholds, size)
    if plan is None:
        return False
    batch, units = activations.shape[:2]
    pixels_per_image = size[0] * size[1]
    groups, _ = _label_groups(out, segmentation, num_concepts, ignore_index, paired, also)
    layers = sum(1 if seg.ndim == 3 else seg.shape[1] for _, seg, _, _ in groups)
    budget = int(max_temporary_bytes)
    # the concept areas, a block of images at a time
    group = sample_groups.group.to(torch.int64) if sample_groups is not None else None
    block = max(1, (budget // 4) // max(1, pixels_per_image * layers * 16))
    # every label set's labels as they are counted, kept in the smallest integer dtype
    kept: list[list[Tensor]] = [[] for _ in groups]
    for start in range(0, batch, block):
        rows = slice(start, start + block)
        for g, (counts, seg, concepts, ignore) in enumerate(groups):
            labels = concept_labels(seg[rows], concepts, ignore)
            small = torch.int16 if concepts < 1 << 15 else torch.int32 if concepts < 1 << 31 else torch.int64
            kept[g].append(labels.to(small))
            if group is None or g > 1:
                counts.concept_area.add_(torch.bincount(labels.reshape(-1), minlength=concepts + 1)[:concepts])
                continue
            per_image = group[rows].repeat_interleave(pixels_per_image).unsqueeze(0)
            cells = sample_groups.intersection.shape[1] * (concepts + 1)
            key = (per_image * (concepts + 1) + labels).reshape(-1)
            area = torch.bincount(key, minlength=cells).view(-1, concepts + 1)[:, :concepts]
            (sample_groups.concept_area if g == 0 else sample_groups.paired_concept_area).add_(area)
            counts.concept_area.add_(area.sum(0))
    sets = []
    for g, (counts, _seg, concepts, _ignore) in enumerate(groups):
        labels = torch.cat(kept[g], 1) if len(kept[g]) > 1 else kept[g][0]
        grouped = None
        if sample_groups is not None and g < 2:
            grouped = sample_groups.intersection if g == 0 else sample_groups.paired_intersection
        category, area, group_area = None, None, None
        if category_area is not None and g < 2:
            area = category_area.unit_area if g == 0 else category_area.paired_unit_area
            group_area = category_area.group_unit_area if g == 0 else category_area.group_paired_unit_area
            if area is not None:
                none = torch.full((1,), -1, dtype=torch.int64, device=area.device)
                category = torch.cat([category_area.concept_category.to(area.device, torch.int64), none])
        sets.append(_OnLabelSet(labels, concepts, counts.intersection, grouped, category, area, group_area))
    image_group = group
    # one task per run of units: each writes its own rows of the counts
    workers = worker_count(activations.device)
    found = plan.starts[-1]
    chunk_rows = max(1, budget // (size[1] * _BYTES_PER_VALUE * workers))
    # a few tasks per worker, none of fewer than about 2**18 values (each task costs a few dozen operations)
    per_task = max(1, min(chunk_rows, max(-(-found // (4 * workers)), (1 << 18) // size[1])))
    spans, first = [], 0
    while first < units:
        end = first + 1
        while end < units and plan.starts[end + 1] - plan.starts[first] <= per_task:
            end += 1
        if plan.starts[end] > plan.starts[first]:
            spans.append((first, end))
        first = end
    pairs_per_step = max(1, budget // (workers * 16 * (layers + 4)))

    def task(first: int, end: int) -> None:
        n = end - first
        overlaps = [
            None if s.category_area is None else
            torch.zeros(n * batch * s.category_area.shape[-1], dtype=torch.int64, device=s.category_area.device)
            for s in sets
        ]
        image_area = torch.zeros(n * batch, dtype=torch.int64, device=out.unit_area.device)
        for start in range(plan.starts[first], plan.starts[end], chunk_rows):
            stop = min(start + chunk_rows, plan.starts[end])
            unit, pixel = _on_pixels(plan, plan.rows[start:stop])
            for at in range(0, unit.numel(), pairs_per_step):
                part = slice(at, at + pairs_per_step)
                unit_image = _add_on_pixel_counts(
                    sets, unit[part], pixel[part], first, end, image_group, overlaps, batch, pixels_per_image
                )
                image_area += torch.bincount(unit_image, minlength=n * batch)
        out.unit_area[first:end] += image_area.view(n, batch).sum(1)
        # a unit's area in an image counts toward a category where its on pixels there overlap a label of it
        for s, overlap in zip(sets, overlaps):
            if overlap is not None and s.category_area is not None:
                per_image = image_area.view(n, batch, 1) * (overlap.view(n, batch, -1) > 0)
                s.category_area[first:end] += per_image.sum(1)
                if s.group_category_area is not None and image_group is not None:
                    s.group_category_area[first:end].index_add_(1, image_group, per_image)

    run_tasks([partial(task, first, end) for first, end in spans], workers)
    out.total.add_(batch * pixels_per_image)
    return True


def accumulate_unit_concept_counts(
    out: ConceptCounts,
    activations: Tensor,
    segmentation: Tensor,
    thresholds: Tensor,
    num_concepts: int,
    *,
    ignore_index: int | None = None,
    chunk_elements: int = 1 << 20,
    max_temporary_bytes: int = DEFAULT_MAX_TEMPORARY_BYTES,
    paired: tuple[ConceptCounts, Tensor] | None = None,
    also: Sequence[tuple[ConceptCounts, Tensor, int, int | None]] = (),
) -> None:
    """Add one batch's counts into ``out`` in place, with bounded temporary memory.

    The inputs are not checked (see :func:`unit_concept_counts`). With ``(U,)`` thresholds that few
    upsampled rows can exceed, only those rows are upsampled and their on pixels counted (see the
    module docs). Otherwise the batch is processed in steps of a few images and a few units, sized
    so that one step's temporaries stay within about ``max_temporary_bytes`` whatever ``C`` and
    ``B`` (the floor is one image and one unit, which needs about ``48 * (K + 1) * (C + 1) + 48 *
    H * W`` bytes). An empty batch adds nothing.

    Args:
        out: int64 tensors of shapes ``(U, [K,] C)``, ``(U, [K])``, ``(C,)`` and ``()`` on the
            activations' device, e.g. a metric's states.
        activations: ``(B, U, h, w)`` floating activations.
        segmentation: ``(B, H, W)`` or ``(B, L, H, W)`` labels on the same device.
        thresholds: ``(U,)`` or ascending ``(U, K)`` on the same device.
        num_concepts: ``C``.
        ignore_index: Label of pixels that belong to no concept.
        chunk_elements: Upsampled values compared at a time inside one step (cache size).
        max_temporary_bytes: Approximate bound on the temporary memory of one step.
        paired: ``(paired_out, paired_segmentation)``: also count the same unit maps against a
            second segmentation of the batch (e.g. every image against another image's labels,
            a chance baseline), adding into ``paired_out.intersection`` and
            ``paired_out.concept_area`` what a second call with ``paired_segmentation`` would add
            there; every map is upsampled and thresholded once for both. The unit areas and the
            total do not depend on the labels: they are added to ``out`` only.
        also: More label sets counted against the same thresholded maps, each ``(counts,
            segmentation, num_concepts, ignore_index)`` with its own concepts: what a separate call
            would add to ``counts.intersection`` and ``counts.concept_area`` is added there (e.g.
            the pseudo-labels of :mod:`~lightning_dissect.functional.category_area`).

    Examples:
        >>> out = ConceptCounts(*(torch.zeros(s, dtype=torch.int64) for s in [(1, 2), (1,), (2,), ()]))
        >>> acts = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
        >>> for _ in range(2):
        ...     accumulate_unit_concept_counts(out, acts, torch.tensor([[[0, 1], [0, 1]]]),
        ...                                    torch.tensor([0.5]), 2)
        >>> out.intersection.tolist(), int(out.total)
        ([[0, 4]], 8)
    """
    batch, units = activations.shape[:2]
    if batch == 0 or units == 0:
        return
    if thresholds.ndim == 1 and _accumulate_on_pixels(
        out, activations, segmentation, thresholds, num_concepts, ignore_index=ignore_index,
        max_temporary_bytes=max_temporary_bytes, paired=paired, also=also,
    ):
        return
    _accumulate_whole_maps(
        out, activations, segmentation, thresholds, num_concepts, ignore_index=ignore_index,
        chunk_elements=chunk_elements, max_temporary_bytes=max_temporary_bytes, paired=paired, also=also,
    )


def _accumulate_whole_maps(
    out: ConceptCounts,
    activations: Tensor,
    segmentation: Tensor,
    thresholds: Tensor,
    num_concepts: int,
    *,
    ignore_index: int | None = None,
    chunk_elements: int = 1 << 20,
    max_temporary_bytes: int = DEFAULT_MAX_TEMPORARY_BYTES,
    paired: tuple[ConceptCounts, Tensor] | None = None,
    also: Sequence[tuple[ConceptCounts, Tensor, int, int | None]] = (),
) -> None:
    """:func:`accumulate_unit_concept_counts` from every value of the upsampled maps (whatever the thresholds)."""
    batch, units = activations.shape[:2]
    if batch == 0 or units == 0:
        return
    size = tuple(segmentation.shape[-2:])
    pixels_per_image = size[0] * size[1]
    groups, offsets = _label_groups(out, segmentation, num_concepts, ignore_index, paired, also)
    layers = sum(1 if seg.ndim == 3 else seg.shape[1] for _, seg, _, _ in groups)
    bins = 2 if thresholds.ndim == 1 else thresholds.shape[1] + 1
    # each worker holds one step's temporaries: the budget is shared among them
    workers = worker_count(activations.device)
    images, unit_step = _plan_chunks(
        batch, units, pixels_per_image, layers, bins, offsets[-1], int(max_temporary_bytes) // workers
    )
    counted = offsets[-1] - 1
    single = thresholds.ndim == 1
    native = activations.device.type == "cpu" and native_library() is not None
    value_dtype = activations.dtype if activations.dtype in (torch.float32, torch.float64) else torch.float32
    if native and not single and value_dtype == torch.float32:
        # the compiled multi-level count holds 4 bytes a value and its (bins, width) counts a few
        # times: larger steps than the torch path's, two per worker where there are enough (long
        # kernel calls between few operations that hold the GIL)
        per_unit_bytes = 4 * images * pixels_per_image + 32 * bins * offsets[-1]
        unit_step = max(1, min(-(-units // (2 * workers)), (int(max_temporary_bytes) // workers) // per_unit_bytes))
    all_levels = _thresholds_as(thresholds, value_dtype)

    def step(
        first: int, labels: Tensor, tuples: Tensor | None, dense: _LabelValues | None, lookup: _LevelLookup | None,
        start: int,
    ) -> None:
        part = slice(start, start + unit_step)
        levels = all_levels[part]
        columns = tuples.shape[1] if tuples is not None else dense.count if dense is not None else counted
        if single:
            values, rows, magnitude = _upsampled_with_rows(activations[first : first + images, part], size)
            inter, area = _counts_single_level_rows(values, rows, magnitude, levels, labels, columns, chunk_elements)
            del rows
        else:
            maps = activations[first : first + images, part]
            values = upsample_units_first(maps, size)
            if values.dtype not in (torch.float32, torch.float64):
                values = values.to(torch.float32)
            table = lookup if values.dtype == torch.float32 else None
            # maps of moderate magnitude upsample to finite values (a convex combination cannot
            # overflow), non-negative ones to values >= 0 or -0.0; NaN maps fail both tests
            low, high = torch.aminmax(maps)
            finite = bool((low > -_MODERATE) & (high < _MODERATE))
            nonnegative = finite and bool(low >= 0)
            inter, area = _counts_multi_level(
                values, levels, labels, columns, chunk_elements, table, start, finite, nonnegative
            )
        del values
        if tuples is not None:  # counts per label tuple -> counts per label (or value) of every layer
            per_tuple = inter
            inter = per_tuple.new_zeros(*per_tuple.shape[:-1], dense.count if dense is not None else counted + 1)
            for layer in tuples:
                inter.index_add_(-1, layer, per_tuple)
        if dense is not None:  # counts per value present -> counts of its concept, group by group
            for (counts, _seg, _concepts, _ignore), (lo, hi, columns_of) in zip(groups, dense.spans):
                if hi > lo:
                    counts.intersection[part].index_add_(-1, columns_of, inter[..., lo:hi])
            out.unit_area[part] += area
            return
        for g, (counts, _seg, concepts, _ignore) in enumerate(groups):
            counts.intersection[part] += inter[..., offsets[g] : offsets[g] + concepts]
        out.unit_area[part] += area

    block = _label_block(batch, images, pixels_per_image, layers, int(max_temporary_bytes))
    if single and native:
        # tasks of a few million values, two per worker where there are enough: long kernel calls
        # between few GIL-holding operations (temporaries: 4 bytes a value and the counts)
        per_unit = images * pixels_per_image
        native_step = max(1, min(units, -(-units // (2 * workers)), _NATIVE_TASK_VALUES // max(1, per_unit)))
        _accumulate_single_native(
            out, activations, groups, offsets, all_levels, images, native_step, block, workers, size
        )
        out.total.add_(batch * pixels_per_image)
        return
    for block_first in range(0, batch, block):
        block_labels = _block_labels(groups, offsets, slice(block_first, block_first + block))
        for first in range(block_first, min(batch, block_first + block), images):
            at = (first - block_first) * pixels_per_image
            labels, tuples, dense = _chunk_labels(
                block_labels[:, at : at + images * pixels_per_image], groups, offsets, counted
            )
            # the level table of the whole layer, built once and shared by every step
            lookup = None if single or value_dtype != torch.float32 else _level_lookup(all_levels)
            # one task per unit step: each writes its own rows of the counts
            run_tasks(
                [partial(step, first, labels, tuples, dense, lookup, start) for start in range(0, units, unit_step)],
                workers,
            )
    out.total.add_(batch * pixels_per_image)


#: Most upsampled values a task of the compiled single-threshold count holds.
_NATIVE_TASK_VALUES = 1 << 22


def _accumulate_single_native(
    out: ConceptCounts,
    activations: Tensor,
    groups: Sequence[tuple[ConceptCounts, Tensor, int, int | None]],
    offsets: Sequence[int],
    thresholds: Tensor,
    images: int,
    unit_step: int,
    block: int,
    workers: int,
    size: tuple[int, int],
) -> None:
    """:func:`accumulate_unit_concept_counts` at ``(U,)`` thresholds with the compiled kernel.

    Every label set is counted in the same call on its shifted labels (one column range each), so
    a task is the upsampling of its units (the same matrix products, on the same maps, as
    :func:`upsample_units_first`), one kernel call and one addition per label set: few operations
    to hold the GIL between the workers.
    """
    library = native_library()
    assert library is not None
    batch, units = activations.shape[:2]
    pixels_per_image = size[0] * size[1]
    maps = activations.transpose(0, 1).contiguous()  # unit-major raw maps, made once
    levels = thresholds.contiguous()
    width = offsets[-1]
    kernel = library.ld_count_single_level_f64 if levels.dtype == torch.float64 else library.ld_count_single_level_f32

    def task(first: int, labels: Tensor, start: int) -> None:
        part = slice(start, start + unit_step)
        chunk = maps[part, first : first + images]
        n = chunk.shape[0]
        values = upsample_bilinear(chunk, size).reshape(n, -1) if tuple(chunk.shape[-2:]) != size \
            else chunk.reshape(n, -1)
        values = values.to(levels.dtype).contiguous()
        inter = torch.zeros(n, width, dtype=torch.int64)
        area = torch.zeros(n, dtype=torch.int64)
        kernel(
            values.data_ptr(), n, values.shape[1], values.stride(0), levels[part].data_ptr(), labels.data_ptr(),
            labels.shape[0], labels.stride(0), width, inter.data_ptr(), area.data_ptr(),
        )
        for g, (counts, _seg, concepts, _ignore) in enumerate(groups):
            counts.intersection[part] += inter[:, offsets[g] : offsets[g] + concepts]
        out.unit_area[part] += area

    for block_first in range(0, batch, block):
        block_labels = _block_labels(groups, offsets, slice(block_first, block_first + block))
        block_labels = block_labels.to(torch.int64).contiguous()
        for first in range(block_first, min(batch, block_first + block), images):
            at = (first - block_first) * pixels_per_image
            labels = block_labels[:, at : at + images * pixels_per_image]
            run_tasks([partial(task, first, labels, start) for start in range(0, units, unit_step)], workers)


def unit_concept_counts(
    activations: Tensor,
    segmentation: Tensor,
    thresholds: Tensor,
    num_concepts: int,
    *,
    ignore_index: int | None = None,
    validate_args: bool = True,
    chunk_elements: int = 1 << 20,
    max_temporary_bytes: int = DEFAULT_MAX_TEMPORARY_BYTES,
) -> ConceptCounts:
    """Exact unit–concept counts of one batch.

    Args:
        activations: ``(B, U, h, w)`` floating activations of any resolution.
        segmentation: ``(B, H, W)`` integer labels or ``(B, L, H, W)`` multi-labels in
            ``[0, num_concepts)``; a concept repeated within one pixel counts once.
        thresholds: ``(U,)`` thresholds, or ``(U, K)`` ascending candidate levels per unit.
            A unit is on where its upsampled activation is strictly greater.
        num_concepts: Number of concepts ``C``.
        ignore_index: Label of pixels that belong to no concept (they still count toward the
            unit's area and the total).
        validate_args: Check shapes, dtypes, finiteness and label range.
        chunk_elements: Approximate upsampled values processed at a time (memory / cache).
        max_temporary_bytes: Approximate bound on the memory used besides the inputs and the
            returned counts: the batch is counted a few images and units at a time (see
            :func:`accumulate_unit_concept_counts`). Default 64 MiB.

    Returns:
        :class:`ConceptCounts` with int64 tensors; all zero for an empty batch (``B = 0``).

    Examples:
        >>> acts = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])  # one unit, 2x2
        >>> seg = torch.tensor([[[0, 1], [0, 1]]])
        >>> counts = unit_concept_counts(acts, seg, torch.tensor([0.5]), num_concepts=2)
        >>> counts.intersection.tolist(), counts.unit_area.tolist(), counts.concept_area.tolist()
        ([[0, 2]], [2], [2, 2])
    """
    if validate_args:
        check_int(max_temporary_bytes, "max_temporary_bytes", minimum=1)
        check_activations(activations, num_units=None)
        thresholds = check_thresholds(thresholds, num_units=activations.shape[1])
        check_segmentation(
            segmentation,
            num_concepts=num_concepts,
            ignore_index=ignore_index,
            batch_size=activations.shape[0],
        )
    device = activations.device
    thresholds = thresholds.to(device=device)
    units = activations.shape[1]
    levels = tuple(thresholds.shape[1:])
    out = ConceptCounts(
        torch.zeros(units, *levels, num_concepts, dtype=torch.int64, device=device),
        torch.zeros(units, *levels, dtype=torch.int64, device=device),
        torch.zeros(num_concepts, dtype=torch.int64, device=device),
        torch.zeros((), dtype=torch.int64, device=device),
    )
    accumulate_unit_concept_counts(
        out,
        activations,
        segmentation.to(device),
        thresholds,
        num_concepts,
        ignore_index=ignore_index,
        chunk_elements=chunk_elements,
        max_temporary_bytes=max_temporary_bytes,
    )
    return out
