"""Scores from unit–concept counts: IoU, mutual information, information quality ratio.

All functions broadcast: ``intersection`` may be ``(U, C)`` or ``(U, K, C)``, ``unit_area`` then
``(U,)`` or ``(U, K)`` (or of the intersection's shape: an area per concept, as with the
per-category rule), ``concept_area`` ``(C,)``. Computation is in float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "iou_from_counts",
    "contingency_from_counts",
    "mutual_information_from_counts",
    "iqr_from_counts",
    "iqr_of_table",
]


def _broadcast(
    intersection: Tensor, unit_area: Tensor, concept_area: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    i = intersection.to(torch.float64)
    a = unit_area.to(torch.float64)
    if a.ndim < i.ndim:  # one area per unit (and level); else one per concept too
        a = a.unsqueeze(-1)
    s = concept_area.to(torch.float64)
    return i, a, s


def iou_from_counts(intersection: Tensor, unit_area: Tensor, concept_area: Tensor) -> Tensor:
    """``IoU = I / (A + S - I)``, 0 where the union is empty.

    Examples:
        >>> iou_from_counts(torch.tensor([[2, 0]]), torch.tensor([4]), torch.tensor([2, 0]))
        tensor([[0.5000, 0.0000]], dtype=torch.float64)
    """
    i, a, s = _broadcast(intersection, unit_area, concept_area)
    union = a + s - i
    return torch.where(union > 0, i / union.clamp(min=1), torch.zeros_like(union))


def contingency_from_counts(
    intersection: Tensor, unit_area: Tensor, concept_area: Tensor, total: Tensor | int
) -> Tensor:
    """The 2×2 table ``[[I, A−I], [S−I, N−A−S+I]]`` per entry, shape ``(..., 2, 2)`` int64.

    Row 0: unit on, row 1: unit off; column 0: concept present, column 1: absent.

    Examples:
        >>> contingency_from_counts(torch.tensor([[2]]), torch.tensor([3]), torch.tensor([4]), 10)
        tensor([[[[2, 1],
                  [2, 5]]]])
    """
    i = intersection.to(torch.int64)
    a = unit_area.to(torch.int64)
    a = (a.unsqueeze(-1) if a.ndim < i.ndim else a).expand_as(i)
    s = concept_area.to(torch.int64).expand_as(i)
    n = torch.as_tensor(total, dtype=torch.int64, device=i.device)
    on_present, on_absent = i, a - i
    off_present, off_absent = s - i, n - a - s + i
    top = torch.stack([on_present, on_absent], -1)
    bottom = torch.stack([off_present, off_absent], -1)
    return torch.stack([top, bottom], -2)


def _cell_sum(t: Tensor) -> Tensor:
    """The sum of each ``(2, 2)`` table's cells in row-major order, as ``t.sum((-1, -2))`` adds them."""
    return t[..., 0, 0] + t[..., 0, 1] + t[..., 1, 0] + t[..., 1, 1]


def _xlogx_sums(p: Tensor, q: Tensor | None) -> Tensor:
    """``Σ p * log(p / q)`` over each ``(2, 2)`` table, terms with ``p == 0`` left out (``q=None``: ``q = 1``).

    Each term is ``p * log(p / max(q, 1e-300))``, 0 where ``p <= 0``, computed in place over the
    whole ``(..., 2, 2)`` tensor (``log`` sees the same tensor as before, element for element).
    """
    outside = p <= 0
    if q is None:
        ratio = p.masked_fill(outside, 1.0)  # p / 1 is p
    else:
        ratio = torch.div(p, q.clamp_(min=1e-300), out=q).masked_fill_(outside, 1.0)
    return _cell_sum(ratio.log_().mul_(p).masked_fill_(outside, 0.0))


def _joint(
    intersection: Tensor, unit_area: Tensor, concept_area: Tensor, total: Tensor | int
) -> tuple[Tensor, Tensor]:
    """The cell probabilities ``(..., 2, 2)`` of :func:`contingency_from_counts` and their row × column products.

    The table's cells sum to ``total`` exactly (integers), so each cell is divided by ``max(total, 1)``.
    Small reductions and broadcasts over the ``(2, 2)`` axes are slow in torch: they are spelled out
    cell by cell (the same sums and products).
    """
    # integers (as `contingency_from_counts` truncates them), then float64: exact below 2^53, so the
    # cells are the same numbers whether subtracted as int64 or as float64
    i, a, s = (t.to(torch.int64).to(torch.float64) for t in (intersection, unit_area, concept_area))
    a = a.unsqueeze(-1) if a.ndim < i.ndim else a
    n = torch.as_tensor(total, dtype=torch.int64, device=i.device).to(torch.float64)
    shape = torch.broadcast_shapes(i.shape, a.shape, s.shape, n.shape)
    p = torch.empty(*shape, 2, 2, dtype=torch.float64, device=i.device)
    p[..., 0, 0] = i
    torch.sub(a, i, out=p[..., 0, 1])
    torch.sub(s, i, out=p[..., 1, 0])
    torch.add(n - a - s, i, out=p[..., 1, 1])
    divisor = n.clamp(min=1)
    p.div_(divisor if divisor.ndim == 0 else divisor.unsqueeze(-1).unsqueeze(-1))
    rows = (p[..., 0, 0] + p[..., 0, 1], p[..., 1, 0] + p[..., 1, 1])
    cols = (p[..., 0, 0] + p[..., 1, 0], p[..., 0, 1] + p[..., 1, 1])
    q = torch.empty_like(p)
    for r in range(2):
        for c in range(2):
            torch.mul(rows[r], cols[c], out=q[..., r, c])
    return p, q


