"""Network Dissection's sample source: a set of real images, with or without their segmentations.

:class:`ImageSet` is the :class:`~lightning_dissect.engine.runner.SampleSource` of a network that
reads images (run by :class:`~lightning_dissect.engine.reader.ImageRunner`), as a latent bank is a
generator's. :class:`GroundTruth` stands where a segmenter stands when the labels come with the
images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from lightning_dissect._utils.checks import argument_name
from lightning_dissect._utils.text import plural
from lightning_dissect.engine.layouts import channels_last_images_hint
from lightning_dissect.segmenters.base import Segmenter, check_segmenter
from lightning_dissect.vocabulary import ConceptVocabulary

__all__ = ["ImageSet", "GroundTruth", "Labeller", "Transform", "resolve_images", "check_label_source"]

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

    def __init__(
        self,
        data: Dataset | DataLoader | Tensor | Sequence[Any],
        *,
        vocabulary: ConceptVocabulary | None = None,
        value_range: tuple[float, float] = (0.0, 1.0),
        name: str = "images",
    ) -> None:
        argument = argument_name(name)
        if isinstance(data, DataLoader):
            data = data.dataset
        if isinstance(data, IterableDataset) or not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
            raise TypeError(
                f"{argument} must be a map-style dataset (with __len__ and __getitem__), a DataLoader of one, a tensor "
                f"(N, C, H, W) or a sequence; got {type(data).__name__}: every image is read by index so that each "
                "process reads its own exact share"
            )
        if isinstance(data, Tensor) and data.ndim == 4 and channels_last_images_hint(data.shape, argument):
            raise ValueError(channels_last_images_hint(data.shape, argument))
        if isinstance(data, Tensor) and data.ndim != 4:
            raise ValueError(f"{argument} as a tensor must be (N, C, H, W) images, got shape {tuple(data.shape)}")
        if isinstance(data, Tensor) and vocabulary is not None:
            raise ValueError(
                f"{argument} is a tensor of images only: with `vocabulary` every item must be an (image, segmentation) "
                "pair, e.g. TensorDataset(images, segmentations)"
            )
        if len(data) == 0:
            raise ValueError(f"{argument} is empty: there are no images to dissect")
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

    @property
    def argument(self) -> str:
        """How messages name the set: ``name`` quoted, or as it is for a command-line option (``--images``)."""
        return argument_name(self.name)

    def noise_seed(self, first_index: int) -> None:
        """Images carry no noise to seed: ``None`` (see :class:`~lightning_dissect.engine.runner.SampleSource`)."""
        return None

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
                raise ValueError(f"{self.argument} item {index} is an empty {type(item).__name__}")
            if self.vocabulary is not None:
                if len(item) < 2:
                    raise ValueError(
                        f"{self.argument} item {index} has no segmentation: with `vocabulary` every item must be an "
                        "(image, segmentation) pair"
                    )
                segmentation = item[1]
            item = item[0]
        elif self.vocabulary is not None:
            raise ValueError(
                f"{self.argument} item {index} is a {type(item).__name__}: with `vocabulary` every item must be an "
                "(image, segmentation) pair"
            )
        if not isinstance(item, Tensor):
            kind = type(item).__name__
            hint = " (add torchvision's ToTensor() to the dataset's transform)" if "Image" in kind else ""
            raise TypeError(f"{self.argument} item {index} is a {kind}, not an image tensor (C, H, W){hint}")
        hint = channels_last_images_hint(item.shape, f"{self.argument} item {index}") if item.ndim == 3 else None
        if hint is not None:
            raise ValueError(f"{hint} (e.g. in the dataset's transform)")
        if item.ndim != 3:
            raise ValueError(f"{self.argument} item {index} has shape {tuple(item.shape)}; an image is (C, H, W)")
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
                f"{self.argument} items {idx} have different shapes {sorted(shapes)}: resize the images to one size "
                "in the dataset's transform"
            )
        images = torch.stack([image for image, _ in items])
        if self.vocabulary is None:
            return images, None
        segmentations = [seg for _, seg in items if seg is not None]  # every item has one (checked by _parse)
        sizes = {tuple(seg.shape) for seg in segmentations}
        if len(sizes) > 1:
            raise ValueError(f"{self.argument} segmentations of items {idx} have different shapes {sorted(sizes)}")
        return images, torch.stack(segmentations)


Labeller = Segmenter | GroundTruth
"""What labels the images: a segmenter run on them, or the dataset's own segmentations."""


