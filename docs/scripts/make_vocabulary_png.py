"""Draw ``docs/images/vocabulary.png``: sample scenes, their label maps and the concept legend.

Usage: ``python docs/scripts/make_vocabulary_png.py [output.png]``

Needs only torch and numpy; text is drawn with Pillow when it is installed, otherwise the picture
is written by the small PNG encoder below without the legend's text.
"""

from __future__ import annotations

import colorsys
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lightning_dissect.segmenters import SceneWorld  # noqa: E402

SCALE = 3  # pixels per scene pixel
N_SCENES = 6
SIZE = 64
PAD = 6


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` uint8 array as a PNG (zlib + struct, no dependencies)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def label_colours(n: int) -> np.ndarray:
    """Distinct colours for label maps (label 0 black), by golden-ratio hue steps."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for k in range(1, n):
        h = (k * 0.618034) % 1.0
        s, v = (0.75, 0.95) if k % 2 else (0.55, 0.7)
        out[k] = np.round(np.array(colorsys.hsv_to_rgb(h, s, v)) * 255)
    return out


def main(out: Path) -> None:
    """Render the scenes and the legend and write the picture to ``out``."""
    world = SceneWorld(SIZE)
    vocab = world.vocabulary
    images, labels = world.render(N_SCENES, seed=7)
    whole = world.multilabel(labels)[:, 1]
    img = ((images.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    cmap = label_colours(vocab.num_concepts)
    lab = cmap[labels.numpy()]
    who = cmap[whole.numpy()]

    tile = SIZE * SCALE
    rows = [img, lab, who]
    legend_h = 22 * ((vocab.num_concepts + 2) // 3) + 30
    height = PAD + len(rows) * (tile + PAD) + legend_h
    width = PAD + N_SCENES * (tile + PAD) + 110
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for i in range(N_SCENES):
            y0, x0 = PAD + r * (tile + PAD), 110 + i * (tile + PAD)
            canvas[y0 : y0 + tile, x0 : x0 + tile] = row[i].repeat(SCALE, 0).repeat(SCALE, 1)
    top = PAD + len(rows) * (tile + PAD) + 24
    cells = []
    for k in range(1, vocab.num_concepts):
        col, line = (k - 1) % 3, (k - 1) // 3
        x0, y0 = PAD + col * 370, top + line * 22
        base = np.round((world.palette[k].numpy() + 1) * 127.5).astype(np.uint8)
        canvas[y0 : y0 + 16, x0 : x0 + 16] = base
        canvas[y0 : y0 + 16, x0 + 20 : x0 + 36] = cmap[k]
        parent = vocab.parents[k]
        text = f"{k:2d} {vocab.names[k]} ({vocab.categories[k]}"
        text += f", part of {vocab.names[parent]})" if parent is not None else ")"
        cells.append((x0 + 44, y0 + 2, text))
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        write_png(out, canvas)
        return
    pic = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pic)
    for r, name in enumerate(["image", "labels", "whole"]):
        draw.text((PAD, PAD + r * (tile + PAD) + tile // 2 - 6), name, fill=(0, 0, 0))
    draw.text(
        (PAD, top - 20),
        "legend: base colour (palette) | label-map colour | index, name (category)",
        fill=(0, 0, 0),
    )
    for x, y, text in cells:
        draw.text((x, y), text, fill=(0, 0, 0))
    pic.save(out, optimize=True)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "images" / "vocabulary.png"
    main(target)
    print(f"wrote {target}")
