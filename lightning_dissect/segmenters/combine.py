"""Segmenters built from segmenters: input adaptation and merged vocabularies."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._utils.checks import check_int
from ..vocabulary import NO_CATEGORY, ConceptVocabulary
from .base import (
    Segmenter,
    _nearest_index,
    check_segmenter,
    check_value_range,
    concept_scores_of,
    map_range,
    resolve_resolution,
    segmenter_channels,
    validate_images,
    validate_segmentation,
)

__all__ = ["AdaptedSegmenter", "MergedSegmenter", "adapt_input", "merge_segmenters"]

#: ITU-R BT.601 luma weights, used to turn RGB into grey for a 1-channel segmenter.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def _map_channels(images: Tensor, target: int) -> Tensor:
    c = images.shape[1]
    if c == target:
        return images
    if c == 1:
        return images.expand(-1, target, -1, -1)
    # c == 3 and target == 1 (checked at construction): luminance
    w = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * w).sum(1, keepdim=True)


def _check_channel_map(source: int, target: int, what: str) -> None:
    if source == target or source == 1 or (source == 3 and target == 1):
        return
    raise ValueError(
        f"`{what}`: cannot map {source}-channel images to a segmenter that takes {target} channels "
        "(supported: equal counts, 1 → any (repeat the grey channel), 3 → 1 (luminance)); pass a "
        f"`generate=` that returns {target}-channel images instead"
    )


class AdaptedSegmenter:
    """A segmenter that maps images to what another segmenter takes; see :func:`adapt_input`.

    Attributes:
        segmenter: The wrapped segmenter.
        value_range: The value range of the images it accepts.
        channels: The channel count of the images it accepts.
        vocabulary: The wrapped segmenter's.
        multilabel: The wrapped segmenter's.
    """

    def __init__(self, segmenter: Segmenter, value_range: tuple[float, float], channels: int) -> None:
        check_segmenter(segmenter, "segmenter")
        channels = check_int(channels, "channels", minimum=1)
        _check_channel_map(channels, segmenter_channels(segmenter), "channels")
        self.segmenter = segmenter
        self.value_range = check_value_range(value_range, "value_range")
        self.channels = channels
        self.vocabulary: ConceptVocabulary = segmenter.vocabulary
        self.multilabel = bool(getattr(segmenter, "multilabel", False))

    def adapt(self, images: Tensor) -> Tensor:
        """Map validated images to the wrapped segmenter's value range and channel count."""
        x = map_range(images, self.value_range, tuple(self.segmenter.value_range))
        return _map_channels(x, segmenter_channels(self.segmenter))

    def __call__(self, images: Tensor) -> Tensor:
        """Validate ``images`` ``(B, channels, H, W)`` in ``value_range``, map them, segment them."""
        validate_images(images, self.value_range, channels=self.channels)
        return self.segmenter(self.adapt(images))

    def concept_scores(self, images: Tensor) -> Tensor:
        """The wrapped segmenter's soft concept scores of the mapped images (differentiable).

        Raises:
            TypeError: If the wrapped segmenter has no ``concept_scores``.
        """
        validate_images(images, self.value_range, channels=self.channels)
        return concept_scores_of(self.segmenter)(self.adapt(images))

    def __repr__(self) -> str:
        return f"adapt_input({self.segmenter!r}, value_range={self.value_range}, channels={self.channels})"


def adapt_input(
    segmenter: Segmenter,
    value_range: tuple[float, float] | None = None,
    channels: int | None = None,
) -> AdaptedSegmenter:
    """Let ``segmenter`` take images in another value range or with another channel count.

    The images are mapped linearly from ``value_range`` to the segmenter's own range (e.g.
    ``[0, 1]`` → ``[-1, 1]``: ``2x - 1``) and, for ``channels=1``, the grey channel is repeated
    to RGB (3 → 1 uses the ITU-R BT.601 luminance ``0.299 R + 0.587 G + 0.114 B``).

    Args:
        segmenter: The segmenter to wrap.
        value_range: The ``(low, high)`` range of the images you give; ``None`` = the segmenter's.
        channels: The channel count of the images you give; ``None`` = the segmenter's.

    Returns:
        An :class:`AdaptedSegmenter` with this ``value_range`` and ``channels`` and the
        segmenter's vocabulary.

    Raises:
        TypeError: If ``segmenter`` is not a segmenter or ``value_range`` not a pair of numbers.
        ValueError: If ``value_range`` is not ascending or the channel counts cannot be mapped.

    Examples:
        >>> from lightning_dissect import ConceptVocabulary
        >>> from lightning_dissect.segmenters import CallableSegmenter
        >>> vocab = ConceptVocabulary(("unlabeled", "bright"), ("none", "colour"))
        >>> rgb = CallableSegmenter(lambda x: (x.mean(1) > 0).long(), vocab)  # takes [-1, 1] RGB
        >>> grey = adapt_input(rgb, value_range=(0, 1), channels=1)
        >>> grey(torch.tensor([0.2, 0.9]).view(1, 1, 1, 2)).tolist()
        [[[0, 1]]]

    """
    check_segmenter(segmenter, "segmenter")
    vr = tuple(segmenter.value_range) if value_range is None else value_range
    ch = segmenter_channels(segmenter) if channels is None else channels
    return AdaptedSegmenter(segmenter, vr, ch)  # type: ignore[arg-type]


def _nearest(labels: Tensor, size: tuple[int, int]) -> Tensor:
    h, w = labels.shape[-2:]
    if (h, w) == tuple(size):
        return labels
    rows = _nearest_index(h, size[0], labels.device)
    cols = _nearest_index(w, size[1], labels.device)
    return labels[..., rows[:, None], cols[None, :]]


class MergedSegmenter:
    """Several segmenters as one multi-label segmenter with one vocabulary.

    As GAN Dissection combines objects, parts, materials and colours, each segmenter contributes
    its label channels (1 for a single-label segmenter, ``L`` for a multi-label one) and its
    concepts; the output is int64 ``(B, L_total, H', W')`` (``multilabel`` is always ``True``).

    **Vocabulary.** Index 0 is one shared ``"unlabeled"`` (category ``"none"``); then the concepts
    of each segmenter in order, without its unlabeled entry (which maps to 0). Categories and
    part → whole links are kept. A name that an earlier segmenter already uses is prefixed:
    ``"<prefix>/<name>"``, with ``prefixes[i]`` (default ``"seg<i>"``, ``i`` the segmenter's
    position), e.g. ``"seg1/red"``.

    **Images.** The merged segmenter takes images in ``value_range`` (default: the first
    segmenter's) with the first segmenter's channel count; each segmenter receives them mapped
    linearly to its own value range. All must take the same channel count (wrap the others with
    :func:`adapt_input`).

    **Resolution.** Label maps are resized by nearest sample (the input pixel whose centre is
    nearest, ``F.interpolate(mode="nearest-exact")``) to ``resolution`` (``int`` or
    ``(H', W')``), or by default to the first segmenter's output size.

    Args:
        segmenters: The segmenters to merge (at least one).
        resolution: Output size; ``None`` = the first segmenter's output size.
        value_range: The value range of the images given; ``None`` = the first segmenter's.
        prefixes: One prefix per segmenter for clashing names.

    Raises:
        TypeError: If an argument is not a segmenter.
        ValueError: If none is given, channel counts differ, ``prefixes`` has the wrong length, or
            a prefixed name still clashes.

    Examples:
        >>> from lightning_dissect import ConceptVocabulary
        >>> from lightning_dissect.segmenters import CallableSegmenter
        >>> objects = CallableSegmenter(lambda x: (x[:, 0] > 0).long() * 2,
        ...     ConceptVocabulary(("unlabeled", "sky", "tree"), ("none", "stuff", "object")))
        >>> colours = CallableSegmenter(lambda x: (x[:, 1] > 0).long(),
        ...     ConceptVocabulary(("none", "sky"), ("none", "colour")), value_range=(0, 1))
        >>> merged = merge_segmenters(objects, colours)
        >>> merged.vocabulary.names, merged.vocabulary.categories
        (('unlabeled', 'sky', 'tree', 'seg1/sky'), ('none', 'stuff', 'object', 'colour'))
        >>> merged(torch.ones(2, 3, 4, 4)).shape
        torch.Size([2, 2, 4, 4])

    """

    multilabel = True

    def __init__(
        self,
        *segmenters: Segmenter,
        resolution: int | tuple[int, int] | None = None,
        value_range: tuple[float, float] | None = None,
        prefixes: Sequence[str] | None = None,
    ) -> None:
        if not segmenters:
            raise ValueError("MergedSegmenter needs at least one segmenter")
        for i, seg in enumerate(segmenters):
            check_segmenter(seg, f"segmenters[{i}]")
        channels = [segmenter_channels(s) for s in segmenters]
        if len(set(channels)) > 1:
            raise ValueError(
                f"MergedSegmenter: the segmenters take different channel counts {channels}; wrap them with "
                "`segmenters.adapt_input(segmenter, channels=...)` so that all take the same"
            )
        if prefixes is None:
            prefixes = [f"seg{i}" for i in range(len(segmenters))]
        prefixes = [str(p) for p in prefixes]
        if len(prefixes) != len(segmenters):
            raise ValueError(f"`prefixes` has {len(prefixes)} entries for {len(segmenters)} segmenters")
        if resolution is not None:
            resolve_resolution(resolution, (1, 1))
        self.segmenters = tuple(segmenters)
        self.resolution = resolution
        self.value_range = check_value_range(
            segmenters[0].value_range if value_range is None else value_range, "value_range"
        )
        self.channels = channels[0]
        self.prefixes = tuple(prefixes)
        self.vocabulary, self.tables = self._merge_vocabularies()

    def _merge_vocabularies(self) -> tuple[ConceptVocabulary, tuple[Tensor, ...]]:
        names, categories, parents = ["unlabeled"], [NO_CATEGORY], [None]
        used = {"unlabeled"}
        tables = []
        for seg, prefix in zip(self.segmenters, self.prefixes):
            vocab = seg.vocabulary
            table = torch.zeros(vocab.num_concepts, dtype=torch.int64)
            for k, name in enumerate(vocab.names):
                if k == vocab.unlabeled_index:
                    continue
                if name in used:
                    name = f"{prefix}/{name}"
                    if name in used:
                        raise ValueError(
                            f"MergedSegmenter: concept name {name!r} is not unique even with the prefix "
                            f"{prefix!r}; give other `prefixes`"
                        )
                used.add(name)
                table[k] = len(names)
                names.append(name)
                categories.append(vocab.categories[k])
                parents.append(None)
            if vocab.parents is not None:
                for k, p in enumerate(vocab.parents):
                    if p is not None and k != vocab.unlabeled_index:
                        parents[int(table[k])] = int(table[p])
            tables.append(table)
        has_parents = any(p is not None for p in parents)
        vocab = ConceptVocabulary(
            tuple(names), tuple(categories), 0, tuple(parents) if has_parents else None
        )
        return vocab, tuple(tables)

    def __call__(self, images: Tensor) -> Tensor:
        """Label ``images`` ``(B, C, H, W)`` in ``value_range``; int64 ``(B, L_total, H', W')``."""
        validate_images(images, self.value_range, channels=self.channels)
        size: tuple[int, int] | None = None
        if self.resolution is not None:
            size = resolve_resolution(self.resolution, tuple(images.shape[-2:]))
        parts = []
        for i, (seg, table) in enumerate(zip(self.segmenters, self.tables)):
            labels = seg(map_range(images, self.value_range, tuple(seg.value_range)))
            validate_segmentation(
                labels, seg.vocabulary, images.shape[0], name=f"segmenters[{i}] output",
                multilabel=bool(getattr(seg, "multilabel", False)),
            )  # fmt: skip
            labels = table.to(labels.device)[labels.long()]
            if labels.ndim == 3:
                labels = labels.unsqueeze(1)
            if size is None:
                size = (int(labels.shape[-2]), int(labels.shape[-1]))
            parts.append(_nearest(labels, size).to(images.device))
        return torch.cat(parts, dim=1)

    def __repr__(self) -> str:
        inner = ", ".join(type(s).__name__ for s in self.segmenters)
        return (
            f"MergedSegmenter({inner}, concepts={self.vocabulary.num_concepts}, "
            f"resolution={self.resolution}, value_range={self.value_range})"
        )


def merge_segmenters(
    *segmenters: Segmenter,
    resolution: int | tuple[int, int] | None = None,
    value_range: tuple[float, float] | None = None,
    prefixes: Sequence[str] | None = None,
) -> MergedSegmenter:
    """Merge segmenters into one multi-label segmenter; see :class:`MergedSegmenter`.

    Examples:
        >>> from lightning_dissect import ConceptVocabulary
        >>> from lightning_dissect.segmenters import CallableSegmenter
        >>> a = CallableSegmenter(lambda x: torch.ones_like(x[:, 0]).long(),
        ...     ConceptVocabulary(("-", "a"), ("none", "object")))
        >>> merge_segmenters(a, a, prefixes=("x", "y")).vocabulary.names
        ('unlabeled', 'a', 'y/a')

    """
    return MergedSegmenter(*segmenters, resolution=resolution, value_range=value_range, prefixes=prefixes)
