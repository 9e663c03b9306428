"""A two-unit toy generator for the examples: unit 0 of layer ``"1"`` paints sky, unit 1 grass."""

from __future__ import annotations

import torch  # noqa: F401 - the example uses it
from torch import nn

from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter


def sky_grass(low: int = 16, size: int = 16) -> tuple[nn.Module, SyntheticSceneSegmenter]:
    """``(generator, segmenter)``: latents ``(B, 2)`` are the strengths of the two units.

    Layer ``"1"`` is ``(B, 2, low, low)`` (each latent entry repeated); a pixel shows sky or grass
    in proportion to the two units, and the segmenter of :class:`SceneWorld` reads it back.

    Examples:
        >>> gen, segmenter = sky_grass()
        >>> segmenter(gen(torch.tensor([[1.0, 0.0]])))[0, 0, 0].item() == segmenter.vocabulary.index("sky")
        True
    """
    world = SceneWorld(size)
    paint = nn.Conv2d(2, 3, 1, bias=False)
    paint.weight.data = world.palette[[1, 5]].T.reshape(3, 2, 1, 1)
    generator = nn.Sequential(nn.Unflatten(1, (2, 1, 1)), nn.Upsample(size=low), paint, nn.Upsample(size=size))
    return generator, SyntheticSceneSegmenter(world)
