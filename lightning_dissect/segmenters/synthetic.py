"""The embedded default segmenter: labels any image of the :class:`SceneWorld` from its colours.

Every concept of the world is painted in its own base colour plus bounded texture, and the base
colours are further apart than twice the texture bound, so the nearest base colour of a pixel is
its concept: the segmenter agrees exactly with the ground truth on the world's own images, and it
labels the images of a generator trained on the world by the same rule. A pixel farther than
``max_distance`` from every base colour gets label 0 ("unlabeled") — a generator's off-palette
colours are not any concept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .base import (
    _check_resolution_arg,
    resample_labels,
    resolve_resolution,
    validate_images,
)
from .world import SceneWorld

__all__ = ["DEFAULT_MAX_DISTANCE", "DEFAULT_TEMPERATURE", "SyntheticSceneDataset", "SyntheticSceneSegmenter"]

#: Default colour distance (Euclidean, RGB in [-1, 1]) beyond which a pixel is unlabeled. It is
#: above the largest texture deviation (0.08·√3 ≈ 0.139) and at most half the smallest distance
#: between two base colours (≈ 0.55), so the balls around the base colours do not overlap.
DEFAULT_MAX_DISTANCE = 0.25

#: Default softness of :meth:`SyntheticSceneSegmenter.concept_scores`: the squared colour distance
#: per unit of log-odds. A pixel of the world's own texture (at most 0.139 from its base colour,
#: at least 0.41 from every other) gets its concept's probability above 0.999.
DEFAULT_TEMPERATURE = 0.02


class SyntheticSceneSegmenter:
    """Nearest-base-colour segmenter for :class:`SceneWorld` images.

    Args:
        world: The world (or its image size; a :class:`SceneWorld` is built). Only its palette and
            vocabulary are used: images of any size can be segmented.
        resolution: Output size, ``int`` or ``(H', W')``; ``None`` = the image size. Labels are
            computed per image pixel, then resampled with
            :func:`~lightning_dissect.segmenters.base.resample_labels`: when smaller, each output
            cell takes the most frequent label among the pixels whose centres it contains (ties to
            the lowest label); when larger, the nearest pixel.
        multilabel: Return ``(B, 2, H', W')``: channel 0 the finest concept, channel 1 its whole
            (``house`` for a window) or 0 where it has none (see :meth:`SceneWorld.multilabel`).
        max_distance: Pixels farther than this from every base colour (Euclidean in [-1, 1] RGB
            units) are unlabeled (0). ``float("inf")`` labels every pixel.
        chunk_size: Images classified per chunk (bounds memory).
        temperature: Softness of :meth:`concept_scores` (squared colour distance per unit of
            log-odds). Smaller is closer to the hard labels, larger gives smoother gradients.

    Examples:
        >>> world = SceneWorld(32)
        >>> images, labels = world.render(8, seed=0)
        >>> seg = SyntheticSceneSegmenter(world)
        >>> bool((seg(images) == labels).all())
        True
        >>> SyntheticSceneSegmenter(world, resolution=16, multilabel=True)(images).shape
        torch.Size([8, 2, 16, 16])
        >>> k = world.vocabulary.index("roof")  # paint a concept's base colour: it segments as it
        >>> int(seg(world.palette[k].view(1, 3, 1, 1).expand(1, 3, 4, 4))[0, 0, 0]) == k
        True
        >>> scores = seg.concept_scores(images)  # soft, differentiable; its argmax is the label
        >>> bool((scores.argmax(1) == labels).all())
        True

    """

    def __init__(
        self,
        world: SceneWorld | int = 32,
        resolution: int | tuple[int, int] | None = None,
        multilabel: bool = False,
        max_distance: float = DEFAULT_MAX_DISTANCE,
        chunk_size: int = 256,
        temperature: float = DEFAULT_TEMPERATURE,
    ) -> None:
        if isinstance(world, int) and not isinstance(world, bool):
            world = SceneWorld(world)
        if not isinstance(world, SceneWorld):
            raise TypeError(
                f"SyntheticSceneSegmenter needs a SceneWorld or an image size, got {world!r}."
            )
        _check_resolution_arg(resolution)
        if not max_distance > 0:
            raise ValueError(f"max_distance must be positive, got {max_distance}.")
        self.world = world
        self.vocabulary = world.vocabulary
        self.value_range: tuple[float, float] = (-1.0, 1.0)
        self.channels = 3
        self.multilabel = bool(multilabel)
        self.resolution = resolution
        self.max_distance = float(max_distance)
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"`temperature` must be a positive finite number, got {temperature!r}.")
        self.temperature = float(temperature)
        self.chunk_size = max(1, int(chunk_size))
        self._palette = world.palette[1:].clone()  # concepts 1..C-1; label 0 is never a colour
        self._parents = world.vocabulary.parent_table()

    def classify(self, images: Tensor) -> Tensor:
        """Per-pixel labels ``(B, H, W)`` at the image resolution (no validation, no resampling)."""
        pal = self._palette.to(images.device)
        p2 = (pal * pal).sum(1).view(1, -1, 1, 1)
        limit = self.max_distance**2
        out = torch.empty(
            images.shape[0], *images.shape[2:], dtype=torch.int64, device=images.device
        )
        for s in range(0, images.shape[0], self.chunk_size):
            x = images[s : s + self.chunk_size].float()
            x2 = (x * x).sum(1, keepdim=True)
            d2 = x2 - 2.0 * torch.einsum("bchw,kc->bkhw", x, pal) + p2
            best, idx = d2.min(1)
            out[s : s + self.chunk_size] = torch.where(best <= limit, idx + 1, 0)
        return out

    def concept_scores(self, images: Tensor) -> Tensor:
        """Soft, differentiable per-pixel concept scores ``(B, C, H', W')`` in ``[0, 1]``.

        The softmax over ``−d²/temperature`` of the squared distances ``d²`` to every base colour,
        with ``−max_distance²/temperature`` for "unlabeled" (index 0): at the image resolution
        the arg-max over concepts is exactly the label :meth:`__call__` gives (the nearest base
        colour within ``max_distance``, else 0). With ``multilabel``, a whole also scores its
        parts' probabilities (``house`` = house + window + door + roof), as its label channel
        does. At a smaller ``resolution`` the scores are averaged over each cell (``area``), at a
        larger one the nearest pixel is taken. Not run under inference mode: gradients flow back
        to ``images``.

        Args:
            images: ``(B, 3, H, W)`` in [-1, 1].

        Returns:
            Float32 ``(B, C, H', W')``; the channels sum to 1 per pixel (without ``multilabel``).
        """
        validate_images(images, self.value_range)
        x = images.float()
        pal = self._palette.to(x.device)
        d2 = (x * x).sum(1, keepdim=True) - 2.0 * torch.einsum("bchw,kc->bkhw", x, pal)
        d2 = d2 + (pal * pal).sum(1).view(1, -1, 1, 1)
        unlabeled = torch.full_like(d2[:, :1], self.max_distance**2)
        probs = torch.softmax(torch.cat([unlabeled, d2], 1) / -self.temperature, dim=1)
        if self.multilabel:
            parents = self._parents.to(x.device)
            parts = (parents != 0).nonzero().flatten()
            probs = probs.index_add(1, parents[parts], probs[:, parts])
        size = resolve_resolution(self.resolution, tuple(images.shape[-2:]))
        if tuple(probs.shape[-2:]) != size:
            shrink = size[0] <= probs.shape[-2] and size[1] <= probs.shape[-1]
            probs = F.interpolate(probs, size=size, mode="area" if shrink else "nearest-exact")
        return probs

    def __call__(self, images: Tensor) -> Tensor:
        """Label images ``(B, 3, H, W)`` in [-1, 1].

        Returns int64 ``(B, H', W')`` or ``(B, 2, H', W')`` on the images' device.
        """
        validate_images(images, self.value_range)
        with torch.inference_mode():
            labels = self.classify(images)
            size = resolve_resolution(self.resolution, tuple(images.shape[-2:]))
            if tuple(labels.shape[-2:]) != size:
                labels = resample_labels(labels, size, self.vocabulary.num_concepts)
            if self.multilabel:
                labels = torch.stack([labels, self._parents.to(labels.device)[labels]], dim=1)
        return labels

    def __repr__(self) -> str:
        return (
            f"SyntheticSceneSegmenter({self.world!r}, resolution={self.resolution}, "
            f"multilabel={self.multilabel}, max_distance={self.max_distance})"
        )


class SyntheticSceneDataset(Dataset):
    """The first ``n`` samples of a :class:`SceneWorld` stream, rendered on demand.

    Args:
        n: Number of samples.
        seed: Stream seed (different seeds give independent datasets).
        image_size: Side of the images (>= 16).
        world: Use this world instead of building one (``image_size`` is then ignored).

    ``dataset[i]`` is ``(image, labels)``: float32 ``(3, S, S)`` in [-1, 1] and int64 ``(S, S)``,
    identical whenever and wherever it is rendered. ``__getitems__`` renders a whole batch in one
    vectorised call (used by ``DataLoader``); single-item access renders and keeps the aligned
    block of 32 samples around the index, so sequential access is fast too.

    Examples:
        >>> ds = SyntheticSceneDataset(10, seed=0, image_size=16)
        >>> image, labels = ds[3]
        >>> len(ds), image.shape, labels.shape
        (10, torch.Size([3, 16, 16]), torch.Size([16, 16]))

    """

    def __init__(
        self, n: int, seed: int = 0, image_size: int = 32, world: SceneWorld | None = None
    ) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}.")
        self.n = int(n)
        self.seed = int(seed)
        self.world = world if world is not None else SceneWorld(image_size)
        self.image_size = self.world.image_size
        self.block_size = 32
        self._block: tuple[int, Tensor, Tensor] | None = None

    def __len__(self) -> int:
        return self.n

    def _check(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for a dataset of {self.n} samples")
        return index

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        # Rendering one sample costs about as much as rendering a block (per-call overhead), so
        # single-item access renders the aligned block holding the index and keeps it.
        index = self._check(index)
        block = index // self.block_size
        if self._block is None or self._block[0] != block:
            start = block * self.block_size
            stop = min(start + self.block_size, self.n)
            self._block = (block, *self.world.render_indices(range(start, stop), self.seed))
        offset = index - block * self.block_size
        return self._block[1][offset].clone(), self._block[2][offset].clone()

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, Tensor]]:
        images, labels = self.world.render_indices([self._check(i) for i in indices], self.seed)
        return list(zip(images.unbind(0), labels.unbind(0), strict=True))
