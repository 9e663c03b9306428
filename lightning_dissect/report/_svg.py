"""Inline SVG charts for the HTML report: interpretable units per concept, and an IoU heatmap."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

import torch

# the heatmaps' fixed colour scale and row/column order are shared with the TensorBoard pictures
from lightning_dissect.visual.colours import IOU_SCALE_MAX, scale_rgb
from lightning_dissect.visual.visualize import diagonal_order

if TYPE_CHECKING:  # annotations only: the report sits above the result type, never the reverse
    from lightning_dissect.result import LayerDissection

__all__ = [
    "CATEGORY_COLOURS",
    "category_colour",
    "concept_bar_chart",
    "iou_heatmap",
]

#: Bar colours per concept category (gandissect's groups: object, part, material, colour).
CATEGORY_COLOURS = {
    "object": "#4263eb",
    "part": "#e8590c",
    "material": "#2b8a3e",
    "stuff": "#2b8a3e",
    "color": "#ae3ec9",
    "colour": "#ae3ec9",
    "scene": "#1098ad",
    "texture": "#f08c00",
}
_FALLBACK = ("#1098ad", "#f08c00", "#c2255c", "#5c940d", "#7048e8", "#495057")


def category_colour(category: str, order: list[str]) -> str:
    """Return a stable colour for ``category`` (known names fixed, others from a fallback cycle)."""
    if category in CATEGORY_COLOURS:
        return CATEGORY_COLOURS[category]
    unknown = [c for c in order if c not in CATEGORY_COLOURS]
    index = unknown.index(category) if category in unknown else len(unknown)
    return _FALLBACK[index % len(_FALLBACK)]


def _text(x: float, y: float, text: str, **attrs: str) -> str:
    extra = " ".join(f'{k.rstrip("_").replace("_", "-")}="{v}"' for k, v in attrs.items())
    return f'<text x="{x:.1f}" y="{y:.1f}" {extra}>{escape(text)}</text>'


def concept_bar_chart(layer: LayerDissection, categories: list[str]) -> str:
    """Bars of interpretable units per concept, grouped by category (largest group first).

    Returns an ``<svg>`` string, or ``""`` when the layer has no interpretable unit.
    """
    groups: dict[str, dict[str, int]] = {}
    for unit in layer.units:
        if unit.interpretable:
            group = groups.setdefault(unit.category, {})
            group[unit.label] = group.get(unit.label, 0) + 1
    if not groups:
        return ""
    ordered = sorted(groups.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    top = max(max(g.values()) for _, g in ordered)
    bar, gap, group_gap, left, chart_h, top_pad = 22, 6, 26, 40, 150, 22
    label_h = 8 + 6.2 * max(len(name) for _, g in ordered for name in g) * 0.77
    x = left
    parts: list[str] = []
    ticks = sorted({0, top, *([top // 2] if top >= 4 else [])})
    for t in ticks:
        y = top_pad + chart_h - chart_h * t / top
        parts.append(f'<line x1="{left - 6}" x2="{{WIDTH}}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#e3e6ec" stroke-width="1"/>')
        parts.append(_text(left - 10, y + 4, str(t), text_anchor="end", font_size="11",
                           fill="#5b6475"))
    for category, concepts in ordered:
        colour = category_colour(category, categories)
        bars_w = len(concepts) * (bar + gap) - gap
        group_w = max(bars_w, 7.6 * len(category) + 8)
        x += (group_w - bars_w) / 2  # centre the bars under a wide category name
        start = x
        for name, count in sorted(concepts.items(), key=lambda kv: (-kv[1], kv[0])):
            h = chart_h * count / top
            y = top_pad + chart_h - h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar}" height="{h:.1f}" rx="2" '
                f'fill="{colour}"><title>{escape(name)} ({escape(category)}): {count} '
                f'unit{"s" if count != 1 else ""}</title></rect>'
            )
            parts.append(_text(x + bar / 2, y - 5, str(count), text_anchor="middle",
                               font_size="11", fill="#1d2330"))
            lx, ly = x + bar / 2 + 4, top_pad + chart_h + 10
            parts.append(_text(lx, ly, name, text_anchor="end", font_size="12", fill="#1d2330",
                               transform=f"rotate(-55 {lx:.1f} {ly:.1f})"))
            x += bar + gap
        end = x - gap
        by = top_pad + chart_h + label_h + 8
        parts.append(f'<path d="M{start:.1f} {by:.1f} v5 H{end:.1f} v-5" fill="none" '
                     f'stroke="{colour}" stroke-width="1.5"/>')
        parts.append(_text((start + end) / 2, by + 20, category, text_anchor="middle",
                           font_size="12.5", font_weight="600", fill=colour))
        x = end + (group_w - bars_w) / 2 + group_gap
    width = max(x - group_gap + 12, 260)
    height = top_pad + chart_h + label_h + 40
    body = "".join(parts).replace("{WIDTH}", f"{width - 6:.1f}")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        f'aria-label="interpretable units per concept">{body}</svg>'
    )


def _rgb(value: float) -> str:
    """The shared IoU colour scale's colour of ``value`` in [0, 1] (clipped) as CSS ``rgb()``."""
    r, g, b = scale_rgb(value)
    return f"rgb({r},{g},{b})"


