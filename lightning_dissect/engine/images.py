"""Network Dissection's image source and runner: a set of real images and a network that reads them.

The dissection passes need two things: a *source* of samples, addressable by index and split into
exact, disjoint shards across ranks, and a *probed network* whose layers are captured. For a
generator (:class:`~lightning_dissect.engine.runner.GeneratorRunner`) the source is a latent bank and the
images are the generator's output. Here the source is an :class:`ImageSet` (a map-style dataset of
real images, with or without their segmentations) and :class:`ImageRunner` feeds its images to the
reading network (a classifier, an encoder, a GAN's discriminator). Both runners go through the same
hooked call, so the passes, the metrics, the synchronisation and the report are shared.

Shards are contiguous index ranges of the dataset (never a ``DistributedSampler``, whose padding
repeats images): under DDP every image is counted exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from lightning_dissect._utils.checks import ImageRangeError
from lightning_dissect._utils.text import plural
from lightning_dissect.engine.hooks import LayerEdit, OutputSelector
from lightning_dissect.engine.latents import shard_indices
from lightning_dissect.engine.runner import GeneratedBatch, GeneratorRunner, LayerCallError, _check_maps
from lightning_dissect.segmenters.base import Segmenter, map_range, validate_images, validate_segmentation
from lightning_dissect.vocabulary import ConceptVocabulary

__all__ = ["ImageSet", "ImageRunner", "GroundTruth", "Transform"]

Transform = Callable[[Tensor], Tensor]
"""The network's own preprocessing, ``images -> network input`` (the segmenter sees the raw images)."""


class GroundTruth:
    """The concepts of segmentations that come with a dataset (no model is run to label images).

    Stands where a segmenter stands in the passes: it names the vocabulary; the labels themselves
    come from the :class:`ImageSet`.

    Args:
        vocabulary: The concepts the dataset's label values index.
        value_range: The value range of the dataset's images.
        source: Where the labels and their names come from (files, options), named when a label
            lies outside the vocabulary.

    Examples:
        >>> vocab = ConceptVocabulary(("unlabeled", "sky"), ("none", "material"))
        >>> GroundTruth(vocab).vocabulary.num_concepts
        2
    """

    def __init__(
        self, vocabulary: ConceptVocabulary, value_range: tuple[float, float] = (0.0, 1.0), *, source: str | None = None
    ) -> None:
        if not isinstance(vocabulary, ConceptVocabulary):
            raise TypeError(f"`vocabulary` must be a ConceptVocabulary, got {type(vocabulary).__name__}")
        self.vocabulary = vocabulary
        #: Where the labels and their names come from, for messages (e.g. "label.csv of DIR (--broden)").
        self.source = source
        self.value_range = tuple(float(v) for v in value_range)

    def __repr__(self) -> str:
        return f"GroundTruth({self.vocabulary.num_concepts} concepts)"


