"""The paint app's test world: a painting generator whose unit 0 of ``"layout"`` paints "tree".

:func:`painting_setup` dissects it once per test session (both the API tests and the browser test
use it). Helpers decode the page's PNG data URLs and find a sample that shows a tree.
"""

from __future__ import annotations

import base64
import functools
import io
from typing import Any, NamedTuple

import numpy as np
import torch

from lightning_dissect.dissection import dissect
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
from tests.helpers.painting import PaintingGenerator

CONCEPTS = ("tree", "house", "water", "sun", "cloud")
SIZE = 64


class Setup(NamedTuple):
    world: SceneWorld
    generator: PaintingGenerator
    segmenter: SyntheticSceneSegmenter
    result: Any


def make_generator(size: int = SIZE) -> PaintingGenerator:
    """A fresh generator (its buffers are fixed: every instance paints the same images)."""
    return PaintingGenerator(SceneWorld(size), list(CONCEPTS), size=size)


@functools.cache
def painting_setup(size: int = SIZE) -> Setup:
    world = SceneWorld(size)
    generator = make_generator(size)
    segmenter = SyntheticSceneSegmenter(world)
    result = dissect(generator, ["layout"], segmenter, latent_shape=(generator.latent_dim,), num_samples=160,
                     batch_size=80, threshold_mode="iqr", num_levels=32, top_k=6, num_visualized_units=0,
                     progress=False)
    return Setup(world, generator, segmenter, result)


def decode_data_url(url: str) -> np.ndarray:
    """A ``data:image/png;base64,...`` URL as a ``uint8 (H, W, 3)`` array (read with Pillow)."""
    from PIL import Image

    head, _, data = url.partition(",")
    assert head == "data:image/png;base64", head[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def labels_of(picture: np.ndarray, segmenter: SyntheticSceneSegmenter) -> np.ndarray:
    """The segmenter's labels ``(H, W)`` of a ``uint8 (H, W, 3)`` picture (mapped back to [-1, 1])."""
    x = torch.from_numpy(picture.astype(np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    return segmenter(x)[0].numpy()


def runs_to_mask(mask: dict) -> np.ndarray:
    """The paint edit's run-length mask decoded with NumPy (an independent decoder)."""
    h, w = mask["size"]
    values = np.repeat(np.arange(len(mask["runs"])) % 2, mask["runs"])
    return values.reshape(h, w).astype(bool)


def fractions(picture: np.ndarray, region: np.ndarray, concept: int, segmenter) -> tuple[float, float]:
    """``(inside, outside)``: the concept's pixel fraction inside and outside ``region``."""
    hits = labels_of(picture, segmenter) == concept
    return float(hits[region].mean()), float(hits[~region].mean())


def tree_sample(setup: Setup, start: int = 0) -> tuple[int, np.ndarray]:
    """The first seed from ``start`` whose image shows a tree of at least 60 pixels, and that tree's mask."""
    from lightning_dissect.app import edits

    tree = setup.world.vocabulary.index("tree")
    for seed in range(start, start + 200):
        z = edits.sample_bank(seed, (setup.generator.latent_dim,)).latents
        labels = setup.segmenter(setup.generator(z))[0].numpy()
        if (labels == tree).sum() >= 60:
            return seed, labels == tree
    raise AssertionError("no sample with a tree")