def mutual_information_from_counts(
    intersection: Tensor, unit_area: Tensor, concept_area: Tensor, total: Tensor | int
) -> Tensor:
    """Mutual information (nats) between "unit on" and "concept present".

    Examples:
        >>> mi = mutual_information_from_counts(
        ...     torch.tensor([[5]]), torch.tensor([5]), torch.tensor([5]), 10)
        >>> round(float(mi), 4)  # perfectly dependent fair bits: log 2
        0.6931
    """
    p, q = _joint(intersection, unit_area, concept_area, total)
    return _xlogx_sums(p, q)


def iqr_from_counts(
    intersection: Tensor, unit_area: Tensor, concept_area: Tensor, total: Tensor | int
) -> Tensor:
    """Information quality ratio ``MI / H(joint)`` in ``[0, 1]``, 0 where the joint entropy is 0.

    Examples:
        >>> iqr = iqr_from_counts(torch.tensor([[5]]), torch.tensor([5]), torch.tensor([5]), 10)
        >>> round(float(iqr), 4)
        1.0
    """
    p, q = _joint(intersection, unit_area, concept_area, total)
    mi = _xlogx_sums(p, q)
    entropy = -_xlogx_sums(p, None)
    return torch.where(entropy > 0, mi / entropy.clamp(min=1e-300), torch.zeros_like(mi))


def iqr_of_table(intersection: int, unit_area: int, concept_area: int, total: int) -> float:
    """The information quality ratio of one unit–concept pair, exactly reproducible from its counts.

    The same value as :func:`iqr_from_counts` (to rounding), computed in plain Python from the four
    integers with a fixed order of operations. Tensor ``log`` kernels may round the last bit
    differently with the thread count or the memory alignment of a run (vectorised and scalar paths
    disagree by an ulp), so the value a result reports comes from here: the same counts give the
    same digits on every run and machine.

    Examples:
        >>> iqr_of_table(5, 5, 5, 10)
        1.0
        >>> iqr_of_table(0, 0, 0, 0)
        0.0
    """
    i, a, s, n = int(intersection), int(unit_area), int(concept_area), int(total)
    if n <= 0:
        return 0.0
    cells = (i, a - i, s - i, n - a - s + i)  # on∧present, on∧absent, off∧present, off∧absent
    rows = (a, n - a)
    cols = (s, n - s)
    mi = 0.0
    entropy = 0.0
    for index, count in enumerate(cells):
        if count <= 0:
            continue
        p = count / n
        row, col = rows[index // 2], cols[index % 2]
        mi += p * math.log(count * n / (row * col))
        entropy -= p * math.log(p)
    return mi / entropy if entropy > 0 else 0.0


def best_level_and_concept(scores: Tensor, ignore_index: int | None = None) -> tuple[Tensor, Tensor]:
    """Per unit, the ``(level, concept)`` of its best score over all candidate levels and concepts.

    The one way a unit's level is chosen from ``(U, K, C)`` scores: the largest score over the
    flattened ``(level, concept)`` grid, ties to the lower level, then the lower concept. The
    ``ignore_index`` concept (the "no label" entry) is never chosen over a real concept, so a dead
    unit (all scores 0) still gets a real concept. The dissection chooses the levels of ``"iqr"``
    mode this way from the IQR; ``UnitConceptIoU.plot`` from the IoU.

    Args:
        scores: ``(U, K, C)``.
        ignore_index: A concept never chosen while another is available.

    Returns:
        ``(level, concept)``, each ``(U,)`` int64.

    Examples:
        >>> scores = torch.tensor([[[0.1, 0.3], [0.2, 0.25]], [[0.0, 0.0], [0.0, 0.0]]])
        >>> best_level_and_concept(scores)
        (tensor([0, 0]), tensor([1, 0]))
        >>> best_level_and_concept(scores, ignore_index=0)[1]
        tensor([1, 1])
    """
    if scores.ndim != 3:
        raise ValueError(f"`scores` must be (U, K, C), got shape {tuple(scores.shape)}")
    scores = scores.clone()
    if ignore_index is not None and 0 <= ignore_index < scores.shape[-1]:
        scores[..., ignore_index] = -1.0
    flat = scores.reshape(scores.shape[0], -1).argmax(1)
    return flat // scores.shape[-1], flat % scores.shape[-1]
