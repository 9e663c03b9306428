"""Per-batch unit–concept co-occurrence counts.

For a unit ``u`` with threshold ``t`` and a concept ``c``, over the pixels ``p`` of a batch:

* ``intersection[u, c] = #{p : a_u(p) > t and c in labels(p)}``
* ``unit_area[u] = #{p : a_u(p) > t}`` (every pixel counts, also unlabeled/ignored ones)
* ``concept_area[c] = #{p : c in labels(p)}``
* ``total = #pixels``

where ``a_u`` is the unit's activation map bilinearly upsampled to the segmentation size. With
``K`` ascending candidate thresholds per unit the counts gain a level axis ``k``. All counts are
exact integers, so they add across batches and processes without error.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lightning_dissect.functional._checks import (
    check_activations,
    check_segmentation,
    check_thresholds,
)
from lightning_dissect.functional.upsample import upsample_units_first

__all__ = ["ConceptCounts", "concept_labels", "concept_indicator", "unit_concept_counts"]

# float32 adds 0/1 values exactly up to 2**24; stay well below that per call.
_MAX_PIXELS_PER_CALL = 1 << 22


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
        out[layers == ignore_index] = sink
    for layer in range(1, layers.shape[0]):
        repeat = (layers[layer].unsqueeze(0) == layers[:layer]).any(0)
        out[layer][repeat] = sink
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
    units, pixels = values.shape
    width = num_concepts + 1
    intersection = torch.zeros(units, width, dtype=torch.float32, device=values.device)
    unit_area = torch.zeros(units, dtype=torch.float32, device=values.device)
    indicator = None
    if labels.shape[0] > 1:  # multi-label: one matrix product per chunk
        indicator = torch.zeros(pixels, width, dtype=torch.float32, device=values.device)
        rows = torch.arange(pixels, device=values.device).expand_as(labels)
        indicator[rows.reshape(-1), labels.reshape(-1)] = 1.0
    step = max(1, chunk_elements // max(1, pixels))
    for start in range(0, units, step):
        mask = (values[start : start + step] > thresholds[start : start + step, None]).to(
            torch.float32
        )
        unit_area[start : start + step] = mask.sum(1)
        if indicator is None:
            intersection[start : start + step].index_add_(1, labels[0], mask)
        else:
            intersection[start : start + step] = mask @ indicator
    return intersection[:, :num_concepts], unit_area


def _counts_multi_level(
    values: Tensor, thresholds: Tensor, labels: Tensor, num_concepts: int, chunk_elements: int
) -> tuple[Tensor, Tensor]:
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
    # on at level k  <=>  bin >= k + 1: suffix sums over bins, dropping bin 0
    intersection = histogram.flip(1).cumsum(1).flip(1)[:, 1:, :num_concepts]
    unit_area = area_hist.flip(1).cumsum(1).flip(1)[:, 1:]
    return intersection, unit_area


def unit_concept_counts(
    activations: Tensor,
    segmentation: Tensor,
    thresholds: Tensor,
    num_concepts: int,
    *,
    ignore_index: int | None = None,
    validate_args: bool = True,
    chunk_elements: int = 1 << 20,
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

    Returns:
        :class:`ConceptCounts` with int64 tensors.

    Examples:
        >>> acts = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])  # one unit, 2x2
        >>> seg = torch.tensor([[[0, 1], [0, 1]]])
        >>> counts = unit_concept_counts(acts, seg, torch.tensor([0.5]), num_concepts=2)
        >>> counts.intersection.tolist(), counts.unit_area.tolist(), counts.concept_area.tolist()
        ([[0, 2]], [2], [2, 2])
    """
    if validate_args:
        check_activations(activations, num_units=None)
        thresholds = check_thresholds(thresholds, num_units=activations.shape[1])
        check_segmentation(
            segmentation,
            num_concepts=num_concepts,
            ignore_index=ignore_index,
            batch_size=activations.shape[0],
        )
    thresholds = thresholds.to(device=activations.device)
    batch = activations.shape[0]
    size = tuple(segmentation.shape[-2:])
    pixels_per_image = size[0] * size[1]
    per_call = max(1, _MAX_PIXELS_PER_CALL // max(1, pixels_per_image))
    results = []
    for start in range(0, batch, per_call):
        acts = activations[start : start + per_call]
        seg = segmentation[start : start + per_call]
        values = upsample_units_first(acts, size)
        if values.dtype not in (torch.float32, torch.float64):
            values = values.to(torch.float32)
        levels = _thresholds_as(thresholds, values.dtype)
        labels = concept_labels(seg, num_concepts, ignore_index)
        if thresholds.ndim == 1:
            inter, area = _counts_single_level(
                values, levels, labels, num_concepts, chunk_elements
            )
        else:
            inter, area = _counts_multi_level(
                values, levels, labels, num_concepts, chunk_elements
            )
        concept_area = torch.bincount(labels.reshape(-1), minlength=num_concepts + 1)
        results.append((inter.to(torch.int64), area.to(torch.int64), concept_area[:num_concepts]))
    intersection = sum(r[0] for r in results)
    unit_area = sum(r[1] for r in results)
    concept_area = sum(r[2] for r in results)
    total = torch.tensor(batch * pixels_per_image, dtype=torch.int64, device=activations.device)
    return ConceptCounts(intersection, unit_area, concept_area, total)  # type: ignore[arg-type]
