"""How far a unit's IoU is above chance, and how sure that is: the excess and the swap test.

A unit's *chance IoU* is the IoU of its masks against the segmentation of another image (image
``j`` of the bank paired with image ``j - 1``). Two numbers compare a label IoU with it:

* the **excess** ``(IoU − chance) / (1 − chance)``: the share of what is still possible above
  chance that the unit reaches (Cohen's kappa built on IoU): 1 for a mask equal to the concept's
  own mask, about 0 for a mask that knows nothing of the image, whatever the concept's size;
* the **swap test**: the samples are split into ``G`` groups by their index in the bank
  (``index mod G``), and each group's counts are kept against the image's own segmentation and
  against the paired one. If the unit knew nothing of its own image, its own and paired labels
  would be exchangeable, so swapping them in any subset of the groups would give an IoU − chance
  IoU as large as the observed one about as often as not. The p-value is the fraction of the
  ``2^G`` subsets (enumerated exactly, the identity included) whose IoU − chance IoU is at least
  the observed one: a sign-flip randomisation test, exact for its ``2^G`` swaps, never below
  ``2^-G``.

The group counts are sums over samples keyed by each sample's index, so they are the same for
any batch size and any number of processes.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["MAX_SAMPLE_GROUPS", "chance_excess", "sample_groups_of", "smallest_p_value", "swap_test_p_values"]

#: Largest number of sample groups: the swap test enumerates ``2^G`` subsets.
MAX_SAMPLE_GROUPS = 16


def sample_groups_of(sample_index: Tensor, groups: int) -> Tensor:
    """The group of every sample: its index in the bank (or image set) modulo ``groups``.

    Examples:
        >>> sample_groups_of(torch.tensor([0, 5, 12, 13]), 12).tolist()
        [0, 5, 0, 1]
    """
    return torch.remainder(sample_index.to(torch.int64), groups)


def chance_excess(iou: Tensor, chance_iou: Tensor) -> Tensor:
    """``(IoU − chance) / (1 − chance)``: the share of the room above chance a unit reaches.

    1 for a perfect mask, 0 at chance, negative below it; 0 where the chance IoU is 1 (nothing
    is above chance there). Float64.

    Examples:
        >>> excess = chance_excess(torch.tensor([1.0, 0.678, 0.5]), torch.tensor([0.674, 0.668, 0.5]))
        >>> [round(v, 4) for v in excess.tolist()]
        [1.0, 0.0301, 0.0]
    """
    iou, chance = iou.to(torch.float64), chance_iou.to(torch.float64)
    room = 1.0 - chance
    return torch.where(room > 0, (iou - chance) / room.clamp(min=1e-300), torch.zeros_like(room))


@functools.cache
def _membership(width: int) -> Tensor:
    """``(width, 2^width)`` float64: column ``p`` is 1 where subset ``p`` holds the group (bit ``g`` of ``p``)."""
    subsets = torch.arange(1 << width, dtype=torch.int64)
    return ((subsets.unsqueeze(0) >> torch.arange(width).unsqueeze(1)) & 1).to(torch.float64)


def _subset_sums(deltas: Tensor, width: int) -> Tensor:
    """``(n, 2^width)``: for every subset ``p`` of the ``width`` columns of ``deltas``, the sum of its columns."""
    return deltas @ _membership(width)


def _ratio_into(out: Tensor, intersection: Tensor, union: Tensor, lowest_union: Tensor) -> Tensor:
    """The IoU ``intersection / union`` (0 where the union is empty) written into ``out``.

    The rule of :func:`~lightning_dissect.functional.scores.iou_from_counts`. Unions are integers, so
    where every one is positive (``lowest_union``: each unit's smallest) it is the plain division.
    """
    if bool((lowest_union > 0).all()):
        return torch.div(intersection, union, out=out)
    return out.copy_(torch.where(union > 0, intersection / union.clamp(min=1), torch.zeros_like(union)))


def _swap_test_chunk(
    own_i: Tensor, own_s: Tensor, pair_i: Tensor, pair_s: Tensor, own_a: Tensor, pair_a: Tensor
) -> Tensor:
    """How many of the ``2^G`` subsets reach the observed statistic, per unit (rows of the ``(n, G)`` inputs).

    ``own_a`` and ``pair_a``: the unit's area in each group under each pairing.
    """
    groups = own_i.shape[1]
    low = (groups - 1) // 2  # the subsets without the last group, as (2^high, 2^low) outer sums
    d_i, d_u = pair_i - own_i, (pair_a + pair_s - pair_i) - (own_a + own_s - own_i)  # what swapping a group moves
    i_total, j_total = own_i.sum(1, keepdim=True), pair_i.sum(1, keepdim=True)
    u_total = own_a.sum(1, keepdim=True) + own_s.sum(1, keepdim=True) - i_total  # the unions of the identity
    v_total = pair_a.sum(1, keepdim=True) + pair_s.sum(1, keepdim=True) - j_total
    mi_lo, mi_hi = _subset_sums(d_i[:, :low], low), _subset_sums(d_i[:, low : groups - 1], groups - 1 - low)
    mu_lo, mu_hi = _subset_sums(d_u[:, :low], low), _subset_sums(d_u[:, low : groups - 1], groups - 1 - low)
    lo, hi = (lambda t: t.unsqueeze(1)), (lambda t: t.unsqueeze(2))
    # every value below is an integer (exact in float64, in any order of summation) until the two
    # divisions: the statistics are the same floats as those of the plain enumeration of the subsets
    own_iou = torch.add(hi(i_total + mi_hi), lo(mi_lo))
    union = torch.add(hi(u_total + mu_hi), lo(mu_lo))
    own_iou = _ratio_into(own_iou, own_iou, union, (u_total + mu_hi).amin(1) + mu_lo.amin(1))
    other_iou = torch.sub(hi(j_total - mi_hi), lo(mi_lo))
    torch.sub(hi(v_total - mu_hi), lo(mu_lo), out=union)
    other_iou = _ratio_into(other_iou, other_iou, union, (v_total - mu_hi).amin(1) - mu_lo.amax(1))
    statistic = own_iou.sub_(other_iou).flatten(1)  # (n, 2^(G-1)); column 0 is the identity
    observed = statistic[:, :1]
    # relative tolerance: subsets that tie with the observed value in exact arithmetic count
    least = observed - 1e-12 * observed.abs().clamp(min=1.0)
    # swapping the complement of a subset exchanges the two pairings: the statistic is negated exactly
    return (statistic >= least).sum(1) + (statistic <= -least).sum(1)


def smallest_p_value(concept_area: Tensor, paired_concept_area: Tensor) -> float:
    """The smallest p-value the swap test can give: ``2^-k`` for ``k`` groups that hold samples.

    A group holds samples when its segmentations (own or paired) have any pixel of any concept.
    Swapping an empty group changes nothing, so with ``k`` filled groups at least ``2^(G-k)`` of
    the ``2^G`` subsets tie with the observed statistic.

    Args:
        concept_area: ``(G, C)`` concept pixels of each group's own segmentations.
        paired_concept_area: ``(G, C)`` the same for the paired segmentations.

    Returns:
        ``2^-k`` (``1.0`` when no group holds samples).

    Examples:
        >>> smallest_p_value(torch.tensor([[3, 1], [0, 0], [2, 0]]), torch.zeros(3, 2))
        0.25
    """
    filled = (concept_area.sum(-1) + paired_concept_area.sum(-1)) > 0
    return 2.0 ** -int(filled.sum())


def swap_test_p_values(
    intersection: Tensor,
    concept_area: Tensor,
    paired_intersection: Tensor,
    paired_concept_area: Tensor,
    unit_area: Tensor,
    *,
    chunk: int | None = None,
    paired_unit_area: Tensor | None = None,
) -> Tensor:
    """One-sided p-values of "the label IoU is above the chance IoU", by swapping groups' pairings.

    For every unit, group ``g`` holds the unit's intersection with its label and the label's area
    in the group's images (``intersection[..., g]``, ``concept_area[..., g]``) and the same
    against the paired images' segmentations. The statistic is ``IoU − chance IoU`` from the
    sums over groups; each of the ``2^G`` subsets of groups swaps own and paired counts in its
    groups. The p-value is the share of subsets whose statistic is at least the observed one.
    Swapping every group exchanges the two pairings and negates the statistic, so half of the
    subsets are evaluated and each also stands for its complement; the counts are integers (exact
    in float64), so the statistics are the same floats as those of the plain enumeration.

    Args:
        intersection: ``(..., G)`` counts against each image's own segmentation.
        concept_area: ``(..., G)`` the label's pixels in the own segmentations.
        paired_intersection: ``(..., G)`` counts against the paired segmentations.
        paired_concept_area: ``(..., G)`` the label's pixels in the paired segmentations.
        unit_area: ``(...)`` the unit's pixels over all groups (shared by both pairings), or with
            ``paired_unit_area`` ``(..., G)`` its area in each group against the own segmentations.
        chunk: Units evaluated at a time (bounds the memory to ``chunk · 2^(G-1)`` values; default:
            about ``2^17`` values).
        paired_unit_area: ``(..., G)`` the unit's area in each group against the paired
            segmentations, where the area depends on the labels (per-category unit areas): a
            swapped group then brings its paired area into the own IoU, and its own area into the
            chance IoU.

    Returns:
        ``(...)`` float64 p-values in ``[2^-G, 1]``, on the CPU.

    Examples:
        A unit that matches its own images in all of 4 groups: only the identity is as extreme.

        >>> own = torch.tensor([[10.0, 10.0, 10.0, 10.0]])
        >>> other = torch.tensor([[2.0, 3.0, 1.0, 2.0]])
        >>> area = torch.tensor([[10.0, 10.0, 10.0, 10.0]])
        >>> swap_test_p_values(own, area, other, area, torch.tensor([40.0])).tolist()
        [0.0625]
        >>> swap_test_p_values(other, area, own, area, torch.tensor([40.0])).tolist()  # below chance
        [1.0]
    """
    groups = intersection.shape[-1]
    if not 1 <= groups <= MAX_SAMPLE_GROUPS:
        raise ValueError(f"the swap test takes 1 to {MAX_SAMPLE_GROUPS} groups, got {groups}")
    lead = intersection.shape[:-1]
    own_i, own_s, pair_i, pair_s = (
        t.reshape(-1, groups).to("cpu", torch.float64)
        for t in (intersection, concept_area, paired_intersection, paired_concept_area)
    )
    if paired_unit_area is None:  # one area for both pairings: written in the first group's column
        own_a = torch.zeros_like(own_i)
        own_a[:, 0] = unit_area.reshape(-1).to("cpu", torch.float64)
        pair_a = own_a
    else:
        own_a, pair_a = (t.reshape(-1, groups).to("cpu", torch.float64) for t in (unit_area, paired_unit_area))
    if chunk is None:  # about 2^17 statistics at a time: the working set stays in the cache
        chunk = max(1, (1 << 17) >> (groups - 1))
    out = torch.empty(own_i.shape[0], dtype=torch.float64)
    for start in range(0, own_i.shape[0], chunk):
        part = slice(start, start + chunk)
        reached = _swap_test_chunk(own_i[part], own_s[part], pair_i[part], pair_s[part], own_a[part], pair_a[part])
        out[part] = reached.to(torch.float64) / (1 << groups)
    return out.reshape(lead)
