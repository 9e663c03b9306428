"""A unit's area per concept category, as NetDissect-Lite counts it.

Broden merges datasets that each label only some categories (objects, parts, materials, colours,
scenes, textures). NetDissect-Lite therefore counts a unit's area in an image toward a category
only when the unit's active pixels there overlap a label of that category:

``area[u, g] = sum over images i of  A_u(i) * [ exists p : a_u(p) > t_u and some label of p in g ]``

where ``A_u(i)`` is the number of the unit's active pixels in image ``i``. The IoU of concept ``c``
of category ``g`` is then ``I / (area[u, g] + S_c - I)``. Image-level labels (scenes, textures)
are whole-image label maps, so they overlap every active pixel.

Both factors come from one count of pseudo-concepts: for image ``b`` of a batch and category
``g`` the label ``1 + b * G + g`` (on each pixel that carries a label of ``g``), and ``1 + B * G +
b`` on every pixel of image ``b``; the counting then gives, per unit, the active pixels of each
(image, category) pair and of each image, exact integers like every other count.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_dissect.functional.counts import (
    DEFAULT_MAX_TEMPORARY_BYTES,
    ConceptCounts,
    accumulate_unit_concept_counts,
)

__all__ = [
    "accumulate_category_unit_area",
    "add_category_area",
    "category_counts",
    "category_labels",
    "concept_category_index",
]


def concept_category_index(categories: tuple[str, ...] | list[str], names: tuple[str, ...] | list[str]) -> Tensor:
    """``(C,)`` int64: each concept's position in ``names`` (its category), -1 for a category not listed.

    Examples:
        >>> concept_category_index(("none", "object", "colour", "object"), ("colour", "object")).tolist()
        [-1, 1, 0, 1]
    """
    position = {name: i for i, name in enumerate(names)}
    return torch.tensor([position.get(c, -1) for c in categories], dtype=torch.int64)


def accumulate_category_unit_area(
    out: Tensor,
    activations: Tensor,
    segmentation: Tensor,
    thresholds: Tensor,
    concept_category: Tensor,
    *,
    ignore_index: int | None = None,
    max_temporary_bytes: int = DEFAULT_MAX_TEMPORARY_BYTES,
) -> None:
    """Add one batch's per-category unit areas into ``out`` (``(U, G)`` or ``(U, K, G)``, int64).

    Args:
        out: The running areas, ``G`` categories.
        activations: ``(B, U, h, w)`` maps.
        segmentation: ``(B, H, W)`` or ``(B, L, H, W)`` labels in ``[0, C)``.
        thresholds: ``(U,)`` or ascending ``(U, K)``.
        concept_category: ``(C,)`` category of each concept in ``[0, G)``, -1 for none.
        ignore_index: The "no label" concept.
        max_temporary_bytes: As for :func:`~lightning_dissect.functional.counts.accumulate_unit_concept_counts`.

    Examples:
        >>> acts = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]]])   # 2 images, 1 unit, 1x2
        >>> seg = torch.tensor([[[[1, 2]]], [[[2, 2]]]])            # concept 1: object, 2: part
        >>> area = torch.zeros(1, 2, dtype=torch.int64)
        >>> accumulate_category_unit_area(area, acts, seg, torch.tensor([0.5]), torch.tensor([-1, 0, 1]))
        >>> area.tolist()  # object: only image 0 (1 pixel); part: image 1 (2 pixels)
        [[1, 2]]
    """
    batch, units = activations.shape[:2]
    if batch == 0 or units == 0:
        return
    pseudo, num = category_labels(segmentation.to(activations.device), concept_category, out.shape[-1], ignore_index)
    counts = category_counts(out, num)
    accumulate_unit_concept_counts(
        counts, activations, pseudo, thresholds, num, ignore_index=0, max_temporary_bytes=max_temporary_bytes,
    )
    add_category_area(out, counts.intersection, batch)


def category_labels(
    segmentation: Tensor, concept_category: Tensor, groups: int, ignore_index: int | None
) -> tuple[Tensor, int]:
    """The pseudo-labels ``(B, L + 1, H, W)`` of a batch and their number (see the module docs).

    Count them (label 0 ignored) beside the concepts, then add the areas with :func:`add_category_area`.

    Examples:
        >>> seg = torch.tensor([[[[1, 2]]], [[[2, 0]]]])  # 2 images, concept 1: category 0, 2: category 1
        >>> pseudo, num = category_labels(seg, torch.tensor([-1, 0, 1]), 2, ignore_index=0)
        >>> pseudo[:, :, 0].tolist(), num  # (image b, category g) -> 1 + 2b + g; whole image b -> 5 + b
        ([[[1, 2], [5, 5]], [[4, 0], [6, 6]]], 7)
    """
    if segmentation.ndim == 3:
        segmentation = segmentation.unsqueeze(1)
    batch = segmentation.shape[0]
    device = segmentation.device
    category = concept_category.to(device)
    labels = segmentation.to(dtype=torch.int64)
    code = category[labels.clamp(0, category.numel() - 1)]
    image = torch.arange(batch, device=device).view(batch, 1, 1, 1)
    keep = code >= 0
    if ignore_index is not None:
        keep &= labels != ignore_index
    pseudo = torch.where(keep, 1 + image * groups + code, torch.zeros_like(code))
    whole = (1 + batch * groups + image).expand(batch, 1, *labels.shape[-2:])
    return torch.cat([pseudo, whole], 1), 1 + batch * groups + batch


def category_counts(out: Tensor, num: int) -> ConceptCounts:
    """Empty counts of ``num`` pseudo-labels for the thresholds behind ``out`` (``(U, [K,] G)``)."""
    units_levels = tuple(out.shape[:-1])
    device = out.device
    return ConceptCounts(
        torch.zeros(*units_levels, num, dtype=torch.int64, device=device),
        torch.zeros(*units_levels, dtype=torch.int64, device=device),
        torch.zeros(num, dtype=torch.int64, device=device),
        torch.zeros((), dtype=torch.int64, device=device),
    )


def add_category_area(
    out: Tensor,
    intersection: Tensor,
    batch: int,
    group_out: Tensor | None = None,
    sample_group: Tensor | None = None,
) -> None:
    """Add the per-category areas of a batch of ``batch`` images, from its pseudo-label ``intersection``.

    ``group_out`` (``(U, [K,] S, G)``): also add each image's areas to its sample group's row
    (``sample_group``: ``(B,)`` in ``[0, S)``).
    """
    groups = out.shape[-1]
    shape = intersection.shape[:-1]
    per_image_category = intersection[..., 1 : 1 + batch * groups].reshape(*shape, batch, groups)
    per_image = intersection[..., 1 + batch * groups : 1 + batch * groups + batch]
    areas = per_image.unsqueeze(-1) * (per_image_category > 0)
    out += areas.sum(-2)
    if group_out is not None and sample_group is not None:
        group_out.index_add_(group_out.ndim - 2, sample_group.to(device=areas.device, dtype=torch.int64), areas)
