"""Text for ``uint8`` pictures: Pillow's built-in scalable font, anti-aliased, with no font file to ship.

``ImageFont.load_default(size=...)`` (Pillow >= 10.1, with FreeType, as in Pillow's wheels) is a
real sans-serif typeface at any pixel size; TensorBoard already depends on Pillow. Text is drawn
as an alpha mask blended into the picture, so letters stay legible at TensorBoard's default image
size. ``scale`` sets the size: the font is ``7 * scale`` pixels (scale 2, the pictures' default:
14 pixel text, about 10 pixel capitals).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["font", "text_mask", "text_size", "draw_text"]

PIXELS_PER_SCALE = 7


@lru_cache(maxsize=16)
def font(scale: int) -> Any:
    """Pillow's default scalable font at ``PIXELS_PER_SCALE * scale`` pixels (cached)."""
    if scale < 1:
        raise ValueError(f"`scale` must be >= 1, got {scale!r}")
    from PIL import ImageFont

    return ImageFont.load_default(size=PIXELS_PER_SCALE * scale)


def text_size(text: str, scale: int = 1) -> tuple[int, int]:
    """``(height, width)`` in pixels of ``text`` drawn at ``scale``.

    The height is the font's line height (ascent + descent), the same for every text, so that
    labels of one picture line up; the width covers the text's advance and all of its ink.

    Examples:
        >>> text_size("", 2)[1]
        0
        >>> text_size("unit 12", 2)[0] == text_size("sky", 2)[0]
        True
    """
    if not text:
        return sum(font(scale).getmetrics()), 0
    return _size(text, scale)


@lru_cache(maxsize=4096)
def _size(text: str, scale: int) -> tuple[int, int]:
    f = font(scale)
    ascent, descent = f.getmetrics()
    # the advance width, or further where a last glyph's ink reaches beyond it (a "y", say)
    _, _, right, bottom = f.getbbox(text)
    return max(ascent + descent, bottom), max(int(np.ceil(f.getlength(text))), right)


def text_mask(text: str, scale: int = 1) -> Tensor:
    """The ink of ``text`` as a ``float32 (height, width)`` alpha mask in ``[0, 1]`` (:func:`text_size`).

    Examples:
        >>> mask = text_mask("a1", 2)
        >>> tuple(mask.shape) == text_size("a1", 2), 0.0 <= float(mask.min()) < float(mask.max()) <= 1.0
        (True, True)
    """
    from PIL import Image, ImageDraw

    height, width = text_size(text, scale)
    if width == 0:
        return torch.zeros(height, 0)
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).text((0, 0), text, fill=255, font=font(scale))
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)


def draw_text(
    image: Tensor,
    text: str,
    x: int,
    y: int,
    colour: Sequence[int] = (0, 0, 0),
    scale: int = 1,
    vertical: bool = False,
) -> Tensor:
    """Draw ``text`` into ``image`` (``uint8 (3, H, W)``, in place) with its top-left corner at ``(x, y)``.

    ``vertical`` rotates it a quarter turn anticlockwise (read bottom to top; ``(x, y)`` is then the
    top-left corner of the rotated text). Ink falling outside the image is clipped; ink is blended
    with what lies under it (anti-aliased edges).

    Examples:
        >>> img = torch.full((3, 20, 40), 255, dtype=torch.uint8)
        >>> int(draw_text(img, "l", 1, 1, (0, 0, 0), 2).min())
        0
    """
    mask = text_mask(text, scale)
    if vertical:
        mask = torch.rot90(mask, 1, (0, 1))
    h, w = mask.shape
    height, width = image.shape[-2:]
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        return image
    alpha = mask[y0 - y : y1 - y, x0 - x : x1 - x].to(image.device)
    ink = torch.tensor(list(colour), dtype=torch.float32, device=image.device).view(3, 1, 1)
    region = image[:, y0:y1, x0:x1]
    blended = region.float() * (1 - alpha) + ink * alpha
    region.copy_(blended.round().clamp(0, 255).to(image.dtype))
    return image
