"""``UnitConceptIoU``: dataset-level IoU between thresholded unit maps and concept masks."""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
from torch import Tensor

from lightning_dissect._utils.checks import (
    _shape,
    check_activations,
    check_ignore_index,
    check_int,
    check_segmentation,
    check_thresholds,
)
from lightning_dissect.functional.category_area import add_category_area, category_counts, category_labels
from lightning_dissect.functional.chance import MAX_SAMPLE_GROUPS, sample_groups_of, swap_test_p_values
from lightning_dissect.functional.counts import (
    DEFAULT_MAX_TEMPORARY_BYTES,
    CategoryAreaCounts,
    ConceptCounts,
    SampleGroupCounts,
    _accumulate_on_pixels,
    _accumulate_whole_maps,
)
from lightning_dissect.functional.scores import (
    best_level_and_concept,
    contingency_from_counts,
    iou_from_counts,
    iqr_from_counts,
    mutual_information_from_counts,
)
from lightning_dissect.metrics._base import SumStateMetric
from lightning_dissect.visual.colours import IOU_SCALE_MAX

__all__ = ["GroupCounts", "UnitConceptIoU"]

# After a batch with many candidate rows (see ``accumulate_unit_concept_counts``), this many batches
# are counted from the whole maps before the candidate rows are looked at again: the look costs a
# pass over the maps, and a layer's share of candidate rows changes little from batch to batch.
_WHOLE_MAPS_STREAK = 7


class GroupCounts(NamedTuple):
    """The counts of a ``sample_groups`` metric split by sample group (``index mod G``).

    Attributes:
        intersection: ``(U, [K,] G, C)`` against each image's own segmentation.
        concept_area: ``(G, C)`` concept pixels of the own segmentations.
        paired_intersection: ``(U, [K,] G, C)`` against the paired segmentations.
        paired_concept_area: ``(G, C)`` concept pixels of the paired segmentations.
        category_unit_area: With ``concept_categories``: ``(U, [K,] G, N)`` each unit's area per
            concept category ``N`` (NetDissect-Lite's rule) in each group's images, against their own
            segmentations; else ``None``.
        paired_category_unit_area: The same against the paired segmentations, or ``None``.
        concept_category: ``(C,)`` the category of every concept (-1: none), or ``None``.
    """

    intersection: Tensor
    concept_area: Tensor
    paired_intersection: Tensor
    paired_concept_area: Tensor
    category_unit_area: Tensor | None = None
    paired_category_unit_area: Tensor | None = None
    concept_category: Tensor | None = None

    def label_unit_areas(self, label: Tensor, level: Tensor | None, unit_area: Tensor) -> tuple[Tensor, Tensor]:
        """Each unit's area for its label per group, ``(U, G)`` own and paired, for the swap test.

        With per-category areas, a label of a category takes the unit's area of that category in
        each group against the own and against the paired segmentations; otherwise (and for a
        label without a category) both pairings share ``unit_area`` (``(U,)``, over all groups),
        written in the first group's column.
        """
        label = label.cpu()
        units, groups = label.shape[0], self.intersection.shape[-2]
        shared = torch.zeros(units, groups, dtype=torch.int64)
        shared[:, 0] = unit_area.cpu()
        if self.category_unit_area is None or self.concept_category is None:
            return shared, shared
        rows = torch.arange(units)
        category = self.concept_category.cpu()[label]
        own, other = self.category_unit_area.cpu(), self.paired_category_unit_area.cpu()  # type: ignore[union-attr]
        if level is not None:
            own, other = own[rows, level.cpu()], other[rows, level.cpu()]
        column = category.clamp(min=0)
        own, other = own[rows, :, column], other[rows, :, column]
        plain = (category < 0).unsqueeze(1)
        return torch.where(plain, shared, own), torch.where(plain, shared, other)


