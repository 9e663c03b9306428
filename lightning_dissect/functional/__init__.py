"""Pure tensor functions behind every statistic of lightning-dissect.

The metrics in :mod:`lightning_dissect.metrics` accumulate the outputs of these functions; the
engine, the callback and the interventions call them too, so each formula exists once.
"""

from __future__ import annotations

from torch import Tensor

from lightning_dissect.functional.counts import (
    ConceptCounts,
    accumulate_unit_concept_counts,
    concept_indicator,
    concept_labels,
    unit_concept_counts,
)
from lightning_dissect.functional.quantiles import (
    LogHistogramSpec,
    histogram_bucket_index,
    quantile_rank,
    quantiles_from_histogram,
    unit_histogram,
)
from lightning_dissect.functional.scores import (
    contingency_from_counts,
    iou_from_counts,
    iqr_from_counts,
    mutual_information_from_counts,
)
from lightning_dissect.functional.upsample import (
    bilinear_matrix,
    upsample_bilinear,
    upsample_units_first,
)

__all__ = [
    "ConceptCounts",
    "LogHistogramSpec",
    "accumulate_unit_concept_counts",
    "bilinear_matrix",
    "concept_indicator",
    "concept_labels",
    "contingency_from_counts",
    "histogram_bucket_index",
    "iou_from_counts",
    "iqr_from_counts",
    "mutual_information_from_counts",
    "quantile_rank",
    "quantiles_from_histogram",
    "unit_concept_counts",
    "unit_concept_iou",
    "unit_histogram",
    "upsample_bilinear",
    "upsample_units_first",
]


def unit_concept_iou(
    activations: Tensor,
    segmentation: Tensor,
    thresholds: Tensor,
    num_concepts: int | None = None,
    *,
    ignore_index: int | None = None,
    validate_args: bool = True,
) -> Tensor:
    """IoU between thresholded, upsampled unit maps and concept masks over one batch.

    Same semantics as :class:`~lightning_dissect.metrics.UnitConceptIoU` with a single
    ``update``: counts are pooled over the whole batch (not averaged per image).

    Args:
        activations: ``(B, U, h, w)`` activations.
        segmentation: ``(B, H, W)`` labels or ``(B, L, H, W)`` multi-labels.
        thresholds: ``(U,)`` or ascending ``(U, K)``.
        num_concepts: ``C``; defaults to the largest label other than ``ignore_index``, plus 1.
        ignore_index: Label of pixels belonging to no concept.
        validate_args: Check the inputs.

    Returns:
        ``(U, C)`` or ``(U, K, C)`` float64 IoU.

    Examples:
        >>> import torch
        >>> acts = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
        >>> seg = torch.tensor([[[0, 1], [1, 1]]])
        >>> unit_concept_iou(acts, seg, torch.tensor([0.5]))
        tensor([[0.0000, 0.6667]], dtype=torch.float64)
    """
    if num_concepts is None:
        labels = segmentation
        if ignore_index is not None:
            labels = segmentation[segmentation != ignore_index]
        num_concepts = int(labels.max()) + 1 if labels.numel() else 1
    counts = unit_concept_counts(
        activations,
        segmentation,
        thresholds,
        num_concepts,
        ignore_index=ignore_index,
        validate_args=validate_args,
    )
    return iou_from_counts(counts.intersection, counts.unit_area, counts.concept_area)
