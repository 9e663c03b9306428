"""Picture primitives: masks overlaid on images, image strips, labelled IoU heatmaps, legends, PNG.

Everything returns ``uint8`` tensors ``(3, H, W)`` (TensorBoard's ``add_image`` layout) and needs
no plotting library: labels are drawn with Pillow's built-in scalable font (anti-aliased, no font
file; see ``lightning_dissect.visual._font``), and :func:`encode_png` writes PNG.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, Protocol, Sequence, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_dissect._utils.checks import check_int
from lightning_dissect.visual._font import draw_text, text_size
from lightning_dissect.visual.colours import IOU_SCALE_MAX, scale_colours

__all__ = [
    "to_uint8",
    "overlay_mask",
    "image_strip",
    "stack_rows",
    "as_rgb",
    "enlarge",
    "strip_png",
    "heatmap",
    "labelled_heatmap",
    "legend_image",
    "text_image",
    "diagonal_order",
    "encode_png",
]


_TEXT = (29, 35, 48)  # label ink
_TICK_IN, _TICK_OUT, _TICK_GAP = 4, 3, 8  # colour-bar tick: pixels inside / outside the bar, gap to its number
_MARK = (224, 49, 49)  # outline of a unit's label cell

_BORDER = torch.tensor([255, 221, 0], dtype=torch.uint8)  # light (yellow) inner outline
_OUTLINE = torch.tensor([16, 16, 16], dtype=torch.uint8)  # dark outer outline


def to_uint8(images: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """Map float images in ``value_range`` to ``uint8`` ``[0, 255]``.

    Examples:
        >>> to_uint8(torch.tensor([-1.0, 0.0, 1.0])).tolist()
        [0, 128, 255]
    """
    low, high = value_range
    x = (images.detach().float() - low) / (high - low)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def overlay_mask(image: Tensor, mask: Tensor, dim: float = 0.5) -> Tensor:
    """Dim pixels outside ``mask`` to ``dim`` and outline it with a light and a dark line.

    The outline is two pixels wide: a yellow line on the mask's inner edge and a near-black line
    just outside it, so it stays visible on dark and on light images.

    Args:
        image: ``uint8 (3, H, W)``.
        mask: ``bool (H, W)``.
        dim: Brightness factor outside the mask (the paper: 50 %).

    Examples:
        >>> img = torch.full((3, 6, 6), 200, dtype=torch.uint8)
        >>> m = torch.zeros(6, 6, dtype=torch.bool); m[2:4, 2:4] = True
        >>> out = overlay_mask(img, m)
        >>> out[:, 0, 0].tolist(), out[:, 1, 1].tolist(), out[:, 2, 2].tolist()
        ([100, 100, 100], [16, 16, 16], [255, 221, 0])
    """
    out = image.clone()
    outside = ~mask
    out[:, outside] = (out[:, outside].float() * dim).round().to(torch.uint8)
    m = mask.float()[None, None]
    eroded = -F.max_pool2d(-m, 3, stride=1, padding=1)
    dilated = F.max_pool2d(m, 3, stride=1, padding=1)
    inner = (m - eroded)[0, 0] > 0
    outer = (dilated - m)[0, 0] > 0
    out[:, inner] = _BORDER.to(out.device).view(3, 1)
    out[:, outer] = _OUTLINE.to(out.device).view(3, 1)
    return out


def image_strip(images: Sequence[Tensor] | Tensor, gap: int = 2) -> Tensor:
    """Concatenate ``uint8 (3, H, W)`` images horizontally with white gaps."""
    images = list(images)
    if not images:
        raise ValueError("image_strip needs at least one image")
    h = images[0].shape[1]
    spacer = torch.full((3, h, gap), 255, dtype=torch.uint8, device=images[0].device)
    parts: list[Tensor] = []
    for i, img in enumerate(images):
        if i:
            parts.append(spacer)
        parts.append(img)
    return torch.cat(parts, 2)


def stack_rows(rows: Sequence[Tensor], gap: int = 2) -> Tensor:
    """Stack ``uint8 (3, h_i, w_i)`` rows top to bottom with white gaps; narrower rows are padded white on the right.

    Examples:
        >>> stack_rows([torch.zeros(3, 2, 4, dtype=torch.uint8), torch.zeros(3, 3, 2, dtype=torch.uint8)]).shape
        torch.Size([3, 7, 4])
    """
    rows = list(rows)
    if not rows:
        raise ValueError("stack_rows needs at least one row")
    width = max(r.shape[2] for r in rows)
    gap_row = torch.full((3, gap, width), 255, dtype=torch.uint8, device=rows[0].device)
    parts: list[Tensor] = []
    for i, row in enumerate(rows):
        if i:
            parts.append(gap_row)
        if row.shape[2] < width:
            pad = torch.full((3, row.shape[1], width - row.shape[2]), 255, dtype=torch.uint8, device=row.device)
            row = torch.cat([row, pad], 2)
        parts.append(row)
    return torch.cat(parts, 1)


def as_rgb(images: Tensor) -> Tensor:
    """Grey images (one channel, ``(..., 1, H, W)``) as three equal channels; RGB images as they are.

    Examples:
        >>> as_rgb(torch.zeros(2, 1, 4, 4)).shape, as_rgb(torch.zeros(3, 4, 4)).shape
        (torch.Size([2, 3, 4, 4]), torch.Size([3, 4, 4]))
    """
    if images.shape[-3] == 1:
        return images.expand(*images.shape[:-3], 3, *images.shape[-2:])
    return images


def enlarge(images: Tensor, min_height: int = 96) -> Tensor:
    """Frames ``(..., H, W)`` enlarged by the largest whole factor that keeps ``H`` within ``min_height`` (nearest).

    Small frames (a 32-pixel generator's) become readable in a strip; frames of ``min_height`` or
    more are returned as they are.

    Examples:
        >>> enlarge(torch.zeros(2, 3, 32, 32)).shape, enlarge(torch.zeros(3, 128, 64)).shape
        (torch.Size([2, 3, 96, 96]), torch.Size([3, 128, 64]))
    """
    factor = max(1, min_height // int(images.shape[-2]))
    if factor > 1:
        images = images.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    return images


def strip_png(tiles: Tensor, gap: int = 2) -> bytes | None:
    """One unit's frames ``(k, 3, H, W)`` (or one ``(3, H, W)``) as a PNG strip; ``None`` when ``k`` is 0.

    Examples:
        >>> strip_png(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))[:4], strip_png(torch.zeros(0, 3, 4, 4))
        (b'\\x89PNG', None)
    """
    if tiles.ndim == 3:
        tiles = tiles.unsqueeze(0)
    if tiles.shape[0] == 0:
        return None
    return encode_png(image_strip(list(tiles.to(torch.uint8).cpu()), gap=gap))


def _colormap(x: Tensor) -> Tensor:
    """The shared IoU colour scale (:func:`~lightning_dissect.visual.colours.scale_colours`) of ``x`` in [0, 1]."""
    return scale_colours(x)


def heatmap(values: Tensor, cell: int = 8, vmax: float | None = None) -> Tensor:
    """A ``(rows, cols)`` matrix as a ``uint8 (3, rows*cell, cols*cell)`` colour image.

    Examples:
        >>> heatmap(torch.rand(3, 5), cell=4).shape
        torch.Size([3, 12, 20])
    """
    v = values.detach().float().cpu()
    top = float(v.max()) if vmax is None else vmax
    img = _colormap(v / top if top > 0 else v)
    return img.repeat_interleave(cell, 1).repeat_interleave(cell, 2)


class _Unit(Protocol):
    unit: int
    concept_index: int
    iou: float
    interpretable: bool


_U = TypeVar("_U", bound=_Unit)


def diagonal_order(
    units: Sequence[_U], iou: Tensor, candidates: set[int], max_concepts: int
) -> tuple[list[_U], list[int]]:
    """Order heatmap rows and columns so each unit's label cell lies on a descending diagonal.

    Columns: first the labels of ``units`` (interpretable units' labels first), each concept in
    the order its best unit appears in ``units`` (best IoU first); then the other ``candidates``
    by their largest IoU over the rows; at most ``max_concepts``. Rows: grouped by the column of
    their label, best IoU first within a group; units whose label has no column go last.

    Args:
        units: The rows, best first (anything with ``unit``, ``concept_index``, ``iou`` and
            ``interpretable``, e.g. :class:`~lightning_dissect.result.UnitDissection`).
        iou: ``(len(units), C)`` IoU of the rows.
        candidates: Concept indices that may become columns besides the labels.
        max_concepts: Most columns.

    Returns:
        ``(rows, columns)``.

    Examples:
        >>> from types import SimpleNamespace as U
        >>> units = [U(unit=0, concept_index=2, iou=0.3, interpretable=True),
        ...          U(unit=1, concept_index=1, iou=0.4, interpretable=True)]
        >>> rows, cols = diagonal_order(units, torch.zeros(2, 3), {0}, 3)
        >>> [u.unit for u in rows], cols
        ([1, 0], [1, 2, 0])
    """
    labelled = sorted(units, key=lambda u: (not u.interpretable, -u.iou, u.unit))
    cols: list[int] = []
    for u in labelled:
        if u.concept_index not in cols:
            cols.append(u.concept_index)
    rest = sorted(
        (c for c in candidates if c not in cols), key=lambda c: (-float(iou[:, c].max()), c)
    )
    cols = (cols + rest)[:max_concepts]
    position = {c: j for j, c in enumerate(cols)}
    rows = sorted(
        units,
        key=lambda u: (position.get(u.concept_index, len(cols)), not u.interpretable, -u.iou, u.unit),
    )
    return rows, cols


def _check_scale(scale: Any) -> None:
    scale = check_int(scale, "font_scale", minimum=1)


def labelled_heatmap(
    values: Tensor,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    vmax: float = IOU_SCALE_MAX,
    cell: int = 16,
    marks: Sequence[tuple[int, int]] = (),
    row_colours: Sequence[Sequence[int]] | None = None,
    title: str = "iou",
    font_scale: int = 2,
) -> Tensor:
    """A ``(rows, cols)`` matrix as a labelled colour image with a fixed, labelled colour bar.

    Row labels are drawn left of the grid, column labels above it (vertical, read bottom to top),
    and a colour bar from 0 to ``vmax`` (values above get the top colour, its tick reads
    ``vmax+``) to the right, under ``title``; each tick mark crosses the bar's edge, and its
    number stands 8 pixels clear of it. Cell ``(i, j)`` is the ``cell - 1`` pixel square at
    ``(left + j*cell, top + i*cell)`` (one white pixel between cells); :func:`labelled_heatmap_grid`
    gives ``(top, left)``.

    Args:
        values: ``(rows, cols)`` float matrix.
        row_labels: One label per row (e.g. ``"unit 12"``).
        col_labels: One label per column (e.g. concept names).
        vmax: Top of the colour scale (default :data:`IOU_SCALE_MAX`).
        cell: Cell size in pixels.
        marks: ``(row, col)`` cells outlined in red (e.g. each unit's label).
        row_colours: Ink of each row label (default: dark).
        title: Drawn above the colour bar.
        font_scale: Text size: ``7 * font_scale`` pixel font (2: 14 pixels).

    Returns:
        ``uint8 (3, H, W)`` on a white background.

    Examples:
        >>> img = labelled_heatmap(torch.tensor([[0.1, 0.4]]), ["unit 3"], ["sky", "grass"])
        >>> img.dtype, img.shape[0]
        (torch.uint8, 3)
    """
    v = _check_heatmap_args(values, row_labels, col_labels, vmax, cell, font_scale)
    rows, cols = v.shape
    s = font_scale
    top, left = labelled_heatmap_grid(row_labels, col_labels, font_scale=s)
    glyph_h = text_size("0", s)[0]
    ticks = [vmax * k / 5 for k in range(6)]
    tick_text = [f"{t:.3g}" + ("+" if k == 5 else "") for k, t in enumerate(ticks)]
    bar_h = max(rows * cell, 120)
    bar_x, bar_w = left + cols * cell + 16, 14
    # tick marks are drawn across the bar's right edge; their numbers start a clear gap (_TICK_GAP)
    # to the right of them, so that a mark never reads as a minus sign in front of its number
    text_x = bar_x + bar_w + _TICK_OUT + _TICK_GAP
    width = text_x + max(text_size(t, s)[1] for t in tick_text) + 8
    width = max(width, bar_x + text_size(title, s)[1] + 8)
    height = top + max(rows * cell, bar_h) + glyph_h // 2 + 8
    img = torch.full((3, height, width), 255, dtype=torch.uint8)
    _draw_cells(img, v / vmax, top, left, cell, marks)
    for i, label in enumerate(row_labels):
        ink = tuple(row_colours[i]) if row_colours is not None else _TEXT
        _, tw = text_size(label, s)
        draw_text(img, label, left - 6 - tw, top + i * cell + (cell - glyph_h) // 2, ink, s)
    for j, label in enumerate(col_labels):
        _, tw = text_size(label, s)
        draw_text(img, label, left + j * cell + (cell - glyph_h) // 2, top - 6 - tw, _TEXT, s, vertical=True)
    # the colour bar: pixel row r (from the top) shows the value at its centre
    centres = vmax * (1 - (torch.arange(bar_h, dtype=torch.float32) + 0.5) / bar_h)
    bar = _colormap(centres[:, None] / vmax)  # (3, bar_h, 1)
    img[:, top : top + bar_h, bar_x : bar_x + bar_w] = bar.expand(3, bar_h, bar_w)
    for t, text in zip(ticks, tick_text):
        y = top + round((bar_h - 1) * (1 - t / vmax))
        ink = torch.tensor(_TEXT, dtype=torch.uint8).view(3, 1)
        img[:, y, bar_x + bar_w - _TICK_IN : bar_x + bar_w + _TICK_OUT] = ink
        draw_text(img, text, text_x, y - glyph_h // 2, _TEXT, s)
    draw_text(img, title, bar_x, top - 6 - glyph_h, _TEXT, s)
    return img


def _check_heatmap_args(
    values: Tensor, row_labels: Sequence[str], col_labels: Sequence[str], vmax: float, cell: int, font_scale: int
) -> Tensor:
    v = values.detach().float().cpu()
    if v.ndim != 2:
        raise ValueError(f"`values` must be a (rows, cols) matrix, got shape {tuple(v.shape)}")
    rows, cols = v.shape
    if len(row_labels) != rows:
        raise ValueError(f"`row_labels` needs {rows} labels (one per row), got {len(row_labels)}")
    if len(col_labels) != cols:
        raise ValueError(f"`col_labels` needs {cols} labels (one per column), got {len(col_labels)}")
    if not vmax > 0:
        raise ValueError(f"`vmax` must be > 0, got {vmax!r}")
    if cell < 2:
        raise ValueError(f"`cell` must be >= 2, got {cell!r}")
    _check_scale(font_scale)
    return v


def _draw_cells(img: Tensor, scaled: Tensor, top: int, left: int, cell: int, marks: Sequence[tuple[int, int]]) -> None:
    """Colour cells of ``scaled`` values (0..1) with a white line between them; outline ``marks``."""
    rows, cols = scaled.shape
    if rows and cols:
        colours = _colormap(scaled)  # (3, rows, cols)
        block = colours.repeat_interleave(cell, 1).repeat_interleave(cell, 2)
        keep = torch.ones(rows * cell, cols * cell, dtype=torch.bool)
        keep[cell - 1 :: cell, :] = False
        keep[:, cell - 1 :: cell] = False
        grid = img[:, top : top + rows * cell, left : left + cols * cell]
        grid[:, keep] = block[:, keep]
    mark = torch.tensor(_MARK, dtype=torch.uint8).view(3, 1, 1)
    w = max(1, cell // 8)  # outline width
    c = cell - 1
    for i, j in marks:
        y, x = top + i * cell, left + j * cell
        img[:, y : y + w, x : x + c] = mark
        img[:, y + c - w : y + c, x : x + c] = mark
        img[:, y : y + c, x : x + w] = mark
        img[:, y : y + c, x + c - w : x + c] = mark


def labelled_heatmap_grid(
    row_labels: Sequence[str], col_labels: Sequence[str], font_scale: int = 2
) -> tuple[int, int]:
    """``(top, left)`` pixel of the first cell of :func:`labelled_heatmap` with these labels.

    Examples:
        >>> top, left = labelled_heatmap_grid(["unit 3"], ["sky"], font_scale=1)
        >>> left == 8 + text_size("unit 3", 1)[1] + 6  # the longest row label, then a 6 pixel gap
        True
    """
    _check_scale(font_scale)
    s = font_scale
    glyph_h = text_size("0", s)[0]
    longest_row = max((text_size(t, s)[1] for t in row_labels), default=0)
    longest_col = max((text_size(t, s)[1] for t in col_labels), default=0)
    top = 8 + max(longest_col, glyph_h) + 6 + glyph_h // 2
    return top, 8 + longest_row + 6


def legend_image(
    items: Sequence[tuple[str, Sequence[int]]],
    *,
    title: str | None = None,
    font_scale: int = 2,
    max_height: int | None = None,
) -> Tensor:
    """A colour legend: one swatch and its name per item, top to bottom, on white.

    Entries wrap into further columns when ``max_height`` pixels would be exceeded. Each swatch is
    a square as tall as the letters, with a grey frame (so white swatches show).

    Args:
        items: ``(name, RGB)`` pairs in display order.
        title: Drawn above the entries.
        font_scale: Text size: ``7 * font_scale`` pixel font.
        max_height: Tallest the picture may be (at least one entry per column).

    Returns:
        ``uint8 (3, H, W)``.

    Examples:
        >>> legend_image([("sky", (90, 160, 230)), ("grass", (60, 150, 60))]).shape
        torch.Size([3, 52, 71])
    """
    _check_scale(font_scale)
    s = font_scale
    glyph_h = text_size("0", s)[0]
    pitch = glyph_h + 4
    head = glyph_h + 6 if title else 0
    per_column = len(items) or 1
    if max_height is not None:
        per_column = max(1, min(per_column, (max_height - 12 - head) // pitch))
    columns = [items[k : k + per_column] for k in range(0, len(items), per_column)] or [[]]
    col_w = [glyph_h + 6 + max((text_size(n, s)[1] for n, _ in c), default=0) for c in columns]
    width = max(12 + sum(col_w) + 16 * (len(columns) - 1), 12 + (text_size(title, s)[1] if title else 0))
    height = 12 + head + pitch * max(len(c) for c in columns) - (4 if items else 0)
    img = torch.full((3, height, width), 255, dtype=torch.uint8)
    if title:
        draw_text(img, title, 6, 6, _TEXT, s)
    x = 6
    for column, cw in zip(columns, col_w):
        for k, (name, colour) in enumerate(column):
            y = 6 + head + k * pitch
            img[:, y : y + glyph_h, x : x + glyph_h] = 150
            img[:, y + 1 : y + glyph_h - 1, x + 1 : x + glyph_h - 1] = torch.tensor(
                [int(c) for c in colour], dtype=torch.uint8
            ).view(3, 1, 1)
            draw_text(img, name, x + glyph_h + 6, y, _TEXT, s)
        x += cw + 16
    return img


def text_image(text: str, *, font_scale: int = 2) -> Tensor:
    """One or more lines of ``text`` (split at newlines), dark on white, with a small margin.

    Examples:
        >>> text_image("no units").shape
        torch.Size([3, 30, 63])
    """
    _check_scale(font_scale)
    lines = text.split("\n")
    glyph_h = text_size("0", font_scale)[0]
    width = 12 + max(text_size(line, font_scale)[1] for line in lines)
    img = torch.full((3, 12 + len(lines) * (glyph_h + 4) - 4, width), 255, dtype=torch.uint8)
    for k, line in enumerate(lines):
        draw_text(img, line, 6, 6 + k * (glyph_h + 4), _TEXT, font_scale)
    return img


def encode_png(image: Tensor) -> bytes:
    """Encode a ``uint8 (3, H, W)`` (or ``(H, W)``) tensor as PNG bytes (no Pillow needed).

    Examples:
        >>> encode_png(torch.zeros(3, 2, 2, dtype=torch.uint8))[:8]
        b'\\x89PNG\\r\\n\\x1a\\n'
    """
    if image.ndim == 2:
        image = image.unsqueeze(0).expand(3, -1, -1)
    arr = image.detach().to(torch.uint8).cpu().permute(1, 2, 0).contiguous().numpy()
    height, width, _ = arr.shape
    raw = b"".join(b"\x00" + arr[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )
