"""Colours shared by every picture: the IoU colour scale and each concept's colour.

The IoU heatmaps (TensorBoard pictures, the HTML report's SVG) and the units-by-round pictures (in
TensorBoard and on the emergence page) take their colours from here, so a colour means the same
thing wherever it is seen.
"""

from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["IOU_SCALE_MAX", "SCALE_STOPS", "scale_colours", "scale_rgb", "concept_colour"]

#: Top of the heatmaps' fixed IoU colour scale; larger IoUs get the top colour. Fixed (not the
#: layer's maximum) so colours mean the same IoU in every layer, every round and every report.
IOU_SCALE_MAX = 0.5

#: The colour scale's stops (dark blue → yellow, viridis-like), evenly spaced over [0, 1].
SCALE_STOPS: tuple[tuple[int, int, int], ...] = (
    (68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37),
)


def scale_colours(x: Tensor) -> Tensor:
    """Values in [0, 1] (clipped) as ``uint8`` RGB, shape ``(3, *x.shape)``: linear between the stops.

    Examples:
        >>> scale_colours(torch.tensor([0.0, 1.0])).T.tolist()
        [[68, 1, 84], [253, 231, 37]]
    """
    stops = torch.tensor(SCALE_STOPS, dtype=torch.float32)
    pos = x.float().clamp(0, 1) * (len(stops) - 1)
    lo = pos.floor().long().clamp(max=len(stops) - 2)
    frac = (pos - lo.float()).unsqueeze(-1)
    rgb = stops[lo] * (1 - frac) + stops[lo + 1] * frac
    return rgb.round().to(torch.uint8).movedim(-1, 0)


def scale_rgb(value: float) -> tuple[int, int, int]:
    """One value in [0, 1] (clipped) as an ``(r, g, b)`` tuple, the colour :func:`scale_colours` gives.

    Examples:
        >>> scale_rgb(0.5)
        (33, 145, 140)
    """
    r, g, b = scale_colours(torch.tensor([float(value)]))[:, 0].tolist()
    return int(r), int(g), int(b)


def concept_colour(name: str, palette: Mapping[str, Sequence[int]] | None = None) -> Tensor:
    """A stable RGB colour (``uint8``, shape ``(3,)``) for a concept name; from ``palette`` when it has one.

    Examples:
        >>> concept_colour("sky", {"sky": [10, 20, 255]}).tolist()
        [10, 20, 255]
        >>> concept_colour("tree").tolist() == concept_colour("tree").tolist()
        True
    """
    if palette and name in palette:
        return torch.tensor(list(palette[name]), dtype=torch.uint8)
    digest = hashlib.md5(name.encode()).digest()
    return torch.tensor([64 + digest[0] % 192, 64 + digest[1] % 192, 64 + digest[2] % 192], dtype=torch.uint8)