class ImageSet:
    """A map-style set of real images (and, optionally, their segmentations), read by index.

    Items may be an image tensor ``(C, H, W)`` or a tuple/list whose first element is one
    (``(image, class)`` as classification datasets yield). With ``vocabulary``, items must be
    ``(image, segmentation)`` pairs: an integer ``(H', W')`` label map, or ``(L, H', W')`` for
    several labels per pixel, at the image size or an integer fraction of it, whose values index
    ``vocabulary`` (the ground truth, as Broden provides it).

    A ``DataLoader`` is read through its ``dataset`` (a fresh, index-based access: the loader's own
    iteration, sampler and order are never touched). A tensor ``(N, C, H, W)`` is a set of ``N``
    images.

    Args:
        data: A ``Dataset``, a ``DataLoader``, a tensor of images or a sequence of items.
        vocabulary: The concepts of the dataset's segmentations; ``None`` when the images are
            labelled by a segmenter.
        value_range: The value range of the images (torchvision's convention is ``(0, 1)``).
        name: What to call the set in error messages.

    Raises:
        TypeError: ``data`` is not map-style (an ``IterableDataset``, a generator).
        ValueError: ``data`` is empty, or ``value_range`` is not ascending.

    Examples:
        >>> images = ImageSet(torch.rand(5, 3, 8, 8))
        >>> len(images), images[torch.tensor([0, 1])][0].shape
        (5, torch.Size([2, 3, 8, 8]))
    """

    #: Sources carry a seed (a latent bank seeds the generator noise); images have no noise.
    seed = 0

    def __init__(
        self,
        data: Dataset | DataLoader | Tensor | Sequence[Any],
        *,
        vocabulary: ConceptVocabulary | None = None,
        value_range: tuple[float, float] = (0.0, 1.0),
        name: str = "images",
    ) -> None:
        if isinstance(data, DataLoader):
            data = data.dataset
        if isinstance(data, IterableDataset) or not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
            raise TypeError(
                f"`{name}` must be a map-style dataset (with __len__ and __getitem__), a DataLoader of one, a tensor "
                f"(N, C, H, W) or a sequence; got {type(data).__name__}: every image is read by index so that each "
                "process reads its own exact share"
            )
        if isinstance(data, Tensor) and data.ndim != 4:
            raise ValueError(f"`{name}` as a tensor must be (N, C, H, W) images, got shape {tuple(data.shape)}")
        if isinstance(data, Tensor) and vocabulary is not None:
            raise ValueError(
                f"`{name}` is a tensor of images only: with `vocabulary` every item must be an (image, segmentation) "
                "pair, e.g. TensorDataset(images, segmentations)"
            )
        if len(data) == 0:
            raise ValueError(f"`{name}` is empty: there are no images to dissect")
        if vocabulary is not None and not isinstance(vocabulary, ConceptVocabulary):
            raise TypeError(f"`vocabulary` must be a ConceptVocabulary or None, got {type(vocabulary).__name__}")
        low, high = (float(v) for v in value_range)
        if not low < high:
            raise ValueError(f"`value_range` must be ascending (low, high), got {tuple(value_range)}")
        self.data = data
        self.vocabulary = vocabulary
        self.value_range = (low, high)
        self.name = name

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        labels = f", {plural(self.vocabulary.num_concepts, 'labelled concept')}" if self.vocabulary is not None else ""
        return f"ImageSet({plural(len(self), 'image')}{labels})"

    def item(self, index: int) -> tuple[Tensor, Tensor | None]:
        """Image ``index`` ``(C, H, W)`` and its segmentation (``None`` without a vocabulary)."""
        if isinstance(self.data, Tensor):
            return self.data[index], None
        return self._parse(self.data[index], index)

    def _parse(self, item: Any, index: int) -> tuple[Tensor, Tensor | None]:
        segmentation = None
        if isinstance(item, (tuple, list)):
            if not item:
                raise ValueError(f"`{self.name}` item {index} is an empty {type(item).__name__}")
            if self.vocabulary is not None:
                if len(item) < 2:
                    raise ValueError(
                        f"`{self.name}` item {index} has no segmentation: with `vocabulary` every item must be an "
                        "(image, segmentation) pair"
                    )
                segmentation = item[1]
            item = item[0]
        elif self.vocabulary is not None:
            raise ValueError(
                f"`{self.name}` item {index} is a {type(item).__name__}: with `vocabulary` every item must be an "
                "(image, segmentation) pair"
            )
        if not isinstance(item, Tensor):
            kind = type(item).__name__
            hint = " (add torchvision's ToTensor() to the dataset's transform)" if "Image" in kind else ""
            raise TypeError(f"`{self.name}` item {index} is a {kind}, not an image tensor (C, H, W){hint}")
        if item.ndim != 3:
            raise ValueError(f"`{self.name}` item {index} has shape {tuple(item.shape)}; an image is (C, H, W)")
        if segmentation is not None:
            segmentation = _check_segmentation_item(segmentation, item, index, self.name)
        return item, segmentation

    def __getitem__(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor | None]:
        """The images ``(B, C, H, W)`` at ``indices`` and their segmentations (or ``None``)."""
        idx = [int(i) for i in (indices.tolist() if isinstance(indices, Tensor) else indices)]
        if isinstance(self.data, Tensor):
            return self.data[idx], None
        many = getattr(self.data, "__getitems__", None)  # a dataset's batched access (as DataLoader uses it)
        raw = many(idx) if many is not None else [self.data[i] for i in idx]
        items = [self._parse(item, i) for item, i in zip(raw, idx)]
        shapes = {tuple(image.shape) for image, _ in items}
        if len(shapes) > 1:
            raise ValueError(
                f"`{self.name}` items {idx} have different shapes {sorted(shapes)}: resize the images to one size "
                "in the dataset's transform"
            )
        images = torch.stack([image for image, _ in items])
        if self.vocabulary is None:
            return images, None
        sizes = {tuple(seg.shape) for _, seg in items}  # type: ignore[union-attr]
        if len(sizes) > 1:
            raise ValueError(f"`{self.name}` segmentations of items {idx} have different shapes {sorted(sizes)}")
        return images, torch.stack([seg for _, seg in items])  # type: ignore[misc]


def _check_segmentation_item(segmentation: Any, image: Tensor, index: int, name: str) -> Tensor:
    """An integer ``(H', W')`` or ``(L, H', W')`` tensor at the image size or an integer fraction of it."""
    if not isinstance(segmentation, Tensor):
        segmentation = torch.as_tensor(segmentation)
    if segmentation.is_floating_point() or segmentation.dtype == torch.bool:
        raise TypeError(
            f"`{name}` item {index}: the segmentation has dtype {segmentation.dtype}; it must hold integer concept "
            "indices"
        )
    if segmentation.ndim not in (2, 3):
        raise ValueError(
            f"`{name}` item {index}: the segmentation has shape {tuple(segmentation.shape)}; expected (H, W) or "
            "(L, H, W) concept indices"
        )
    (h, w), (height, width) = segmentation.shape[-2:], image.shape[-2:]
    if h > height or w > width or height % h or width % w or height // h != width // w:
        raise ValueError(
            f"`{name}` item {index}: the image is {height}×{width} but its segmentation is {h}×{w}; the sizes "
            "disagree (a segmentation must be at the image size or an integer fraction of it)"
        )
    return segmentation


#: An :class:`ImageRunner` keeps the batches it read, for the next pass, up to this many bytes
#: (and, within one session, the maps the network gave for them, under the same budget).
IMAGE_CACHE_BYTES = 64 << 20


def _check_range(images: Tensor, source: ImageSet) -> None:
    """Images of ``source`` are finite and inside its declared ``value_range`` (with the usual tolerance)."""
    try:
        validate_images(images, source.value_range, name=source.name, channels=images.shape[1])
    except ImageRangeError:
        low, high = float(images.min()), float(images.max())
        raise ValueError(
            f"`{source.name}` has values in [{low:.4g}, {high:.4g}] outside the declared `value_range`="
            f"{tuple(source.value_range)}: declare the images' own range (e.g. value_range=(-1, 1), or (0, 255) for "
            "unscaled pixels)"
        ) from None


def _call_network(network: nn.Module, images: Tensor) -> Any:
    return network(images)