class UnitConceptIoU(SumStateMetric):
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
        max_temporary_bytes: Approximate bound on the temporary memory of one ``update`` besides
            its inputs: the counts are added into the states a few images and units at a time.
            Default 64 MiB; the floor is one image and one unit, about
            ``48 * (K + 1) * (C + 1) + 48 * H * W`` bytes.
        paired: Also count every batch against a second segmentation, given to ``update`` as
            ``paired_segmentation`` (e.g. each image paired with another image's labels: a
            chance baseline). Each unit map is upsampled and thresholded once for both; the
            states ``paired_intersection`` and ``paired_concept_area`` hold the second counts
            (read them with :meth:`paired_counts`).
        concept_categories: ``(C,)`` integer category of every concept in ``[0, G)`` (-1: none).
            Given, a unit's area is counted per category, NetDissect-Lite's rule: in an image it
            counts toward category ``g`` only when the unit's active pixels there overlap a label
            of ``g`` (state ``category_unit_area``, ``(U, [K,] G)``), and the IoU of a concept uses
            the area of its category (see :mod:`lightning_dissect.functional.category_area`).
            :meth:`counts` then returns a ``unit_area`` of shape ``(U, [K,] C)``: each concept's
            own unit area. A ``paired`` metric applies the same rule to the paired segmentation
            (state ``paired_category_unit_area``): the chance IoU of a concept uses the unit's
            area in the images whose paired labels of its category its active pixels overlap.
        sample_groups: With ``paired``: also keep the counts split into this many groups of
            samples, sample ``i`` (its ``sample_index`` given to ``update``) in group
            ``i mod sample_groups`` (at most 16), for the swap test of
            :func:`~lightning_dissect.functional.chance.swap_test_p_values` (read them with
            :meth:`group_counts`). The groups depend on the samples' indices only, so the counts
            are the same for every batch size and number of processes. Adds
            ``16 * G * (U * K * C + C)`` bytes of state. With ``concept_categories`` the
            per-category unit areas are split too (states ``group_category_unit_area`` and
            ``group_paired_category_unit_area``, ``(U, [K,] G, N)`` for ``N`` categories): a group
            swapped by the swap test brings its own unit area under each pairing.
        kwargs: Passed to :class:`torchmetrics.Metric`; ``dist_sync_fn`` defaults to
            :func:`~lightning_dissect.metrics.all_reduce_sum`.

    The thresholds are a persistent buffer (saved in ``state_dict``, moved with the metric, not
    reduced across processes): ``load_state_dict`` refuses a state dict whose thresholds differ
    from this metric's, so counts never attach to thresholds they were not counted at.

    State memory: ``8 * U * K * (C + 1) + 8 * C + 8`` bytes. An ``update`` adds its counts into
    the states in place, so its temporary memory is bounded by ``max_temporary_bytes`` (not a
    multiple of the state). An empty batch (``B = 0``) changes nothing.

    Examples:
        >>> metric = UnitConceptIoU(num_units=1, num_concepts=2, thresholds=torch.tensor([0.5]))
        >>> acts = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
        >>> metric.update(acts, torch.tensor([[[0, 1], [1, 1]]]))
        >>> metric.compute()
        tensor([[0.0000, 0.6667]])

        Counting against a second segmentation of the same images at no extra upsampling:

        >>> paired = UnitConceptIoU(1, 2, torch.tensor([0.5]), paired=True)
        >>> paired.update(acts, torch.tensor([[[0, 1], [1, 1]]]),
        ...               paired_segmentation=torch.tensor([[[1, 0], [1, 0]]]))
        >>> paired.paired_counts().intersection.tolist()  # the unit's pixels carry concept 0 there
        [[2, 0]]
    """

    higher_is_better: bool | None = True
    _setting_buffers = ("thresholds",)

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
        max_temporary_bytes: int = DEFAULT_MAX_TEMPORARY_BYTES,
        paired: bool = False,
        concept_categories: Tensor | None = None,
        sample_groups: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(paired, bool):
            raise TypeError(f"`paired` must be a bool, got {type(paired).__name__}")
        self.paired = paired
        if sample_groups is not None:
            sample_groups = check_int(sample_groups, "sample_groups", minimum=1)
            if sample_groups > MAX_SAMPLE_GROUPS:
                raise ValueError(f"`sample_groups` must be at most {MAX_SAMPLE_GROUPS}, got {sample_groups}")
            if not paired:
                raise ValueError("`sample_groups` splits the own and the paired counts: it needs `paired=True`")
        self.sample_groups = sample_groups
        # batches counted from the whole maps since the last look at the candidate rows
        self._on_pixels_skipped = _WHOLE_MAPS_STREAK
        self.max_temporary_bytes = check_int(max_temporary_bytes, "max_temporary_bytes", minimum=1)
        self.num_units = check_int(num_units, "num_units", minimum=1)
        self.num_concepts = check_int(num_concepts, "num_concepts", minimum=1)
        self.ignore_index = check_ignore_index(ignore_index)
        thresholds = check_thresholds(thresholds, num_units=self.num_units)
        self.validate_args = validate_args
        self.register_buffer("thresholds", thresholds.detach().clone(), persistent=True)
        levels = () if thresholds.ndim == 1 else (thresholds.shape[1],)
        self._add_sum_state("intersection", (self.num_units, *levels, self.num_concepts))
        self._add_sum_state("unit_area", (self.num_units, *levels))
        self._add_sum_state("concept_area", (self.num_concepts,))
        self._add_sum_state("total", ())
        if paired:
            self._add_sum_state("paired_intersection", (self.num_units, *levels, self.num_concepts))
            self._add_sum_state("paired_concept_area", (self.num_concepts,))
        self.concept_categories: Tensor | None = None
        if concept_categories is not None:
            categories = torch.as_tensor(concept_categories)
            if categories.shape != (self.num_concepts,) or categories.is_floating_point():
                raise ValueError(
                    f"`concept_categories` must be ({self.num_concepts},) integers (one category per "
                    f"concept, -1 for none), got {_shape(categories)} {categories.dtype}"
                )
            self.concept_categories = categories.to(torch.int64).cpu()
            groups = max(1, int(self.concept_categories.max()) + 1)
            self._add_sum_state("category_unit_area", (self.num_units, *levels, groups))
            if paired:
                self._add_sum_state("paired_category_unit_area", (self.num_units, *levels, groups))
        if sample_groups is not None:
            grouped = (self.num_units, *levels, sample_groups, self.num_concepts)
            self._add_sum_state("group_intersection", grouped)
            self._add_sum_state("group_concept_area", (sample_groups, self.num_concepts))
            self._add_sum_state("group_paired_intersection", grouped)
            self._add_sum_state("group_paired_concept_area", (sample_groups, self.num_concepts))
            if self.concept_categories is not None:
                by_category = (self.num_units, *levels, sample_groups, int(self.category_unit_area.shape[-1]))
                self._add_sum_state("group_category_unit_area", by_category)
                self._add_sum_state("group_paired_category_unit_area", by_category)

    def _settings_text(self) -> str:
        return (
            f"num_units={self.num_units}, num_concepts={self.num_concepts}, thresholds of shape "
            f"{_shape(self.thresholds)}, paired={self.paired}, sample_groups={self.sample_groups}"
        )

    def _state_axes(self) -> dict[str, tuple[tuple[str, int], ...]]:
        units = ("num_units", self.num_units)
        levels = () if self.num_levels is None else (("thresholds levels K", self.num_levels),)
        concepts = ("num_concepts", self.num_concepts)
        axes = {
            "intersection": (units, *levels, concepts),
            "unit_area": (units, *levels),
            "concept_area": (concepts,),
            "total": (),
        }
        if self.paired:
            axes.update(paired_intersection=axes["intersection"], paired_concept_area=(concepts,))
        if self.concept_categories is not None:
            groups = ("concept_categories (categories)", int(self.category_unit_area.shape[-1]))
            axes["category_unit_area"] = (units, *levels, groups)
            if self.paired:
                axes["paired_category_unit_area"] = (units, *levels, groups)
        if self.sample_groups is not None:
            groups = ("sample_groups", self.sample_groups)
            grouped = (units, *levels, groups, concepts)
            axes.update(
                group_intersection=grouped, group_concept_area=(groups, concepts),
                group_paired_intersection=grouped, group_paired_concept_area=(groups, concepts),
            )
            if self.concept_categories is not None:
                categories = ("concept_categories (categories)", int(self.category_unit_area.shape[-1]))
                axes["group_category_unit_area"] = (units, *levels, groups, categories)
                axes["group_paired_category_unit_area"] = (units, *levels, groups, categories)
        return axes

    def _rank_mismatch(self, key: str, shape: tuple[int, ...]) -> str:
        if self.num_levels is None:
            return "the state was saved by a metric with (U, K) multi-level `thresholds`; this one has (U,)"
        return "the state was saved by a metric with (U,) `thresholds`; this one has (U, K) levels"

    def _setting_mismatch(self, key: str, value: Tensor) -> str | None:
        mine = self.thresholds
        if not isinstance(value, Tensor):
            return f"`thresholds` in the state dict must be a tensor, got {type(value).__name__}"
        if tuple(value.shape) != tuple(mine.shape):
            return (
                f"the state was counted at `thresholds` of shape {_shape(value)}; this metric has "
                f"{_shape(mine)}"
            )
        if not torch.equal(value.to(device=mine.device, dtype=mine.dtype), mine):
            differ = int((value.to(device=mine.device, dtype=mine.dtype) != mine).sum())
            return (
                f"the state was counted at other `thresholds` ({differ} of {mine.numel()} values "
                "differ); build the metric with the thresholds the counts were made at"
            )
        return None

    @property
    def num_levels(self) -> int | None:
        """``K`` for ``(U, K)`` thresholds, ``None`` for ``(U,)``."""
        return None if self.thresholds.ndim == 1 else int(self.thresholds.shape[1])

    def update(
        self,
        activations: Tensor,
        segmentation: Tensor,
        paired_segmentation: Tensor | None = None,
        sample_index: Tensor | None = None,
    ) -> None:
        """Add a batch.

        Args:
            activations: ``(B, U, h, w)`` floating activations, any resolution.
            segmentation: ``(B, H, W)`` integer labels, or ``(B, L, H, W)`` multi-labels.
            paired_segmentation: The second segmentation of a ``paired`` metric (same rules and
                size as ``segmentation``); required exactly when the metric is ``paired``.
            sample_index: ``(B,)`` non-negative integer index of every sample in its bank or
                image set; required exactly when the metric has ``sample_groups``.
        """
        check_activations(activations, num_units=self.num_units, check_values=self.validate_args)
        for argument, labels in (("segmentation", segmentation), ("paired_segmentation", paired_segmentation)):
            if labels is None:
                continue
            check_segmentation(
                labels,
                num_concepts=self.num_concepts,
                ignore_index=self.ignore_index,
                batch_size=activations.shape[0],
                check_values=self.validate_args,
                name=argument,
            )
        paired = self._paired_target(segmentation, paired_segmentation)
        device = self.intersection.device
        segmentation = segmentation.to(device)
        activations = activations.detach().to(device)
        groups = None
        if self.sample_groups is not None or sample_index is not None:
            groups = self._groups_of(sample_index, activations.shape[0]).to(device)
            assert paired is not None  # sample groups need a paired metric
        if self.thresholds.ndim == 1 and self._on_pixels_skipped >= _WHOLE_MAPS_STREAK:
            if self._update_on_pixels(activations, segmentation, paired, groups):
                self._on_pixels_skipped = _WHOLE_MAPS_STREAK
                return
            self._on_pixels_skipped = 0  # many candidate rows: the next batches go to the whole maps directly
        else:
            self._on_pixels_skipped += 1
        also = []
        if self.concept_categories is not None:
            # the per-category areas come from pseudo-labels counted in the same call: each map is
            # upsampled and thresholded once
            pseudo, num = category_labels(
                segmentation, self.concept_categories, self.category_unit_area.shape[-1], self.ignore_index
            )
            area_counts = category_counts(self.category_unit_area, num)
            also.append((area_counts, pseudo, num, 0))
            if paired is not None:  # the same rule with the paired labels: the chance IoU's area
                paired_pseudo, _ = category_labels(
                    paired[1], self.concept_categories, self.category_unit_area.shape[-1], self.ignore_index
                )
                paired_area_counts = category_counts(self.category_unit_area, num)
                also.append((paired_area_counts, paired_pseudo, num, 0))
        if groups is not None:
            assert paired is not None
            self._update_grouped(activations, segmentation, paired[1], groups, also)
            self._add_category_areas(also, activations.shape[0], groups)
            return
        _accumulate_whole_maps(
            ConceptCounts(self.intersection, self.unit_area, self.concept_area, self.total),
            activations,
            segmentation,
            self.thresholds.to(device),
            self.num_concepts,
            ignore_index=self.ignore_index,
            max_temporary_bytes=self.max_temporary_bytes,
            paired=paired,
            also=also,
        )
        self._add_category_areas(also, activations.shape[0])

    def _update_on_pixels(
        self,
        activations: Tensor,
        segmentation: Tensor,
        paired: tuple[ConceptCounts, Tensor] | None,
        groups: Tensor | None,
    ) -> bool:
        """Count a batch from the on pixels of the few upsampled rows that can hold one (``(U,)`` thresholds).

        Every state, the group-split and per-category ones included, is added to in place. Returns
        ``False``, having added nothing, where many rows can hold an on pixel (see
        :func:`~lightning_dissect.functional.counts.accumulate_unit_concept_counts`).
        """
        categories = None
        if self.concept_categories is not None:
            split_areas = groups is not None
            categories = CategoryAreaCounts(
                self.concept_categories, self.category_unit_area,
                self.paired_category_unit_area if paired is not None else None,
                self.group_category_unit_area if split_areas else None,
                self.group_paired_category_unit_area if split_areas else None,
            )
        split = None
        if groups is not None:
            split = SampleGroupCounts(
                groups, self.group_intersection, self.group_concept_area,
                self.group_paired_intersection, self.group_paired_concept_area,
            )
        return _accumulate_on_pixels(
            ConceptCounts(self.intersection, self.unit_area, self.concept_area, self.total),
            activations, segmentation, self.thresholds.to(activations.device), self.num_concepts,
            ignore_index=self.ignore_index, max_temporary_bytes=self.max_temporary_bytes, paired=paired, also=(),
            sample_groups=split, category_area=categories,
        )

    def _add_category_areas(self, also: list[Any], batch: int, groups: Tensor | None = None) -> None:
        """Add a batch's per-category unit areas (own, then paired) from its pseudo-label counts.

        ``groups``: the images' sample groups; their areas are also added to the group-split states.
        """
        for (counts, *_), state in zip(also, ("category_unit_area", "paired_category_unit_area")):
            split = getattr(self, f"group_{state}") if groups is not None else None
            add_category_area(getattr(self, state), counts.intersection, batch, split, groups)

    def _groups_of(self, sample_index: Tensor | None, batch: int) -> Tensor:
        """Each sample's group, after checking ``sample_index``."""
        if self.sample_groups is None:
            raise ValueError("`sample_index` given to a UnitConceptIoU built without `sample_groups`")
        if sample_index is None:
            raise ValueError("this UnitConceptIoU was built with `sample_groups`: pass `sample_index`")
        if not isinstance(sample_index, Tensor) or sample_index.dtype.is_floating_point or sample_index.is_complex() \
                or sample_index.dtype == torch.bool:
            raise TypeError("`sample_index` must be an integer tensor (B,)")
        if tuple(sample_index.shape) != (batch,):
            raise ValueError(
                f"`sample_index` must have shape ({batch},), one index per sample, got {_shape(sample_index)}"
            )
        if self.validate_args and batch and int(sample_index.min()) < 0:
            raise ValueError("`sample_index` must be non-negative")
        return sample_groups_of(sample_index, self.sample_groups)

    def _update_grouped(
        self, activations: Tensor, segmentation: Tensor, paired: Tensor, groups: Tensor, also: list[Any]
    ) -> None:
        """Count with concept ``c`` of a sample of group ``g`` as concept ``g * C + c`` of ``G * C``.

        One counting call adds the group-resolved counts into the group states themselves (their
        ``(U, [K,] G, C)`` layout is the ``(U, [K,] G * C)`` the call counts); the totals are their
        sums over groups, as they are after every update.
        """
        g, c = int(self.sample_groups), self.num_concepts  # type: ignore[arg-type]
        sink = g * c  # ignored pixels and (after remapping) nothing else
        shape = (-1,) + (1,) * (segmentation.ndim - 1)

        def remap(labels: Tensor) -> Tensor:
            labels = labels.to(torch.int64)
            moved = labels + (groups.view(shape) * c)
            return moved if self.ignore_index is None else torch.where(labels == self.ignore_index, sink, moved)

        levels = tuple(self.intersection.shape[1:-1])
        units = self.num_units
        dev = self.intersection.device
        states = (self.group_intersection, self.group_concept_area, self.group_paired_intersection,
                  self.group_paired_concept_area)
        if all(state.is_contiguous() for state in states):  # as registered: counted in place
            own = ConceptCounts(self.group_intersection.view(units, *levels, g * c), self.unit_area,
                                self.group_concept_area.view(g * c), self.total)
            other = ConceptCounts(self.group_paired_intersection.view(units, *levels, g * c), self.unit_area,
                                  self.group_paired_concept_area.view(g * c), self.total)
        else:
            own = ConceptCounts(
                torch.zeros(units, *levels, g * c, dtype=torch.int64, device=dev), self.unit_area,
                torch.zeros(g * c, dtype=torch.int64, device=dev), self.total,
            )
            other = ConceptCounts(
                torch.zeros_like(own.intersection), self.unit_area, torch.zeros_like(own.concept_area), self.total,
            )
        _accumulate_whole_maps(
            own, activations, remap(segmentation), self.thresholds.to(dev), g * c,
            ignore_index=sink if self.ignore_index is not None else None,
            max_temporary_bytes=self.max_temporary_bytes, paired=(other, remap(paired)), also=also,
        )
        for counts, grouped, grouped_area, total, total_area in (
            (own, self.group_intersection, self.group_concept_area, self.intersection, self.concept_area),
            (other, self.group_paired_intersection, self.group_paired_concept_area,
             self.paired_intersection, self.paired_concept_area),
        ):
            if counts.intersection.data_ptr() != grouped.data_ptr():  # counted apart: add the split
                grouped += counts.intersection.view(units, *levels, g, c)
                grouped_area += counts.concept_area.view(g, c)
            # the totals are the sums over the groups (the counts of every earlier update included)
            torch.sum(grouped, -2, out=total)
            torch.sum(grouped_area, 0, out=total_area)

    def _paired_target(
        self, segmentation: Tensor, paired_segmentation: Tensor | None
    ) -> tuple[ConceptCounts, Tensor] | None:
        """The paired states and labels of an update, after checking that they go together."""
        if not self.paired:
            if paired_segmentation is not None:
                raise ValueError("`paired_segmentation` given to a UnitConceptIoU built without `paired=True`")
            return None
        if paired_segmentation is None:
            raise ValueError("this UnitConceptIoU was built with `paired=True`: pass `paired_segmentation`")
        if tuple(paired_segmentation.shape[-2:]) != tuple(segmentation.shape[-2:]):
            raise ValueError(
                f"`paired_segmentation` has size {tuple(paired_segmentation.shape[-2:])} but "
                f"`segmentation` {tuple(segmentation.shape[-2:])}; both label the same pixels"
            )
        # the unit areas and the total are shared: the counting adds them to the real counts only
        counts = ConceptCounts(self.paired_intersection, self.unit_area, self.paired_concept_area, self.total)
        return counts, paired_segmentation.to(self.intersection.device)

    def compute(self) -> Tensor:
        """IoU, ``(U, C)`` for ``(U,)`` thresholds or ``(U, K, C)`` for ``(U, K)`` (float32)."""
        return iou_from_counts(self.intersection, self._concept_unit_area(), self.concept_area).float()

    def _concept_unit_area(self, paired: bool = False) -> Tensor:
        """The unit area each concept's IoU uses: ``unit_area``, or per category ``(U, [K,] C)``.

        ``paired``: the area of the chance IoU (per category: against the paired labels).
        """
        if self.concept_categories is None:
            return self.unit_area
        areas = self.paired_category_unit_area if paired else self.category_unit_area
        categories = self.concept_categories.to(self.unit_area.device)
        index = categories.clamp(min=0).expand(*areas.shape[:-1], -1)
        per_concept = torch.gather(areas, -1, index)
        plain = self.unit_area.unsqueeze(-1).expand_as(per_concept)
        return torch.where(categories >= 0, per_concept, plain)

    def counts(self) -> ConceptCounts:
        """The synced raw counts (intersection, unit area, concept area, total pixels).

        Synchronises like ``compute``: under DDP call it on every rank.
        """
        return self._synced_counts("intersection", "concept_area")

    def paired_counts(self) -> ConceptCounts:
        """The synced counts against the paired segmentations (a ``paired`` metric only).

        ``unit_area`` and ``total`` are those of :meth:`counts` (they do not depend on the
        labels), except with ``concept_categories``: then ``unit_area`` is each concept's unit area
        against the paired labels. Synchronises like ``compute``: under DDP call it on every rank.
        """
        if not self.paired:
            raise ValueError("paired_counts() needs a UnitConceptIoU built with `paired=True`")
        return self._synced_counts("paired_intersection", "paired_concept_area")

    def counts_and_paired_counts(self) -> tuple[ConceptCounts, ConceptCounts]:
        """:meth:`counts` and :meth:`paired_counts` from one synchronisation (a ``paired`` metric)."""
        if not self.paired:
            raise ValueError("counts_and_paired_counts() needs a UnitConceptIoU built with `paired=True`")
        return self._synced_counts("intersection", "concept_area", "paired_intersection", "paired_concept_area")

    def group_counts(self) -> GroupCounts:
        """The synced counts split by sample group (a ``sample_groups`` metric only).

        Synchronises like ``compute``: under DDP call it on every rank.
        """
        if self.sample_groups is None:
            raise ValueError("group_counts() needs a UnitConceptIoU built with `sample_groups`")
        names = ["group_intersection", "group_concept_area", "group_paired_intersection", "group_paired_concept_area"]
        if self.concept_categories is not None:
            names += ["group_category_unit_area", "group_paired_category_unit_area"]
        with self.synced_states():
            found = [getattr(self, n).clone() for n in names]
        if self.concept_categories is not None:
            found.append(self.concept_categories.clone())
        return GroupCounts(*found)

    def label_p_values(self, label: Tensor, level: Tensor | None = None) -> Tensor:
        """Per unit, the swap test's p-value that its IoU with concept ``label[u]`` is above chance.

        A ``sample_groups`` metric only (see :mod:`lightning_dissect.functional.chance`); with
        ``(U, K)`` thresholds ``level`` gives each unit's level. Synchronises like ``compute``.

        Examples:
            >>> metric = UnitConceptIoU(1, 2, torch.tensor([0.5]), paired=True, sample_groups=2)
            >>> own = torch.tensor([[[1, 0]], [[0, 1]]])  # concept 1 where the unit fires, in each image
            >>> acts = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 1.0]]]])
            >>> metric.update(acts, own, own.flip(0), sample_index=torch.tensor([0, 1]))
            >>> metric.label_p_values(torch.tensor([1])).tolist()  # 2 groups: the smallest p is 1/4
            [0.25]
        """
        if self.sample_groups is None:
            raise ValueError("label_p_values() needs a UnitConceptIoU built with `sample_groups`")
        if (level is None) != (self.num_levels is None):
            raise ValueError("pass `level` exactly when the metric has (U, K) thresholds")
        return self._label_p_values(level, label)

    def _label_p_values(self, level: Tensor | None, label: Tensor) -> Tensor:
        groups, counts = self.group_counts(), self.counts()
        rows = torch.arange(self.num_units)
        own, other, area = groups.intersection.cpu(), groups.paired_intersection.cpu(), counts.unit_area.cpu()
        label = label.cpu()
        if level is not None:
            level = level.cpu()
            own, other, area = own[rows, level], other[rows, level], area[rows, level]
        if area.ndim == 2:  # a unit area per concept (per-category unit areas): the label's
            area = area[rows, label]
        own_a, other_a = groups.label_unit_areas(label, level, area)
        own_s, other_s = groups.concept_area.cpu()[:, label].T, groups.paired_concept_area.cpu()[:, label].T
        return swap_test_p_values(own[rows, :, label], own_s, other[rows, :, label], other_s, own_a,
                                  paired_unit_area=other_a)

    def _synced_counts(self, *names: str) -> Any:
        """``ConceptCounts`` of each (intersection, concept area) state pair, synced once."""
        with self.synced_states():
            found = tuple(
                ConceptCounts(
                    getattr(self, intersection).clone(),
                    self._concept_unit_area(paired=intersection != "intersection").clone(),
                    getattr(self, concept_area).clone(),
                    self.total.clone(),
                )
                for intersection, concept_area in zip(names[::2], names[1::2])
            )
        return found[0] if len(found) == 1 else found

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

    def plot(
        self,
        val: Tensor | None = None,
        ax: Any = None,
        *,
        concept_names: Sequence[str] | None = None,
        max_units: int = 20,
        max_concepts: int = 16,
        level: int | None = None,
        vmax: float = IOU_SCALE_MAX,
    ) -> tuple[Any, Any]:
        """The unit × concept IoU heatmap of the best units, labelled (TorchMetrics' ``plot``).

        Rows: the ``max_units`` units with the highest best IoU; columns: their best concepts, then
        further concepts with a non-zero IoU, by their best IoU over those units, at most
        ``max_concepts``. Rows and
        columns are ordered so each unit's best concept (outlined) runs down a diagonal. The colour
        scale is the fixed one of every dissection picture, ``0 .. vmax``. Needs matplotlib.

        Args:
            val: IoU ``(U, C)`` or ``(U, K, C)`` (default: :meth:`compute`).
            ax: Axes to draw into (default: a new figure).
            concept_names: Column labels (default: concept indices).
            max_units: Rows shown.
            max_concepts: Columns shown.
            level: With candidate levels, the level to show (default: each unit's best level, the level
                of its best ``(level, concept)`` IoU; every column of a row is at that one level).
            vmax: Top of the colour scale.

        Returns:
            ``(fig, ax)``.

        Examples:
            >>> metric = UnitConceptIoU(num_units=2, num_concepts=3, thresholds=torch.tensor([0.5, 0.5]))
            >>> acts = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
            >>> metric.update(acts, torch.tensor([[[1, 2]]]))
            >>> fig, ax = metric.plot(concept_names=["none", "sky", "tree"])
            >>> [t.get_text() for t in ax.get_xticklabels()], [t.get_text() for t in ax.get_yticklabels()]
            (['sky', 'tree'], ['unit 0', 'unit 1'])
        """
        from lightning_dissect.metrics._plot import figure_and_axes, iou_colormap

        iou = (self.compute() if val is None else val).detach().float().cpu()
        unit_level = None
        if iou.ndim == 3:
            if level is None:  # each unit's row at its best level, chosen as the dissection chooses levels
                unit_level, _ = best_level_and_concept(iou, self.ignore_index)
            else:
                unit_level = torch.full((iou.shape[0],), int(level), dtype=torch.int64)
            iou = iou[torch.arange(iou.shape[0]), unit_level]
        if iou.ndim != 2:
            raise ValueError(f"`val` must be (U, C) or (U, K, C) IoU, got shape {tuple(iou.shape)}")
        names = list(concept_names) if concept_names is not None else [str(c) for c in range(iou.shape[1])]
        if len(names) != iou.shape[1]:
            raise ValueError(f"`concept_names` has {len(names)} names for {iou.shape[1]} concepts")
        best, label = iou.max(1)
        units = sorted(range(iou.shape[0]), key=lambda u: (-float(best[u]), u))[: max(1, max_units)]
        columns: list[int] = []
        for u in units:  # best concepts first, in the order of their best unit
            if int(label[u]) not in columns:
                columns.append(int(label[u]))
        rest = iou[units].amax(0)
        order = sorted(range(iou.shape[1]), key=lambda c: (-float(rest[c]), c))
        columns += [c for c in order if c not in columns and float(rest[c]) > 0]
        columns = columns[: max(1, max_concepts)]
        position = {c: j for j, c in enumerate(columns)}
        units.sort(key=lambda u: (position.get(int(label[u]), len(columns)), -float(best[u]), u))
        values = iou[units][:, columns]
        fig, ax = figure_and_axes(ax, (1.2 + 0.32 * len(columns), 1.4 + 0.28 * len(units)))
        image = ax.imshow(values.numpy(), cmap=iou_colormap(), vmin=0.0, vmax=vmax, aspect="auto",
                          interpolation="nearest")
        ax.set_xticks(range(len(columns)), [names[c] for c in columns], rotation=90)
        p_values = self._label_p_values(unit_level, label) if val is None and self.sample_groups is not None else None
        ax.set_yticks(range(len(units)), [
            f"unit {u}" if p_values is None else f"unit {u} (p {float(p_values[u]):.2g})" for u in units
        ])
        from matplotlib.patches import Rectangle

        for i, u in enumerate(units):
            j = position.get(int(label[u]))
            if j is not None:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#e03131", linewidth=1.5))
        fig.colorbar(image, ax=ax, label="IoU", fraction=0.05, pad=0.03)
        ax.set_title("IoU of each unit with each concept")
        return fig, ax