def _colour_scale(sx: float, sy: float, scale_h: float, vmax: float, threshold: float | None) -> list[str]:
    """The heatmap's fixed colour scale at ``(sx, sy)``: ``0 .. vmax`` labelled, ``threshold`` marked."""
    parts: list[str] = []
    steps = 25
    for s in range(steps):
        frac = 1 - (s + 0.5) / steps
        parts.append(f'<rect x="{sx}" y="{sy + s * scale_h / steps:.1f}" width="12" '
                     f'height="{scale_h / steps + 0.6:.1f}" fill="{_rgb(frac)}"/>')
    ticks = [round(vmax * k / 5, 6) for k in range(6)]
    for t in ticks:
        ty = sy + scale_h * (1 - t / vmax)
        label = f"≥ {t:g}" if t == ticks[-1] else f"{t:g}"
        parts.append(f'<line x1="{sx + 12}" x2="{sx + 16}" y1="{ty:.1f}" y2="{ty:.1f}" '
                     'stroke="#5b6475" stroke-width="1"/>')
        parts.append(_text(sx + 19, ty + 4, label, font_size="11", fill="#5b6475",
                           class_="scale-tick"))
    if threshold is not None and 0 < threshold < vmax:
        ty = sy + scale_h * (1 - threshold / vmax)
        parts.append(f'<line x1="{sx - 4}" x2="{sx + 16}" y1="{ty:.1f}" y2="{ty:.1f}" '
                     'stroke="#e03131" stroke-width="1.5"><title>interpretability cut-off: IoU > '
                     f'{threshold:g}</title></line>')
        parts.append(_text(sx + 48, ty + 4, "cut-off", font_size="10", fill="#e03131"))
    parts.append(_text(sx + 6, sy - 8, "IoU", text_anchor="middle", font_size="11",
                       fill="#5b6475"))
    return parts


def iou_heatmap(layer: LayerDissection, names: tuple[str, ...], max_units: int = 40,
                max_concepts: int = 40, vmax: float = IOU_SCALE_MAX,
                threshold: float | None = None) -> str:
    """Units × concepts IoU heatmap of the layer's top units as an ``<svg>``.

    Rows: ``layer.top_units(max_units)`` (interpretable first, best label IoU first; none at or
    below its chance IoU); columns: their labels and the other
    concepts that label any unit of the layer, ordered by :func:`diagonal_order` so the
    outlined label cells run down a diagonal. The colour scale is fixed, ``0 .. vmax`` (values
    above ``vmax`` get the top colour), and labelled; ``threshold`` (the interpretability IoU
    cut-off) is marked on it.
    """
    top = layer.top_units(max_units)
    if not top:
        return ""
    index = {u.unit: i for i, u in enumerate(layer.units)}
    iou_all = layer.iou.float()[torch.tensor([index[u.unit] for u in top])]
    units, cols = diagonal_order(top, iou_all, {u.concept_index for u in layer.units}, max_concepts)
    if not cols:
        return ""
    rows = torch.tensor([index[u.unit] for u in units])
    values = layer.iou.float()[rows][:, cols]
    cell, left = 16, 150
    top_y = 14 + 6.6 * max(len(names[c]) for c in cols)
    parts: list[str] = []
    for j, c in enumerate(cols):
        cx, cy = left + j * cell + cell / 2 + 4, top_y - 6
        parts.append(_text(cx, cy, names[c], font_size="11.5", fill="#1d2330",
                           transform=f"rotate(-90 {cx:.1f} {cy:.1f})"))
    for i, u in enumerate(units):
        y = top_y + i * cell
        colour = "#1d2330" if u.interpretable else "#9aa1ad"
        parts.append(_text(left - 8, y + cell - 4, f"unit {u.unit} · {u.label}",
                           text_anchor="end", font_size="11.5", fill=colour))
        for j, c in enumerate(cols):
            v = float(values[i, j])
            parts.append(
                f'<rect x="{left + j * cell}" y="{y}" width="{cell - 1}" height="{cell - 1}" '
                f'fill="{_rgb(v / vmax)}"><title>unit {u.unit} × {escape(names[c])}: '
                f'IoU {v:.3f}</title></rect>'
            )
            if c == u.concept_index:
                parts.append(
                    f'<rect class="label-cell" x="{left + j * cell + 0.5}" y="{y + 0.5}" '
                    f'width="{cell - 2}" height="{cell - 2}" fill="none" stroke="#e03131" '
                    'stroke-width="1.5"/>'
                )
    # the fixed, labelled colour scale
    sx, sy = left + len(cols) * cell + 24, top_y
    scale_h = max(len(units) * cell, 120)
    parts.extend(_colour_scale(sx, sy, scale_h, vmax, threshold))
    width = sx + 90
    height = top_y + max(len(units) * cell, scale_h) + 10
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="IoU heatmap" '
        f'data-vmax="{vmax:g}">' + "".join(parts) + "</svg>"
    )