class ImageRunner(GeneratorRunner):
    """Feeds the images of an :class:`ImageSet` to a reading network, with hooks and checks.

    The sibling of :class:`~lightning_dissect.engine.runner.GeneratorRunner` for Network Dissection: its
    "source" is an :class:`ImageSet` instead of a latent bank, and the images of a batch are the
    set's own, not the network's output. The passes of a dissection call both the same way.

    Args:
        network: The network that reads images (``torch.compile``d and DDP-wrapped modules are
            looked through for hooks; calls go to the module as given).
        transform: The network's own preprocessing, applied to the images before the network
            (e.g. ImageNet normalisation); the segmenter and the unit strips see the raw images.
        selector: Picks the tensor of tuple/dict layer outputs.
        batch_size: Images per network call.
        device: Where to run; ``None``: the network's device.
        distributed: ``False`` runs on this process only even inside an initialised process group.

    Examples:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> runner = ImageRunner(net, batch_size=3)
        >>> with runner.session():
        ...     shapes = [tuple(b.activations["1"].shape) for b in runner.batches(ImageSet(torch.rand(5, 3, 8, 8)),
        ...                                                                    layers=["1"])]
        >>> shapes
        [(3, 4, 8, 8), (2, 4, 8, 8)]
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        transform: Transform | None = None,
        selector: OutputSelector | Mapping[str, OutputSelector] = None,
        batch_size: int = 32,
        device: torch.device | str | None = None,
        distributed: bool = True,
    ) -> None:
        if not isinstance(network, nn.Module):
            raise TypeError(f"`network` must be a torch.nn.Module, got {type(network).__name__}")
        if transform is not None and not callable(transform):
            raise TypeError(f"`transform` must be a callable images -> network input, got {transform!r}")
        super().__init__(
            network, generate=_call_network, selector=selector, batch_size=batch_size, device=device,
            distributed=distributed,
        )
        self.transform = transform
        #: Bytes of read batches kept for a second pass (see :meth:`load`); 0 reads every time.
        self.cache_bytes = IMAGE_CACHE_BYTES
        self._cache: dict[tuple[int, tuple[int, ...]], tuple[Tensor, Tensor | None]] = {}
        self._cached_bytes = 0
        #: Captured maps of unedited batches, kept for the next pass of the same session.
        self._maps: dict[tuple[Any, ...], dict[str, Tensor]] = {}
        self._maps_bytes = 0
        self._sessions = 0

    @contextmanager
    def session(self) -> Iterator[ImageRunner]:  # type: ignore[override]
        """Inference and eval mode for the block; the maps kept by :meth:`batches` live as long as it.

        The network may change between sessions (training), so its maps are never reused across
        them; the images are.
        """
        self._sessions += 1
        try:
            with super().session():
                yield self
        finally:
            self._sessions -= 1
            if not self._sessions:
                self._maps.clear()
                self._cached_bytes -= self._maps_bytes
                self._maps_bytes = 0

    def forward(  # type: ignore[override]
        self,
        images: Tensor,
        layers: Sequence[str] = (),
        *,
        edits: Mapping[str, LayerEdit] | None = None,
        seed: int | None = None,
        require_maps: bool = True,
    ) -> tuple[Any, dict[str, Tensor]]:
        """Run the network on ``images`` (after ``transform``), capturing ``layers``, applying ``edits``.

        Returns:
            ``(network output, activations)``.
        """
        x = self._move(images)
        if self.transform is not None:
            x = self.transform(x)
        return self._hooked(
            lambda: self.generate(self.generator, x), layers, edits=edits, seed=seed, require_maps=require_maps,
            network="network",
        )

    def shard(self, source: ImageSet) -> Tensor:  # type: ignore[override]
        """Indices of ``source`` this rank reads: a contiguous, disjoint share (no padding, no repeats)."""
        rank, size = self.rank_world
        return shard_indices(len(source), rank, size)

    def load(self, source: ImageSet, indices: Tensor) -> tuple[Tensor, Tensor | None]:
        """Images (float, on the runner's device) and dataset segmentations at ``indices``.

        Batches read once are kept (on the CPU, as read) while they fit in ``cache_bytes``
        together, so the second pass of a dissection does not decode or render them again; beyond
        the budget they are read again, and memory stays bounded whatever the number of images.
        """
        key = (id(source), tuple(int(i) for i in indices.tolist()))
        cached = self._cache.get(key)
        if cached is None:
            cached = source[indices]
            size = sum(t.numel() * t.element_size() for t in cached if t is not None)
            if self._cached_bytes + size <= self.cache_bytes:
                self._cache[key] = cached
                self._cached_bytes += size
        images, segmentation = cached
        if not images.is_floating_point():
            raise TypeError(
                f"`{source.name}` yields images of dtype {images.dtype}; images must be floating point in "
                f"{list(source.value_range)} (e.g. torchvision's ToTensor() gives float images in [0, 1])"
            )
        images = images.to(self.device)
        if segmentation is not None:
            segmentation = segmentation.to(self.device, torch.int64)
        return images, segmentation

    def labels(
        self, source: ImageSet, images: Tensor, segmentation: Tensor | None, segmenter: Segmenter, *, first: bool
    ) -> Tensor:
        """The concept labels of a batch: the dataset's segmentation, or the segmenter's (checked)."""
        if segmentation is not None:
            count = segmenter.vocabulary.num_concepts
            where = getattr(segmenter, "source", None) or f"the `vocabulary` given with `{source.name}`"
            validate_segmentation(
                segmentation, segmenter.vocabulary, batch_size=images.shape[0], name=f"`{source.name}` segmentation",
                range_hint=(
                    f"the ground-truth segmentations hold labels that {where} does not name "
                    f"({count} concepts, labels 0..{count - 1})"
                ),
            )
            return segmentation
        if isinstance(segmenter, GroundTruth):
            raise ValueError(f"`{source.name}` has no segmentations: pass a `segmenter` to label its images")
        if first:  # the range was checked on loading: the channel count for the segmenter here
            validate_images(
                map_range(images, source.value_range, segmenter.value_range), segmenter.value_range, name=source.name,
                channels=getattr(segmenter, "channels", 3),
            )
        return self.segment(map_range(images, source.value_range, segmenter.value_range), segmenter, check_images=False)

    def batches(  # type: ignore[override]
        self,
        source: ImageSet,
        indices: Tensor | None = None,
        *,
        layers: Sequence[str] = (),
        segmenter: Segmenter | None = None,
        edits: Mapping[str, LayerEdit] | None = None,
        require_maps: bool = True,
        on_batch: Callable[[int], None] | None = None,
        refuse_unit_range: bool = False,
    ) -> Iterator[GeneratedBatch]:
        """Read ``source[indices]`` batch by batch (default: this rank's shard) through the network.

        Images are range-checked on the first batch, labels on every batch. ``refuse_unit_range``
        is accepted for the passes' sake: an image set declares its range, and images are mapped
        to the segmenter's range.
        """
        if indices is None:
            indices = self.shard(source)
        for i, idx in enumerate(self.split(indices)):
            images, segmentation = self.load(source, idx)
            if i == 0:
                _check_range(images, source)
            acts = self._maps_of(source, idx, images, layers, edits, require_maps)
            labels = None if segmenter is None else self.labels(source, images, segmentation, segmenter, first=i == 0)
            yield GeneratedBatch(idx, images, acts, labels)
            if on_batch is not None:
                on_batch(len(idx))

    def _maps_of(
        self,
        source: ImageSet,
        idx: Tensor,
        images: Tensor,
        layers: Sequence[str],
        edits: Mapping[str, LayerEdit] | None,
        require_maps: bool,
    ) -> dict[str, Tensor]:
        """The network's maps of a batch: kept from an earlier pass of the same `session()` block, or computed.

        Within a session the network is fixed and in eval mode, so a second pass over the same
        images (the counting pass of a dissection) reuses the maps of the first while they fit in
        ``cache_bytes`` together with the cached images: the same tensors, without a second forward.
        Edited calls are never kept.
        """
        if edits or not layers or not self._sessions:
            return self.forward(images, layers, edits=edits, require_maps=require_maps)[1]
        key = (id(source), tuple(int(i) for i in idx.tolist()), tuple(layers), require_maps)
        acts = self._maps.get(key)
        if acts is None:
            _, acts = self.forward(images, layers, require_maps=require_maps)
            size = sum(a.numel() * a.element_size() for a in acts.values())
            if self._cached_bytes + size <= self.cache_bytes:
                self._maps[key] = acts
                self._cached_bytes += size
                self._maps_bytes += size
        return acts

    def regenerate(  # type: ignore[override]
        self,
        source: ImageSet,
        wanted: Sequence[int],
        *,
        layers: Sequence[str] = (),
        world_size: int = 1,
    ) -> Iterator[GeneratedBatch]:
        """Read the ``wanted`` images again and run them through the network (no noise to replay)."""
        indices = torch.tensor(sorted({int(i) for i in wanted}), dtype=torch.long)
        for idx in self.split(indices):
            images, _ = self.load(source, idx)
            _, acts = self.forward(images, layers)
            yield GeneratedBatch(idx, images, acts)

    def check(self, source: ImageSet, layers: Sequence[str], segmenter: Segmenter) -> None:
        """Read the first two images, run the network and the labels on them; raise naming the argument.

        The one check before any long work: the items, the image dtype and range, the network
        call, every layer (it runs once and gives unit maps) and the labels.
        """
        idx = torch.arange(min(2, len(source)))
        with self.session():
            images, segmentation = self.load(source, idx)
            _check_range(images, source)
            try:
                _, captured = self.forward(images, layers, require_maps=False)
            except LayerCallError as err:
                raise ValueError(f"`layers`: {err}") from err
            except Exception as err:  # noqa: BLE001 - reported with the input that failed
                raise ValueError(
                    f"`network` failed on the first images of `{source.name}` (shape {tuple(images.shape)}, "
                    f"dtype {images.dtype}, values in [{float(images.min()):.3g}, {float(images.max()):.3g}]"
                    f"{', after `transform`' if self.transform is not None else ''}): {type(err).__name__}: {err}"
                ) from err
            try:
                _check_maps(captured)
            except ValueError as err:
                raise ValueError(f"`layers`: {err}") from err
            self.labels(source, images, segmentation, segmenter, first=True)
