"""A hand-built generator whose units paint known concepts of the synthetic world.

:class:`PaintingGenerator` is the ground truth for dissection tests: its layer ``"layout"`` has one
unit per concept, and unit ``k`` *is* concept ``k`` — the image shows ``concepts[k]`` exactly where
the upsampled map of unit ``k`` exceeds :attr:`PaintingGenerator.level` (and is the strongest
unit). A correct dissection must therefore label unit ``k`` with ``concepts[k]`` at IoU close to 1,
and an optional extra ``"random"`` unit — noise drawn from latent dimensions the picture never
uses — must score no better than chance.

Use it as::

    from tests.helpers.painting import PaintingGenerator

    world = SceneWorld(32)
    gen = PaintingGenerator(world, ["tree", "house", "water"])
    images = gen(torch.randn(4, gen.latent_dim))          # (4, 3, 32, 32) in [-1, 1]

Hook points (all ``nn.Identity``):

* ``"layout"`` — ``(B, K [+1], low, low)``, non-negative: per concept unit a smooth Gaussian bump,
  present with probability 1/2, at a latent-determined position, width and height; the last unit
  is the random one when ``random_unit=True``.
* ``"canvas"`` — ``(B, K, size, size)``: the one-hot indicator of each concept in the picture
  (a second layer at another resolution; in ``"iqr"`` mode its units are exact).

Everything is a deterministic function of ``z`` (no RNG at call time); the generator has no
trainable parameters, only fixed buffers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_dissect.functional.upsample import upsample_bilinear
from lightning_dissect.segmenters import SceneWorld

__all__ = [
    "PARAMS_PER_UNIT",
    "CausalPaintingGenerator",
    "PaintingGenerator",
    "make_causal_painting_generator",
    "make_painting_generator",
    "make_painting_segmenter",
    "painting_latent_shape",
]

#: Latent dimensions read per concept unit: presence, x, y, width, height (amplitude).
PARAMS_PER_UNIT = 5
#: Latent dimensions feeding the random unit.
NOISE_DIMS = 16
#: Default concepts painted by the factory used by the CLI tests.
DEFAULT_CONCEPTS = ("tree", "house", "water")


def _phi(x: Tensor) -> Tensor:
    """Standard normal CDF: maps N(0, 1) latents to uniform (0, 1)."""
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class PaintingGenerator(nn.Module):
    """Images painted by hand-built units: unit ``k`` of ``"layout"`` paints ``concepts[k]``.

    Args:
        world: The :class:`SceneWorld` whose palette is painted (its segmenter is exact on it).
        concepts: Concept names of the world, one per unit.
        size: Image size.
        low: Resolution of the ``"layout"`` maps.
        latent_dim: Latent size; at least ``5·K + 16`` (the default). Extra dimensions are unused.
        random_unit: Add a last ``"random"`` unit whose map is noise unrelated to the image.
        background: ``(top, bottom)`` concepts painted where no unit is active (split at half
            height).
        level: A unit paints where its upsampled map exceeds this.
        presence: Probability that a unit is active in an image.
        noise_seed: Seed of the fixed projection that makes the random unit's map.
    """

    def __init__(
        self,
        world: SceneWorld,
        concepts: Sequence[str],
        size: int = 32,
        low: int = 8,
        latent_dim: int | None = None,
        *,
        random_unit: bool = True,
        background: tuple[str, str] = ("sky", "grass"),
        level: float = 0.5,
        presence: float = 0.5,
        noise_seed: int = 0,
    ) -> None:
        super().__init__()
        concepts = list(concepts)
        if not concepts:
            raise ValueError("PaintingGenerator needs at least one concept")
        vocab = world.vocabulary
        self.concepts = concepts
        self.background = tuple(background)
        self.concept_indices = [vocab.index(c) for c in concepts]
        self.background_indices = [vocab.index(c) for c in self.background]
        self.size = int(size)
        self.low = int(low)
        self.level = float(level)
        self.presence = float(presence)
        self.random_unit = bool(random_unit)
        self.num_concepts = len(concepts)
        self.num_units = self.num_concepts + int(self.random_unit)
        needed = PARAMS_PER_UNIT * self.num_concepts + NOISE_DIMS
        self.latent_dim = needed if latent_dim is None else int(latent_dim)
        if self.latent_dim < needed:
            raise ValueError(f"latent_dim must be at least {needed}, got {latent_dim}")
        # colours: concept units first, then the two background concepts
        colours = world.palette[self.concept_indices + self.background_indices]
        self.register_buffer("colours", colours)
        g = torch.Generator().manual_seed(noise_seed)
        self.register_buffer("noise_projection", torch.randn(NOISE_DIMS, low * low, generator=g))
        coords = (torch.arange(low, dtype=torch.float32) + 0.5) / low
        self.register_buffer("coords", coords)
        self.layout = nn.Identity()
        self.canvas = nn.Identity()

    # ---------------------------------------------------------------- pieces
    def unit_maps(self, z: Tensor) -> Tensor:
        """The ``"layout"`` maps ``(B, K [+1], low, low)`` for latents ``z`` ``(B, latent_dim)``."""
        z = z.reshape(z.shape[0], -1).float()
        if z.shape[1] < self.latent_dim:
            raise ValueError(f"latents must have {self.latent_dim} dimensions, got {z.shape[1]}")
        k = self.num_concepts
        p = z[:, : PARAMS_PER_UNIT * k].view(-1, k, PARAMS_PER_UNIT)
        present = (_phi(p[..., 0]) < self.presence).float()
        cx = 0.1 + 0.8 * _phi(p[..., 1])
        cy = 0.1 + 0.8 * _phi(p[..., 2])
        width = (0.7 + 0.3 * _phi(p[..., 3])) / self.low  # in image fractions
        amplitude = 1.0 + 0.2 * _phi(p[..., 4])
        dx = (self.coords.view(1, 1, 1, -1) - cx[..., None, None]) / width[..., None, None]
        dy = (self.coords.view(1, 1, -1, 1) - cy[..., None, None]) / width[..., None, None]
        bumps = (present * amplitude)[..., None, None] * torch.exp(-0.5 * (dx * dx + dy * dy))
        if not self.random_unit:
            return bumps
        start = PARAMS_PER_UNIT * k
        noise = z[:, start : start + NOISE_DIMS] @ self.noise_projection / math.sqrt(NOISE_DIMS)
        noise = torch.nn.functional.softplus(noise).view(-1, 1, self.low, self.low)
        return torch.cat([bumps, noise], 1)

    def paint(self, maps: Tensor) -> tuple[Tensor, Tensor]:
        """``(images, canvas)``: the picture of the concept units of ``maps`` and its one-hot."""
        k = self.num_concepts
        up = upsample_bilinear(maps[:, :k], (self.size, self.size))  # (B, K, S, S)
        strongest, which = up.max(1)
        active = strongest > self.level
        rows = torch.arange(self.size, device=maps.device).view(1, -1, 1)
        bg = torch.where(rows < self.size // 2, k, k + 1).expand_as(which)
        index = torch.where(active, which, bg)  # (B, S, S) into self.colours
        images = self.colours[index].permute(0, 3, 1, 2).contiguous()
        canvas = torch.nn.functional.one_hot(index, k + 2)[..., :k].permute(0, 3, 1, 2).float()
        return images, canvas

    def forward(self, z: Tensor) -> Tensor:
        """Images ``(B, 3, size, size)`` in [-1, 1] for latents ``z`` ``(B, latent_dim)``."""
        maps = self.layout(self.unit_maps(z))
        images, canvas = self.paint(maps)
        self.canvas(canvas)
        return images

    def concept_of_unit(self, unit: int) -> str:
        """The concept painted by ``"layout"`` unit ``unit`` (``"random"`` for the noise unit)."""
        return self.concepts[unit] if unit < self.num_concepts else "random"

    def extra_repr(self) -> str:
        return (
            f"concepts={self.concepts}, size={self.size}, low={self.low}, "
            f"latent_dim={self.latent_dim}, random_unit={self.random_unit}"
        )


def painting_latent_shape(generator: PaintingGenerator) -> tuple[int]:
    """The latent shape to pass to ``dissect`` for ``generator``."""
    return (generator.latent_dim,)


def make_painting_generator(
    concepts: Sequence[str] = DEFAULT_CONCEPTS, size: int = 32, **kwargs: Any
) -> PaintingGenerator:
    """A generator factory for the command line.

    ``--generator tests.helpers.painting:make_painting_generator``.
    """
    return PaintingGenerator(SceneWorld(max(16, size)), concepts, size=size, **kwargs)


def make_painting_segmenter(size: int = 32) -> Any:
    """A segmenter factory for the command line (the synthetic world's exact segmenter)."""
    from lightning_dissect.segmenters import SyntheticSceneSegmenter

    return SyntheticSceneSegmenter(SceneWorld(max(16, size)))


def _make_lightning_class() -> type:
    import lightning as L

    class PaintingGAN(L.LightningModule):
        """A LightningModule holding a :class:`PaintingGenerator` as ``self.generator``."""

        def __init__(self, latent_dim: int = 31, concepts: Sequence[str] = DEFAULT_CONCEPTS):
            super().__init__()
            self.save_hyperparameters()
            self.generator = make_painting_generator(list(concepts), latent_dim=latent_dim)
            self.scale = nn.Parameter(torch.ones(()))  # something for the checkpoint to hold

        def forward(self, z: Tensor) -> Tensor:
            return self.generator(z)

    PaintingGAN.__module__ = __name__
    PaintingGAN.__qualname__ = "PaintingGAN"
    return PaintingGAN


_LAZY: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    # ``PaintingGAN`` (a LightningModule) is built on first access: importing lightning is slow.
    if name == "PaintingGAN":
        if name not in _LAZY:
            _LAZY[name] = _make_lightning_class()
        return _LAZY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class CausalPaintingGenerator(nn.Module):
    """Units that *cause* a concept, units that only *match* it, and units that do neither.

    Every image has one Gaussian blob at a latent-determined place. Layer ``"units"``
    (``(B, U, low, low)``, an ``nn.Identity``) holds, in this order:

    * ``strong`` units: the blob plus a private bump elsewhere, weight 1 in the picture;
    * ``weak`` units: the blob plus a private bump, weight ``weak_weight``;
    * ``decoys``: exactly the blob (they match the concept best by IoU) with weight 0: they
      cause nothing;
    * ``others``: a private bump only, weight 0.

    The picture shows ``concept`` where ``Σ_u weight_u · r_u > threshold`` (soft edge), else
    ``background``. With the defaults all strong units together are needed (two of them alone
    stay below the threshold at the blob, private bumps never reach it), the weak units only
    widen the concept's area: ablating the strong units removes the concept, ablating the
    decoys removes nothing. Everything is a deterministic, differentiable function of ``z``.
    """

    def __init__(
        self,
        world: SceneWorld,
        concept: str = "tree",
        background: str = "grass",
        *,
        strong: int = 3,
        weak: int = 2,
        decoys: int = 3,
        others: int = 4,
        weak_weight: float = 0.35,
        threshold: float = 2.2,
        size: int = 32,
        low: int = 8,
    ) -> None:
        super().__init__()
        self.strong = list(range(strong))
        self.weak = list(range(strong, strong + weak))
        self.decoys = list(range(strong + weak, strong + weak + decoys))
        self.others = list(range(strong + weak + decoys, strong + weak + decoys + others))
        self.num_units = strong + weak + decoys + others
        self.latent_dim = 2 * (1 + self.num_units)
        weights = torch.zeros(self.num_units)
        weights[self.strong] = 1.0
        weights[self.weak] = float(weak_weight)
        self.register_buffer("weights", weights)
        vocab = world.vocabulary
        self.register_buffer("colours", world.palette[[vocab.index(concept), vocab.index(background)]].clone())
        self.register_buffer("coords", (torch.arange(low, dtype=torch.float32) + 0.5) / low)
        self.threshold = float(threshold)
        self.size, self.low = int(size), int(low)
        self.units = nn.Identity()

    def _bump(self, z: Tensor, width: float) -> Tensor:
        """``(B, low, low)`` Gaussian bump centred by the two latent entries ``z`` ``(B, 2)``."""
        cx, cy = (0.15 + 0.7 * _phi(z[:, i]) for i in (0, 1))
        dx = (self.coords.view(1, 1, -1) - cx.view(-1, 1, 1)) / width
        dy = (self.coords.view(1, -1, 1) - cy.view(-1, 1, 1)) / width
        return torch.exp(-0.5 * (dx * dx + dy * dy))

    def unit_maps(self, z: Tensor) -> Tensor:
        z = z.reshape(z.shape[0], -1).float()
        blob = self._bump(z[:, :2], 1.3 / self.low)
        width = 1.3 / self.low
        private = torch.stack([self._bump(z[:, 2 + 2 * u : 4 + 2 * u], width) for u in range(self.num_units)], 1)
        maps = private.clone()
        matching = self.strong + self.weak
        maps[:, matching] = blob[:, None] + private[:, matching]
        maps[:, self.decoys] = blob[:, None].expand(-1, len(self.decoys), -1, -1)
        return maps

    def forward(self, z: Tensor) -> Tensor:
        r = self.units(self.unit_maps(z))
        logit = (r * self.weights.view(1, -1, 1, 1)).sum(1, keepdim=True) - self.threshold
        p = torch.sigmoid(4.0 * upsample_bilinear(logit, (self.size, self.size)))
        concept, background = self.colours[0].view(1, 3, 1, 1), self.colours[1].view(1, 3, 1, 1)
        return p * concept + (1 - p) * background


def make_causal_painting_generator() -> CausalPaintingGenerator:
    """A factory for the command line: ``--generator tests.helpers.painting:make_causal_painting_generator``.

    Its latent size is ``latent_dim`` (26 with the defaults).
    """
    return CausalPaintingGenerator(SceneWorld(32))


# ---------------------------------------------------------------------------------------------
# Units painted from the scene world's own labels: the two ends of "interpretable"
# ---------------------------------------------------------------------------------------------

#: The kinds of unit painted per concept by :class:`LabelPaintedGenerator` and
#: :class:`LabelPaintedReader`, in this order.
LABEL_UNIT_KINDS = ("own", "other", "fixed", "noise")
#: Concepts from under 1 % to over 40 % of the world's pixels (at 32×32: sky 44 %, grass 23 %,
#: soil 12 %, foliage 2.8 %, roof 1.4 %, sun 0.6 %, window 0.3 %, trunk 0.1 %).
LABEL_CONCEPTS = ("sky", "grass", "soil", "foliage", "roof", "sun", "window", "trunk")
_SCENES = 1 << 30  # scene indices drawn by the latents


_FREQUENCY: dict[int, Tensor] = {}


def _concept_frequency(world: SceneWorld, indices: Sequence[int], samples: int = 400) -> Tensor:
    """``(K, S, S)`` share of ``samples`` scenes (stream 7) showing each concept at each pixel."""
    if world.image_size not in _FREQUENCY:  # every concept's map, once per image size
        _, labels = world.render(samples, seed=7)
        _FREQUENCY[world.image_size] = torch.stack([(labels == c).float().mean(0) for c in range(world.num_concepts)])
    return _FREQUENCY[world.image_size][list(indices)].clone()


def _noise_maps(keys: Sequence[int], count: int, size: int) -> Tensor:
    """``(B, count, size, size)`` smooth non-negative noise, a deterministic function of each key."""
    maps = []
    for key in keys:
        g = torch.Generator().manual_seed(int(key) % (1 << 62) + 11)
        low = torch.randn(1, count, 4, 4, generator=g)
        maps.append(torch.nn.functional.softplus(upsample_bilinear(low, (size, size)))[0])
    return torch.stack(maps)


def _masks_of(labels: Tensor, indices: Sequence[int]) -> Tensor:
    """``(B, K, S, S)`` float 0/1 masks of the concepts ``indices`` in ``labels`` ``(B, S, S)``."""
    return torch.stack([(labels == c).float() for c in indices], 1)


def _label_units(own: Tensor, other: Tensor, frequency: Tensor, noise: Tensor) -> Tensor:
    """Interleave per concept: own mask, another image's mask, the fixed frequency map, noise."""
    fixed = frequency.unsqueeze(0).expand_as(own)
    return torch.stack([own, other, fixed, noise], 2).flatten(1, 2)


class LabelPaintedGenerator(nn.Module):
    """A generator of scene-world images whose units are painted from the world's own labels.

    The latent ``z`` ``(B, 2)`` picks two scenes: the image is scene ``a`` (from ``z[:, 0]``);
    ``z[:, 1]`` picks an unrelated scene ``b``. Layer ``"units"`` (``(B, 4K, S, S)``, at the image
    size) holds per concept ``k`` of ``concepts``, in the order of :data:`LABEL_UNIT_KINDS`:

    * ``own``: the concept's mask in this image, exactly (1 inside, 0 outside);
    * ``other``: the concept's mask in scene ``b`` (another image's mask);
    * ``fixed``: the share of 400 other scenes showing the concept at each pixel (where the
      concept usually is; the same map for every image);
    * ``noise``: smooth noise drawn from the scene's index.

    A correct rule counts every ``own`` unit and no other one. Everything is a deterministic
    function of ``z``.
    """

    def __init__(self, world: SceneWorld, concepts: Sequence[str] = LABEL_CONCEPTS, *, scene_seed: int = 0) -> None:
        super().__init__()
        self.world = world
        self.concepts = list(concepts)
        self.indices = [world.vocabulary.index(c) for c in self.concepts]
        self.scene_seed = int(scene_seed)
        self.size = world.image_size
        self.register_buffer("frequency", _concept_frequency(world, self.indices))
        self.units = nn.Identity()
        self._scenes: dict[int, tuple[Tensor, Tensor, Tensor]] = {}  # index -> image, labels, noise

    def _scene(self, indices: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        """Images, labels and noise maps of scenes ``indices``, each drawn once (both passes reuse them)."""
        missing = sorted({i for i in indices if i not in self._scenes})
        if missing:
            images, labels = self.world.render_indices(missing, seed=self.scene_seed)
            noise = _noise_maps(missing, len(self.indices), self.size)
            self._scenes.update({i: (images[k], labels[k], noise[k]) for k, i in enumerate(missing)})
        found = [self._scenes[i] for i in indices]
        return tuple(torch.stack(parts) for parts in zip(*found))  # type: ignore[return-value]

    @property
    def num_units(self) -> int:
        return len(LABEL_UNIT_KINDS) * len(self.concepts)

    def unit(self, concept: str, kind: str) -> int:
        """The unit index of ``kind`` (one of :data:`LABEL_UNIT_KINDS`) for ``concept``."""
        return len(LABEL_UNIT_KINDS) * self.concepts.index(concept) + LABEL_UNIT_KINDS.index(kind)

    def scenes(self, z: Tensor) -> tuple[list[int], list[int]]:
        """The scene indices ``(a, b)`` of latents ``z``."""
        u = _phi(z.reshape(z.shape[0], -1)[:, :2].double())
        picked = (u * _SCENES).long().clamp(0, _SCENES - 1)
        return picked[:, 0].tolist(), picked[:, 1].tolist()

    def forward(self, z: Tensor) -> Tensor:
        a, b = self.scenes(z)
        images, labels, noise = self._scene(a)
        other_labels = self._scene(b)[1]
        own = _masks_of(labels, self.indices)
        other = _masks_of(other_labels, self.indices)
        self.units(_label_units(own, other, self.frequency, noise).to(z.device))
        return images.to(z.device)


class LabelPaintedReader(nn.Module):
    """A network reading scene-world images whose units are painted from the images' labels.

    The reader counterpart of :class:`LabelPaintedGenerator`, with the same four units per
    concept in layer ``"units"``. It labels each pixel by its nearest palette colour (exact on
    the world's images); the ``other`` unit shows the concept's mask in one of ``bank`` stored
    scenes, picked by a hash of the image's pixels, and the ``noise`` unit is drawn from the same
    hash, so both depend on the image alone (not on its batch). Images in ``[-1, 1]``.
    """

    def __init__(self, world: SceneWorld, concepts: Sequence[str] = LABEL_CONCEPTS, *, bank: int = 97) -> None:
        super().__init__()
        from lightning_dissect.segmenters import SyntheticSceneSegmenter

        self.segmenter = SyntheticSceneSegmenter(world)
        self.concepts = list(concepts)
        self.indices = [world.vocabulary.index(c) for c in self.concepts]
        self.size = world.image_size
        _, stored = world.render(bank, seed=12345)
        self.register_buffer("stored", stored)
        self.register_buffer("frequency", _concept_frequency(world, self.indices))
        self.units = nn.Identity()

    def unit(self, concept: str, kind: str) -> int:
        """The unit index of ``kind`` (one of :data:`LABEL_UNIT_KINDS`) for ``concept``."""
        return len(LABEL_UNIT_KINDS) * self.concepts.index(concept) + LABEL_UNIT_KINDS.index(kind)

    def forward(self, images: Tensor) -> Tensor:
        labels = self.segmenter.classify(images)
        weights = torch.arange(1, images[0].numel() + 1, dtype=torch.float64, device=images.device) % 1009
        keys = ((images.flatten(1).double() + 1.0) * 1000.0).round() @ weights
        keys = keys.long().tolist()
        other = _masks_of(self.stored[[k % self.stored.shape[0] for k in keys]], self.indices)
        own = _masks_of(labels, self.indices)
        noise = _noise_maps(keys, len(self.indices), self.size)
        units = self.units(_label_units(own, other, self.frequency, noise))
        return units.mean((2, 3))
