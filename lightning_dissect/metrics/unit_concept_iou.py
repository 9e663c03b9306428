"""``UnitConceptIoU``: dataset-level IoU between thresholded unit maps and concept masks."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_dissect.functional._checks import (
    check_activations,
    check_segmentation,
    check_thresholds,
)
from lightning_dissect.functional.counts import ConceptCounts, unit_concept_counts
from lightning_dissect.functional.scores import (
    contingency_from_counts,
    iou_from_counts,
    iqr_from_counts,
    mutual_information_from_counts,
)
from lightning_dissect.metrics._sync import all_reduce_sum

__all__ = ["UnitConceptIoU"]


class UnitConceptIoU(Metric):
    r"""IoU of every unit with every concept, pooled over all samples seen.

    For unit ``u`` (its map bilinearly upsampled to the segmentation size, ``align_corners=False``,
    "on" where strictly above its threshold) and concept ``c``:

    .. math:: \mathrm{IoU}(u, c) = \frac{\sum I}{\sum A_u + \sum S_c - \sum I}

    with sums over every pixel of every image (0 where the union is empty). The states are
    integer counts reduced by summation; under DDP they are all-reduced, so a run split over
    processes returns bit-identical results to a single process.

    Args:
        num_units: Number of units ``U``.
        num_concepts: Number of concepts ``C``; labels lie in ``[0, C)``.
        thresholds: ``(U,)`` per-unit thresholds, or ``(U, K)`` ascending candidate levels, in
            which case every statistic gains a level axis ``K``.
        ignore_index: A label that belongs to no concept (its pixels still count toward each
            unit's area). It may lie inside ``[0, C)`` (e.g. 0 = "unlabeled"; that concept's
            column is then 0) or outside it (e.g. 255).
        validate_args: Check shapes, dtypes, finiteness and label range of every batch.
        kwargs: Passed to :class:`torchmetrics.Metric`.

    State memory: ``8 * U * K * (C + 1) + 8 * C + 8`` bytes.

    Examples:
        >>> metric = UnitConceptIoU(num_units=1, num_concepts=2, thresholds=torch.tensor([0.5]))
        >>> acts = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
        >>> metric.update(acts, torch.tensor([[[0, 1], [1, 1]]]))
        >>> metric.compute()
        tensor([[0.0000, 0.6667]])
    """

    full_state_update: bool = False
    is_differentiable: bool = False
    higher_is_better: bool | None = True

    intersection: Tensor
    unit_area: Tensor
    concept_area: Tensor
    total: Tensor
    thresholds: Tensor

    def __init__(
        self,
        num_units: int,
        num_concepts: int,
        thresholds: Tensor,
        ignore_index: int | None = None,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dist_sync_fn", all_reduce_sum)
        super().__init__(**kwargs)
        if not isinstance(num_units, int) or num_units < 1:
            raise ValueError(f"`num_units` must be a positive int, got {num_units!r}")
        if not isinstance(num_concepts, int) or num_concepts < 1:
            raise ValueError(f"`num_concepts` must be a positive int, got {num_concepts!r}")
        if ignore_index is not None and not isinstance(ignore_index, int):
            raise ValueError(f"`ignore_index` must be an int or None, got {ignore_index!r}")
        thresholds = check_thresholds(thresholds, num_units=num_units)
        self.num_units = num_units
        self.num_concepts = num_concepts
        self.ignore_index = ignore_index
        self.validate_args = validate_args
        self.register_buffer("thresholds", thresholds.detach().clone(), persistent=False)
        levels = () if thresholds.ndim == 1 else (thresholds.shape[1],)
        self.add_state(
            "intersection",
            torch.zeros(num_units, *levels, num_concepts, dtype=torch.int64),
            dist_reduce_fx="sum",
        )
        self.add_state(
            "unit_area", torch.zeros(num_units, *levels, dtype=torch.int64), dist_reduce_fx="sum"
        )
        self.add_state(
            "concept_area", torch.zeros(num_concepts, dtype=torch.int64), dist_reduce_fx="sum"
        )
        self.add_state("total", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    @property
    def num_levels(self) -> int | None:
        """``K`` for ``(U, K)`` thresholds, ``None`` for ``(U,)``."""
        return None if self.thresholds.ndim == 1 else int(self.thresholds.shape[1])

    def update(self, activations: Tensor, segmentation: Tensor) -> None:
        """Add a batch.

        Args:
            activations: ``(B, U, h, w)`` floating activations, any resolution.
            segmentation: ``(B, H, W)`` integer labels, or ``(B, L, H, W)`` multi-labels.
        """
        check_activations(activations, num_units=self.num_units, check_values=self.validate_args)
        check_segmentation(
            segmentation,
            num_concepts=self.num_concepts,
            ignore_index=self.ignore_index,
            batch_size=activations.shape[0],
            check_values=self.validate_args,
        )
        counts = unit_concept_counts(
            activations.detach(),
            segmentation.to(activations.device),
            self.thresholds.to(activations.device),
            self.num_concepts,
            ignore_index=self.ignore_index,
            validate_args=False,
        )
        self.intersection += counts.intersection
        self.unit_area += counts.unit_area
        self.concept_area += counts.concept_area
        self.total += counts.total

    def compute(self) -> Tensor:
        """IoU, ``(U, C)`` for ``(U,)`` thresholds or ``(U, K, C)`` for ``(U, K)`` (float32)."""
        return iou_from_counts(self.intersection, self.unit_area, self.concept_area).float()

    def counts(self) -> ConceptCounts:
        """The synced raw counts (intersection, unit area, concept area, total pixels).

        Synchronises like ``compute``: under DDP call it on every rank.
        """
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn,
            should_sync=self._to_sync,
            should_unsync=self._should_unsync,
        ):
            return ConceptCounts(
                self.intersection.clone(),
                self.unit_area.clone(),
                self.concept_area.clone(),
                self.total.clone(),
            )

    def contingency(self) -> Tensor:
        """The 2×2 table ``[[I, A−I], [S−I, N−A−S+I]]`` for every (unit, [level,] concept).

        Returns:
            int64 tensor ``(U, [K,] C, 2, 2)``; rows: unit on / off, columns: concept present /
            absent.
        """
        c = self.counts()
        return contingency_from_counts(c.intersection, c.unit_area, c.concept_area, c.total)

    def information_quality_ratio(self) -> Tensor:
        """IQR = mutual information / joint entropy per (unit, [level,] concept), float64."""
        c = self.counts()
        return iqr_from_counts(c.intersection, c.unit_area, c.concept_area, c.total)

    def mutual_information(self) -> Tensor:
        """Mutual information (nats) per (unit, [level,] concept), float64."""
        c = self.counts()
        return mutual_information_from_counts(
            c.intersection, c.unit_area, c.concept_area, c.total
        )
