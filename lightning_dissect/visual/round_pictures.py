"""The pictures of a dissection round: unit strips, the labelled IoU heatmap, units by round.

Every function returns a ``uint8 (3, H, W)`` tensor drawn with :mod:`lightning_dissect.visual.visualize`;
the colours come from :mod:`lightning_dissect.visual.colours`. :mod:`lightning_dissect.loggers.rounds`
puts them into a round's content, which each logger's writer then receives.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from lightning_dissect._utils.text import plural
from lightning_dissect.result import DissectionResult, LayerDissection, UnitDissection
from lightning_dissect.visual._font import draw_text, text_size
from lightning_dissect.visual.colours import IOU_SCALE_MAX, concept_colour
from lightning_dissect.visual.visualize import (
    diagonal_order,
    enlarge,
    image_strip,
    labelled_heatmap,
    legend_image,
    stack_rows,
    text_image,
)

__all__ = [
    "NO_UNITS",
    "segmenter_palette",
    "units_by_round_concepts",
    "units_by_round_image",
    "iou_heatmap_image",
    "unit_strip",
    "unit_strip_grid",
    "unit_label_lines",
    "no_units_image",
]

_INK = (29, 35, 48)
_GREY = (140, 146, 158)  # a unit that is not interpretable
_FONT_SCALE = 2  # 14 pixel text: legible at TensorBoard's default image size
STRIP_FONT_SCALE = 4  # 28 pixel headers: a strip grid is shown at about half size

#: The units-by-round map is at most this tall (rows get thinner for wide layers) and at least
#: this wide (columns get wider for few rounds), so that one round of a 256-unit layer is not a
#: 1-pixel column 1,536 pixels tall.
UNITS_BY_ROUND_MAX_HEIGHT = 512
UNITS_BY_ROUND_MIN_WIDTH = 240

#: What an empty picture says.
NO_UNITS = "No unit has an IoU above\nits chance IoU this round."


def no_units_image() -> Tensor:
    """The picture shown in place of strips or a heatmap when no unit is above its chance IoU."""
    return text_image(NO_UNITS)


def segmenter_palette(segmenter: Any) -> dict[str, list[int]] | None:
    """Concept colours of a segmenter that has them (the scene world's), else ``None``."""
    world = getattr(segmenter, "world", None)
    palette = getattr(world, "palette", None)
    vocabulary = getattr(segmenter, "vocabulary", None)
    if palette is None or vocabulary is None:
        return None
    rgb = ((palette.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return {name: rgb[i].tolist() for i, name in enumerate(vocabulary.names)}


def units_by_round_concepts(entries: Sequence[Mapping[str, Any]], layer: str) -> list[str]:
    """The concepts that label a unit of ``layer`` in any of the rounds ``entries``, by name.

    Examples:
        >>> entries = [{"layers": {"l": {"labels": ["sky", ""]}}}, {"layers": {"l": {"labels": ["", "tree"]}}}]
        >>> units_by_round_concepts(entries, "l")
        ['sky', 'tree']
    """
    return sorted({label for e in entries if layer in e["layers"] for label in e["layers"][layer]["labels"] if label})


def units_by_round_image(
    entries: Sequence[Mapping[str, Any]],
    layer: str,
    palette: Mapping[str, Sequence[int]] | None = None,
    cell: int = 6,
    legend: bool = True,
) -> Tensor:
    """Units (rows) × rounds (columns), each cell coloured by the unit's label (dark: none).

    Rows are ``cell`` pixels tall, thinner (down to 1 pixel) when the map would be taller than
    :data:`UNITS_BY_ROUND_MAX_HEIGHT`; columns share at least :data:`UNITS_BY_ROUND_MIN_WIDTH`
    pixels (and half the map's height), at least 2 pixels each, so the picture keeps a readable
    size and aspect from the first round on. The map is the picture's top-left corner, with a
    caption under it (``rows: N units · columns: M rounds``); with ``legend``, a legend of the
    concepts that occur (colour swatch and name, :func:`units_by_round_concepts`) is drawn to its
    right.

    Examples:
        >>> entries = [{"layers": {"l": {"labels": ["sky"] + [""] * 255}}}]
        >>> units_by_round_image(entries, "l", legend=False).shape  # one round of 256 units
        torch.Size([3, 538, 256])
    """
    columns = [e["layers"][layer]["labels"] for e in entries if layer in e["layers"]]
    units = max(len(c) for c in columns)
    img = torch.full((3, units, len(columns)), 40, dtype=torch.uint8)
    for j, labels in enumerate(columns):
        for i, label in enumerate(labels):
            if label:
                img[:, i, j] = concept_colour(label, palette)
    row_h = max(1, min(cell, UNITS_BY_ROUND_MAX_HEIGHT // max(1, units)))
    map_w = max(UNITS_BY_ROUND_MIN_WIDTH, units * row_h // 2)
    col_w = max(2, -(-map_w // len(columns)))  # wide columns for few rounds
    grid = img.repeat_interleave(row_h, 1).repeat_interleave(col_w, 2)
    caption = f"rows: {plural(units, 'unit')} · columns: {plural(len(columns), 'round')}"
    text_h, text_w = text_size(caption, _FONT_SCALE)
    body = torch.full((3, grid.shape[1] + 8 + text_h, max(grid.shape[2], text_w)), 255, dtype=torch.uint8)
    body[:, : grid.shape[1], : grid.shape[2]] = grid
    draw_text(body, caption, 0, grid.shape[1] + 6, _INK, _FONT_SCALE)
    if not legend:
        return body
    items = [(name, concept_colour(name, palette).tolist()) for name in units_by_round_concepts(entries, layer)]
    key = legend_image(items, title="concepts (dark: none)", max_height=max(grid.shape[1], 120))
    height = max(body.shape[1], key.shape[1])
    out = torch.full((3, height, body.shape[2] + 8 + key.shape[2]), 255, dtype=torch.uint8)
    out[:, : body.shape[1], : body.shape[2]] = body
    out[:, : key.shape[1], body.shape[2] + 8 :] = key
    return out


def iou_heatmap_image(
    layer: LayerDissection,
    names: Sequence[str],
    units: Sequence[UnitDissection],
    max_concepts: int = 16,
    vmax: float = IOU_SCALE_MAX,
) -> Tensor | None:
    """The labelled IoU heatmap of ``units`` (rows) × concepts (columns), or ``None`` without units.

    Columns: the labels of ``units``, then other concepts that label an interpretable unit of the
    layer, at most ``max_concepts``; rows and columns in
    :func:`~lightning_dissect.visual.visualize.diagonal_order`, so the outlined label cells run down a
    diagonal. Rows are named ``unit <n>`` (grey: not interpretable); the colour scale is fixed,
    ``0 .. vmax``.
    """
    if not units:
        return None
    index = {u.unit: i for i, u in enumerate(layer.units)}
    iou = layer.iou.float()
    chosen = iou[torch.tensor([index[u.unit] for u in units])]
    candidates = {u.concept_index for u in layer.units if u.interpretable}
    rows, cols = diagonal_order(list(units), chosen, candidates, max(max_concepts, 1))
    values = iou[torch.tensor([index[u.unit] for u in rows])][:, cols]
    position = {c: j for j, c in enumerate(cols)}
    marks = [(i, position[u.concept_index]) for i, u in enumerate(rows) if u.concept_index in position]
    return labelled_heatmap(
        values,
        [f"unit {u.unit}" for u in rows],
        [names[c] for c in cols],
        vmax=vmax,
        marks=marks,
        row_colours=[(29, 35, 48) if u.interpretable else (140, 146, 158) for u in rows],
    )


def unit_strip(images: Tensor) -> Tensor:
    """One unit's frames ``(k, 3, h, w)`` side by side; frames under 96 px are enlarged (nearest).

    Examples:
        >>> unit_strip(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape[1]
        96
    """
    return image_strip(list(enlarge(images)))


def unit_label_lines(unit: UnitDissection) -> list[str]:
    """The label of a unit's strip row, one part each: unit, concept, IoU, chance IoU, excess, p-value.

    The excess over chance and the p-value against chance are shown where the p-value was measured.

    Examples:
        >>> u = UnitDissection(12, "sky", 1, "material", 0.2312, 0.1, 1.0, False, 0.1416)
        >>> unit_label_lines(u)
        ['unit 12', 'sky', 'IoU 0.231', 'chance 0.142', 'not interpretable']
        >>> u.p_value = 0.000244
        >>> unit_label_lines(u)[3:]
        ['chance 0.142', 'excess 0.104', 'p 0.00024', 'not interpretable']
    """
    chance = "–" if unit.chance_iou is None else f"{unit.chance_iou:.3f}"
    lines = [f"unit {unit.unit}", unit.label, f"IoU {unit.iou:.3f}", f"chance {chance}"]
    if unit.p_value is not None and unit.excess is not None:
        lines += [f"excess {unit.excess:.3f}", f"p {unit.p_value:.2g}"]
    return lines if unit.interpretable else [*lines, "not interpretable"]


def unit_strip_grid(result: DissectionResult, layer: str, units: Sequence[int]) -> Tensor | None:
    """The :func:`unit_strip` of each of ``units`` that has frames, top to bottom (``None``: none has).

    Row ``i`` is the ``i``-th of ``units`` with frames, under a header line that labels it with
    :func:`unit_label_lines` joined by `` · `` (grey for a unit that is not interpretable), so that
    the picture explains itself without the text tab. The header's font is
    :data:`STRIP_FONT_SCALE` (28 pixels): TensorBoard shows a strip grid about half size, where it
    still reads as 14 pixel text. Rows are separated by 2 white pixels.
    """
    strips = result.unit_images.get(layer, {})
    records = result.layers[layer].units
    shown = [u for u in units if u in strips]
    if not shown:
        return None
    rows = []
    for u in shown:
        strip = unit_strip(strips[u])
        header = " · ".join(unit_label_lines(records[u]))
        text_h, text_w = text_size(header, STRIP_FONT_SCALE)
        row = torch.full((3, text_h + 4 + strip.shape[1], max(strip.shape[2], text_w + 8)), 255, dtype=torch.uint8)
        draw_text(row, header, 4, 2, _INK if records[u].interpretable else _GREY, STRIP_FONT_SCALE)
        row[:, text_h + 4 :, : strip.shape[2]] = strip
        rows.append(row)
    return stack_rows(rows, gap=2)
