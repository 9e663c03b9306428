"""From counts to a labelled layer: thresholds chosen, labels, IoU, interpretability (vectorised)."""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from lightning_dissect.config import DissectionConfig
from lightning_dissect.functional.chance import smallest_p_value, swap_test_p_values
from lightning_dissect.functional.counts import ConceptCounts
from lightning_dissect.functional.scores import best_level_and_concept, iou_from_counts, iqr_from_counts, iqr_of_table
from lightning_dissect.interpretability import SmallSampleWarning
from lightning_dissect.metrics.unit_concept_iou import GroupCounts
from lightning_dissect.result import LayerDissection, UnitDissection
from lightning_dissect.vocabulary import ConceptVocabulary

__all__ = ["chosen_thresholds", "netdissect_label", "summarise_layer"]


def _without_unlabeled(scores: Tensor, ignore_index: int | None) -> Tensor:
    """A copy where the "no label" concept is below every real concept (never a unit's label)."""
    scores = scores.clone()
    if ignore_index is not None and 0 <= ignore_index < scores.shape[-1]:
        scores[..., ignore_index] = -1.0
    return scores


def netdissect_label(iou: Tensor, vocabulary: ConceptVocabulary) -> Tensor:
    """Each unit's label with NetDissect-Lite's conventions, from its ``(U, C)`` IoU.

    NetDissect-Lite picks the best concept of every category (the first one on a tie), then the
    best category (the last one, in category order, on a tie). A unit whose IoU is 0 with every
    concept gets the "no label" entry (NetDissect-Lite's label 0, ``-``). Categories are in the
    order of :attr:`~lightning_dissect.vocabulary.ConceptVocabulary.category_names`.

    Examples:
        >>> from lightning_dissect.vocabulary import ConceptVocabulary
        >>> vocabulary = ConceptVocabulary(("-", "sky", "red", "blue"), ("none", "object", "colour", "colour"))
        >>> iou = torch.tensor([[0.0, 0.3, 0.3, 0.1], [0.0, 0.1, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0]])
        >>> netdissect_label(iou, vocabulary).tolist()  # tie: the later category; within one: the first
        [1, 2, 0]
    """
    from lightning_dissect.functional.category_area import concept_category_index

    scores = _without_unlabeled(iou.double(), vocabulary.unlabeled_index)
    category = concept_category_index(vocabulary.categories, vocabulary.category_names).to(scores.device)
    concepts = scores.shape[1]
    best = scores.max(1, keepdim=True).values
    key = category.double() * (concepts + 1) + (concepts - torch.arange(concepts, device=scores.device))
    chosen = torch.where(scores == best, key.expand_as(scores), torch.full_like(scores, -1.0)).argmax(1)
    if vocabulary.unlabeled_index is not None:
        chosen = torch.where(best[:, 0] > 0, chosen, torch.full_like(chosen, vocabulary.unlabeled_index))
    return chosen


def _iqr_choice(
    cfg: DissectionConfig, source: ConceptCounts, ignore_index: int | None
) -> tuple[Tensor, Tensor]:
    """``"iqr"`` mode: per unit, the ``(level, concept)`` with the best IQR on ``source``."""
    iqr = iqr_from_counts(source.intersection, source.unit_area, source.concept_area, source.total)
    fraction = source.concept_area.double() / max(1, int(source.total))
    iqr = iqr.masked_fill((fraction < cfg.min_concept_fraction).view(1, 1, -1), 0.0)
    # a dead unit (all IQRs 0) never gets the "no label" label
    return best_level_and_concept(iqr, ignore_index)


def chosen_thresholds(
    cfg: DissectionConfig, thresholds: Tensor, selection_counts: ConceptCounts, ignore_index: int | None
) -> Tensor:
    """``"iqr"`` mode with a selection set: each unit's ``(U,)`` threshold at the level chosen on it.

    Counting the dissection set at these alone gives the counts that :func:`summarise_layer` reads
    at the chosen levels of ``(U, K)`` counts (the same integers), at the cost of one threshold.
    """
    level, _ = _iqr_choice(cfg, selection_counts, ignore_index)
    rows = torch.arange(thresholds.shape[0], device=thresholds.device)
    return thresholds[rows, level.to(thresholds.device)].contiguous()


def _unit_iqr(counts: ConceptCounts, level: Tensor | None, label: Tensor) -> Tensor:
    """Each unit's IQR at its level and label, from its integer counts (:func:`iqr_of_table`: reproducible)."""
    rows = torch.arange(label.shape[0])
    intersection, unit_area = counts.intersection.cpu(), counts.unit_area.cpu()
    if level is not None:
        intersection, unit_area = intersection[rows, level], unit_area[rows, level]
    i = intersection[rows, label].tolist()
    a = (unit_area[rows, label] if unit_area.ndim == 2 else unit_area).tolist()
    s = counts.concept_area.cpu()[label].tolist()
    n = int(counts.total)
    return torch.tensor([iqr_of_table(*cell, n) for cell in zip(i, a, s)], dtype=torch.float64)


