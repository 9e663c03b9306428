"""Independent plain NumPy / Python-loop reference implementations of the dissection formulas.

Nothing here calls the package or the torch functions it uses; everything is float64 / exact
integers and written from the definitions in ``docs/math.md``, deliberately slow and simple.
Use small inputs only.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def bilinear_axis(in_size: int, out_size: int) -> list[tuple[int, int, float]]:
    """For every output index: (i0, i1, frac) with align_corners=False, border replicated."""
    out = []
    for dst in range(out_size):
        src = (dst + 0.5) * in_size / out_size - 0.5
        src = max(src, 0.0)
        i0 = int(math.floor(src))
        i0 = min(i0, in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        out.append((i0, i1, src - i0))
    return out


def upsample(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of ``(..., h, w)`` maps to ``(..., height, width)`` with explicit loops."""
    x = np.asarray(x, dtype=np.float64)
    h, w = x.shape[-2:]
    lead = x.shape[:-2]
    flat = x.reshape(-1, h, w)
    out = np.empty((flat.shape[0], height, width), dtype=np.float64)
    rows = bilinear_axis(h, height)
    cols = bilinear_axis(w, width)
    for n in range(flat.shape[0]):
        for y, (y0, y1, fy) in enumerate(rows):
            for xx, (x0, x1, fx) in enumerate(cols):
                top = flat[n, y0, x0] * (1 - fx) + flat[n, y0, x1] * fx
                bottom = flat[n, y1, x0] * (1 - fx) + flat[n, y1, x1] * fx
                out[n, y, xx] = top * (1 - fy) + bottom * fy
    return out.reshape(*lead, height, width)


def pixel_concepts(seg: np.ndarray, b: int, y: int, x: int, ignore_index: int | None) -> set[int]:
    """The set of concepts carried by one pixel (repeats collapse, ignored label dropped)."""
    if seg.ndim == 3:
        labels = [int(seg[b, y, x])]
    else:
        labels = [int(seg[b, layer, y, x]) for layer in range(seg.shape[1])]
    return {c for c in labels if c != ignore_index}


def counts(
    acts: np.ndarray,
    seg: np.ndarray,
    thresholds: np.ndarray,
    num_concepts: int,
    ignore_index: int | None = None,
    upsampled: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Pixel-by-pixel counts of intersection, unit area, concept area and total.

    ``thresholds`` is ``(U,)`` or ``(U, K)``; the unit is on where ``value > threshold``.
    ``upsampled`` may give the float64 upsampled maps ``(B, U, H, W)`` (default: :func:`upsample`).
    """
    acts = np.asarray(acts, dtype=np.float64)
    seg = np.asarray(seg)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    single = thresholds.ndim == 1
    thr = thresholds[:, None] if single else thresholds
    batch, units = acts.shape[:2]
    height, width = seg.shape[-2:]
    values = upsample(acts, height, width) if upsampled is None else upsampled
    levels = thr.shape[1]
    inter = np.zeros((units, levels, num_concepts), dtype=np.int64)
    area = np.zeros((units, levels), dtype=np.int64)
    concept_area = np.zeros(num_concepts, dtype=np.int64)
    total = 0
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                total += 1
                concepts = pixel_concepts(seg, b, y, x, ignore_index)
                for c in concepts:
                    concept_area[c] += 1
                for u in range(units):
                    for k in range(levels):
                        if values[b, u, y, x] > thr[u, k]:
                            area[u, k] += 1
                            for c in concepts:
                                inter[u, k, c] += 1
    if single:
        inter, area = inter[:, 0], area[:, 0]
    return {
        "intersection": inter,
        "unit_area": area,
        "concept_area": concept_area,
        "total": np.int64(total),
    }


def iou(inter: np.ndarray, area: np.ndarray, concept_area: np.ndarray) -> np.ndarray:
    """IoU = I / (A + S - I) entry by entry, 0 where the union is 0."""
    out = np.zeros(inter.shape, dtype=np.float64)
    for index in np.ndindex(*inter.shape):
        i = int(inter[index])
        a = int(area[index[:-1]])
        s = int(concept_area[index[-1]])
        union = a + s - i
        out[index] = i / union if union > 0 else 0.0
    return out


def contingency(
    inter: np.ndarray, area: np.ndarray, concept_area: np.ndarray, total: int
) -> np.ndarray:
    """2x2 tables [[I, A-I], [S-I, N-A-S+I]] entry by entry, int64 ``(..., 2, 2)``."""
    out = np.zeros((*inter.shape, 2, 2), dtype=np.int64)
    for index in np.ndindex(*inter.shape):
        i = int(inter[index])
        a = int(area[index[:-1]])
        s = int(concept_area[index[-1]])
        out[index] = [[i, a - i], [s - i, int(total) - a - s + i]]
    return out


def table_mi_entropy(table: np.ndarray) -> tuple[float, float]:
    """Mutual information and joint entropy (nats) of one 2x2 count table."""
    n = float(table.sum())
    if n == 0:
        return 0.0, 0.0
    p = table.astype(np.float64) / n
    mi = 0.0
    h = 0.0
    for r in range(2):
        for c in range(2):
            if p[r, c] > 0:
                row = p[r, 0] + p[r, 1]
                col = p[0, c] + p[1, c]
                mi += p[r, c] * math.log(p[r, c] / (row * col))
                h -= p[r, c] * math.log(p[r, c])
    return mi, h


def mutual_information(tables: np.ndarray) -> np.ndarray:
    """Mutual information of every 2x2 table in ``(..., 2, 2)``."""
    out = np.zeros(tables.shape[:-2], dtype=np.float64)
    for index in np.ndindex(*out.shape):
        out[index] = table_mi_entropy(tables[index])[0]
    return out


def iqr(tables: np.ndarray) -> np.ndarray:
    """Information quality ratio MI / H_joint of every table, 0 where H_joint is 0."""
    out = np.zeros(tables.shape[:-2], dtype=np.float64)
    for index in np.ndindex(*out.shape):
        mi, h = table_mi_entropy(tables[index])
        out[index] = mi / h if h > 0 else 0.0
    return out


def quantile_rank(q: float, n: int) -> int:
    """1-based rank max(1, ceil(q * N)), with q taken as the decimal it is written as."""
    return max(1, math.ceil(Fraction(str(q)) * n))


def order_statistic(values: np.ndarray, q: float) -> float:
    """The exact level-``q`` order statistic of a 1-D array."""
    flat = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    return float(flat[quantile_rank(q, flat.size) - 1])
