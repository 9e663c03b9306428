"""Picture primitives: masks overlaid on images, image strips, IoU heatmaps, units × rounds maps, PNG.

Everything returns ``uint8`` tensors ``(3, H, W)`` (TensorBoard's ``add_image`` layout) and needs
no plotting library; :func:`encode_png` writes them without Pillow.
"""

from __future__ import annotations

import struct
import zlib
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "to_uint8",
    "overlay_mask",
    "image_strip",
    "heatmap",
    "encode_png",
]

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


def _colormap(x: Tensor) -> Tensor:
    """A perceptually ordered dark-blue → yellow map of values in [0, 1] to uint8 RGB."""
    stops = torch.tensor(
        [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
        dtype=torch.float32,
    )
    pos = x.clamp(0, 1) * (len(stops) - 1)
    lo = pos.floor().long().clamp(max=len(stops) - 2)
    frac = (pos - lo.float()).unsqueeze(-1)
    rgb = stops[lo] * (1 - frac) + stops[lo + 1] * frac
    return rgb.round().to(torch.uint8).permute(2, 0, 1)


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