def _label_p_values(
    groups: GroupCounts, counts: ConceptCounts, level: Tensor | None, label: Tensor
) -> Tensor:
    """Each unit's swap-test p-value at its level and label (see :mod:`lightning_dissect.functional.chance`)."""
    rows = torch.arange(label.shape[0])
    own, other = groups.intersection.cpu(), groups.paired_intersection.cpu()
    area = counts.unit_area.cpu()
    # (U, G): the unit's counts with its label (at its level), per group, gathered in one indexing
    if level is not None:
        own_i, other_i, area = own[rows, level, :, label], other[rows, level, :, label], area[rows, level]
    else:
        own_i, other_i = own[rows, :, label], other[rows, :, label]
    if area.ndim == 2:  # a unit area per concept (per-category unit areas): the label's
        area = area[rows, label]
    # per-category unit areas: the label's category in each group, against the own and the paired labels
    own_a, other_a = groups.label_unit_areas(label, level, area)
    own_s, other_s = groups.concept_area.cpu()[:, label].T, groups.paired_concept_area.cpu()[:, label].T
    return swap_test_p_values(own_i, own_s, other_i, other_s, own_a, paired_unit_area=other_a)


def _p_floor(groups: GroupCounts, cfg: DissectionConfig) -> float:
    """The smallest p-value this sample can give; warns when it is above the rule's ``max_p_value``."""
    floor = smallest_p_value(groups.concept_area.cpu(), groups.paired_concept_area.cpu())
    rule = cfg.rule()
    if rule.name == "significant" and floor > rule.max_p_value:
        warnings.warn(
            f"the sample fills only {round(-math.log2(floor))} sample groups, so no unit can reach "
            f"p <= {rule.max_p_value:g} (`max_p_value`); units at the smallest attainable p-value "
            f"({floor:g}) count as significant. Dissect at least {cfg.chance_groups} samples for the stated level.",
            SmallSampleWarning,
            stacklevel=2,
        )
    return floor


def _unit_records(
    vocabulary: ConceptVocabulary,
    label: Tensor,
    unit_iou: Tensor,
    unit_iqr: Tensor,
    unit_thresholds: Tensor,
    interpretable: Tensor,
    label_chance: Tensor | None,
    p_value: Tensor | None,
    topk: tuple[Tensor, Tensor],
) -> list[UnitDissection]:
    """One :class:`UnitDissection` per unit, from the per-unit values :func:`summarise_layer` chose."""
    units = label.shape[0]
    unit_chance = label_chance.tolist() if label_chance is not None else [None] * units
    unit_p = p_value.tolist() if p_value is not None else [None] * units
    top_values, top_indices = (t.cpu().tolist() for t in topk)
    names, categories = vocabulary.names, vocabulary.categories
    return [
        UnitDissection(
            unit=u,
            label=names[c],
            concept_index=c,
            category=categories[c],
            iou=i,
            iou_iqr=q,
            level=t,
            interpretable=bool(ok),
            chance_iou=ch,
            top_images=[{"index": int(j), "maxact": float(v)} for v, j in zip(top_values[u], top_indices[u])],
            p_value=pv,
        )
        for u, c, i, q, t, ok, ch, pv in zip(
            range(units),
            label.tolist(),
            unit_iou.tolist(),
            unit_iqr.tolist(),
            unit_thresholds.tolist(),
            interpretable.tolist(),
            unit_chance,
            unit_p,
        )
    ]


def summarise_layer(
    name: str,
    cfg: DissectionConfig,
    vocabulary: ConceptVocabulary,
    thresholds: Tensor,
    counts: ConceptCounts,
    *,
    chance_counts: ConceptCounts | None = None,
    selection_counts: ConceptCounts | None = None,
    group_counts: GroupCounts | None = None,
    topk: tuple[Tensor, Tensor],
) -> LayerDissection:
    """Label every unit of one layer from its counts (see docs/math.md for the rules)."""
    ignore_index = vocabulary.unlabeled_index
    iou = iou_from_counts(counts.intersection, counts.unit_area, counts.concept_area)
    chance_iou = None
    if chance_counts is not None:
        chance_iou = iou_from_counts(chance_counts.intersection, chance_counts.unit_area, chance_counts.concept_area)
    units = thresholds.shape[0]
    rows = torch.arange(units)
    if cfg.threshold_mode == "iqr":
        level, label = _iqr_choice(cfg, selection_counts if selection_counts is not None else counts, ignore_index)
        level, label = level.cpu(), label.cpu()
        unit_thresholds = thresholds.cpu()[rows, level]
        # counts made at the chosen levels only (levels chosen on a selection set) have no level axis
        at_levels = counts.intersection.ndim == 3
        iou = iou.cpu()[rows, level] if at_levels else iou.cpu()
        if chance_iou is not None:
            chance_iou = chance_iou.cpu()[rows, level] if at_levels else chance_iou.cpu()
    else:
        unit_thresholds = thresholds.cpu()
        iou = iou.cpu()
        chance_iou = chance_iou.cpu() if chance_iou is not None else None
        if cfg.preset == "netdissect":
            label = netdissect_label(iou, vocabulary)
        else:
            label = _without_unlabeled(iou, ignore_index).argmax(1)
    unit_iou = iou[rows, label]
    at_level = level if cfg.threshold_mode == "iqr" and counts.intersection.ndim == 3 else None
    unit_iqr = _unit_iqr(counts, at_level, label)
    label_chance = chance_iou[rows, label] if chance_iou is not None else None
    p_value, p_floor = None, None
    if group_counts is not None:
        p_value = _label_p_values(group_counts, counts, at_level, label)
        p_floor = _p_floor(group_counts, cfg)
    interpretable = cfg.rule().mask(unit_iou, label_chance, unit_iqr, p_value, p_floor=p_floor)
    records = _unit_records(
        vocabulary, label, unit_iou, unit_iqr, unit_thresholds, interpretable, label_chance, p_value, topk
    )
    return LayerDissection(name, records, iou.float(), chance_iou.float() if chance_iou is not None else None)
