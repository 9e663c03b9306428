"""A tiny 5×7 pixel bitmap font, to write labels into ``uint8`` pictures without a plotting library.

Letters are drawn as capitals; digits, space and ``. _ - / ( ) + , : ? > =`` have glyphs; any other
character is drawn as ``?``. Each glyph is 5 pixels wide and 7 tall, and characters advance by 6.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

GLYPH_WIDTH = 5
GLYPH_HEIGHT = 7
ADVANCE = GLYPH_WIDTH + 1

# each glyph: 7 rows of 5 columns, "#" = ink
_GLYPHS_TEXT = {
    "a": ".###. #...# #...# ##### #...# #...# #...#",
    "b": "####. #...# #...# ####. #...# #...# ####.",
    "c": ".###. #...# #.... #.... #.... #...# .###.",
    "d": "####. #...# #...# #...# #...# #...# ####.",
    "e": "##### #.... #.... ####. #.... #.... #####",
    "f": "##### #.... #.... ####. #.... #.... #....",
    "g": ".###. #...# #.... #.### #...# #...# .####",
    "h": "#...# #...# #...# ##### #...# #...# #...#",
    "i": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "j": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "k": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "l": "#.... #.... #.... #.... #.... #.... #####",
    "m": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "n": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "o": ".###. #...# #...# #...# #...# #...# .###.",
    "p": "####. #...# #...# ####. #.... #.... #....",
    "q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "r": "####. #...# #...# ####. #.#.. #..#. #...#",
    "s": ".#### #.... #.... .###. ....# ....# ####.",
    "t": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "u": "#...# #...# #...# #...# #...# #...# .###.",
    "v": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "w": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "x": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "z": "##### ....# ...#. ..#.. .#... #.... #####",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    " ": "..... ..... ..... ..... ..... ..... .....",
    ".": "..... ..... ..... ..... ..... .##.. .##..",
    "_": "..... ..... ..... ..... ..... ..... #####",
    "-": "..... ..... ..... ##### ..... ..... .....",
    "/": "..... ....# ...#. ..#.. .#... #.... .....",
    "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    "+": "..... ..#.. ..#.. ##### ..#.. ..#.. .....",
    ",": "..... ..... ..... ..... .##.. ..#.. .#...",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....",
    "?": ".###. #...# ....# ...#. ..#.. ..... ..#..",
    ">": ".#... ..#.. ...#. ....# ...#. ..#.. .#...",
    "=": "..... ..... ##### ..... ##### ..... .....",
}


def _parse(rows: str) -> Tensor:
    return torch.tensor([[ch == "#" for ch in row] for row in rows.split()], dtype=torch.bool)


GLYPHS: dict[str, Tensor] = {ch: _parse(rows) for ch, rows in _GLYPHS_TEXT.items()}


def text_mask(text: str, scale: int = 1) -> Tensor:
    """The ink of ``text`` as a ``bool (7*scale, (6*len(text) - 1)*scale)`` mask (empty text: width 0).

    Examples:
        >>> text_mask("a1").shape
        torch.Size([7, 11])
        >>> text_mask("", scale=2).shape
        torch.Size([14, 0])
    """
    if scale < 1:
        raise ValueError(f"`scale` must be >= 1, got {scale!r}")
    width = max(ADVANCE * len(text) - 1, 0)
    mask = torch.zeros(GLYPH_HEIGHT, width, dtype=torch.bool)
    for i, ch in enumerate(text.lower()):
        mask[:, i * ADVANCE : i * ADVANCE + GLYPH_WIDTH] = GLYPHS.get(ch, GLYPHS["?"])
    return mask.repeat_interleave(scale, 0).repeat_interleave(scale, 1)


def text_size(text: str, scale: int = 1) -> tuple[int, int]:
    """``(height, width)`` in pixels of ``text`` drawn at ``scale``."""
    return GLYPH_HEIGHT * scale, max(ADVANCE * len(text) - 1, 0) * scale


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
    top-left corner of the rotated text). Ink falling outside the image is clipped.

    Examples:
        >>> img = torch.zeros(3, 9, 20, dtype=torch.uint8)
        >>> int(draw_text(img, "l", 1, 1, (255, 255, 255))[0].sum() // 255)
        11
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
    sub = mask[y0 - y : y1 - y, x0 - x : x1 - x]
    ink = torch.tensor(list(colour), dtype=image.dtype, device=image.device).view(3, 1)
    region = image[:, y0:y1, x0:x1]
    region[:, sub.to(image.device)] = ink
    return image