def check_label_source(
    images: Any,
    segmenter: Segmenter | None,
    vocabulary: ConceptVocabulary | None,
    value_range: tuple[float, float] | None,
) -> None:
    """The refusal rules of :func:`resolve_images` that hold before the images are read.

    An :class:`ImageSet` carries its own ``vocabulary`` and ``value_range``; the concepts come from
    a ``segmenter`` or from the dataset's own segmentations (``vocabulary``), never both.

    Raises:
        ValueError: Naming the arguments that do not go together.
    """
    if isinstance(images, ImageSet) and (vocabulary is not None or value_range is not None):
        raise ValueError("`vocabulary` and `value_range` belong to the ImageSet given as `images`; set them there")
    if segmenter is not None and vocabulary is not None:
        raise ValueError("give either a `segmenter` or the dataset's segmentations with `vocabulary`, not both")


def resolve_images(
    images: ImageSet | Dataset | DataLoader | Tensor | Sequence[Any],
    segmenter: Segmenter | None = None,
    vocabulary: ConceptVocabulary | None = None,
    value_range: tuple[float, float] | None = None,
) -> tuple[ImageSet, Labeller]:
    """The image set and what labels it: the one rule of every function that reads images.

    ``images`` is an :class:`ImageSet` (which carries its vocabulary and value range) or anything
    :class:`ImageSet` accepts, built with ``vocabulary`` and ``value_range`` (default ``(0, 1)``);
    a dataset that carries its own ``vocabulary`` (``BrodenDataset``) needs neither. The labels
    come from ``segmenter`` (checked) or, without one, from the set's own segmentations (a
    :class:`GroundTruth` of its vocabulary).

    Raises:
        ValueError: ``vocabulary`` or ``value_range`` given beside an :class:`ImageSet`; both a
            ``segmenter`` and the dataset's segmentations; or neither.

    Examples:
        >>> vocab = ConceptVocabulary(("unlabeled", "sky"), ("none", "material"))
        >>> data = [(torch.rand(3, 4, 4), torch.ones(4, 4, dtype=torch.long)) for _ in range(3)]
        >>> resolve_images(data, vocabulary=vocab)
        (ImageSet(3 images, 2 labelled concepts), GroundTruth(2 concepts))
        >>> resolve_images(ImageSet(data, vocabulary=vocab), vocabulary=vocab)
        Traceback (most recent call last):
        ...
        ValueError: `vocabulary` and `value_range` belong to the ImageSet given as `images`; set them there
    """
    check_label_source(images, segmenter, vocabulary, value_range)
    if isinstance(images, ImageSet):
        source = images
    else:
        if vocabulary is None and segmenter is None:  # a dataset that carries its concepts needs nothing more
            vocabulary = getattr(images, "vocabulary", None)
        source = ImageSet(images, vocabulary=vocabulary, value_range=value_range or (0.0, 1.0))
    if segmenter is not None:
        check_segmenter(segmenter)
        if source.vocabulary is not None:
            raise ValueError("give either a `segmenter` or the dataset's segmentations with `vocabulary`, not both")
        return source, segmenter
    if source.vocabulary is None:
        raise ValueError(
            "pass a `segmenter` to label the images, or a `vocabulary` naming the concepts of the dataset's own "
            "segmentations (items (image, segmentation))"
        )
    named = getattr(source.data, "labels_source", None)  # where a dataset's labels come from, for messages
    return source, GroundTruth(source.vocabulary, source.value_range, source=named)


def _check_segmentation_item(segmentation: Any, image: Tensor, index: int, name: str) -> Tensor:
    """An integer ``(H', W')`` or ``(L, H', W')`` tensor at the image size or an integer fraction of it."""
    name = argument_name(name)
    if not isinstance(segmentation, Tensor):
        segmentation = torch.as_tensor(segmentation)
    if segmentation.is_floating_point() or segmentation.dtype == torch.bool:
        raise TypeError(
            f"{name} item {index}: the segmentation has dtype {segmentation.dtype}; it must hold integer concept "
            "indices"
        )
    if segmentation.ndim not in (2, 3):
        raise ValueError(
            f"{name} item {index}: the segmentation has shape {tuple(segmentation.shape)}; expected (H, W) or "
            "(L, H, W) concept indices"
        )
    (h, w), (height, width) = segmentation.shape[-2:], image.shape[-2:]
    if h > height or w > width or height % h or width % w or height // h != width // w:
        raise ValueError(
            f"{name} item {index}: the image is {height}×{width} but its segmentation is {h}×{w}; the sizes "
            "disagree (a segmentation must be at the image size or an integer fraction of it)"
        )
    return segmentation


#: Names this module held in the previous release, and where they live now.
_MOVED = {"ImageRunner": "lightning_dissect.engine.reader", "IMAGE_CACHE_BYTES": "lightning_dissect.engine.reader"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:  # `from lightning_dissect.images import ImageRunner` keeps working for one release
        from lightning_dissect._utils.deprecation import moved_attribute

        return moved_attribute(f"{__name__}.{name}", _MOVED[name], name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
