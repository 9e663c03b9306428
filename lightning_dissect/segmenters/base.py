"""The segmenter protocol, concept vocabularies and input/output validation.

A *segmenter* turns a batch of images into per-pixel concept labels. Everything the dissection
needs to know about it is small: the concepts it can name (a :class:`ConceptVocabulary`), the value
range of the images it expects, and whether it returns one label per pixel or several.

Conventions (see ``docs/segmenters.md``):

* Images are float tensors ``(B, C, H, W)`` in the segmenter's declared ``value_range``, with
  ``C`` its ``channels`` (3, RGB, unless it declares otherwise).
* Single-label output is int64 ``(B, H', W')``; multi-label output is int64 ``(B, L, H', W')``
  (``L`` label channels, e.g. part and whole).
* Label ``vocabulary.unlabeled_index`` (0 by default) means "no label" and is skipped by the
  statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from lightning_dissect._utils.checks import (
    ImageRangeError,
    argument_name,
    check_images,
    check_int,
    check_segmentation,
)
from lightning_dissect.vocabulary import ConceptVocabulary

__all__ = [
    "CallableSegmenter",
    "ConceptScores",
    "Segmenter",
    "check_segmenter",
    "check_value_range",
    "concept_scores_of",
    "resample_labels",
    "map_range",
    "resolve_resolution",
    "segmenter_channels",
    "validate_images",
    "validate_segmentation",
]


@runtime_checkable
class Segmenter(Protocol):
    """What the dissection needs from a segmenter.

    Attributes:
        vocabulary: The concepts the labels index.
        value_range: ``(low, high)`` value range of the images it expects, e.g. ``(-1.0, 1.0)``.
        multilabel: ``True`` if it returns ``(B, L, H', W')`` label channels, ``False`` for
            ``(B, H', W')``.
        channels: Optional (not part of the ``isinstance`` check): the channel count of the images
            it takes; a segmenter without it takes 3 (RGB). See :func:`segmenter_channels`.

    Calling it with float images ``(B, 3, H, W)`` returns int64 labels. Implementations take the
    output resolution as a constructor argument ``resolution`` (``None`` = the image size); the
    reference GAN Dissection segmenter runs at 1/2 or 1/4 of the image size.

    Examples:
        >>> seg = CallableSegmenter(
        ...     lambda x: (x[:, 0] > 0).long(),
        ...     ConceptVocabulary(("unlabeled", "red"), ("none", "colour")),
        ... )
        >>> isinstance(seg, Segmenter)
        True

    """

    vocabulary: ConceptVocabulary
    value_range: tuple[float, float]
    multilabel: bool

    def __call__(self, images: Tensor) -> Tensor:  # pragma: no cover - protocol
        """Label ``images`` ``(B, 3, H, W)``; int64 ``(B, H', W')`` or ``(B, L, H', W')``."""
        ...


ConceptScores = Callable[[Tensor], Tensor]
"""``images (B, C_in, H, W) -> (B, C, H', W')``: a soft, differentiable score in ``[0, 1]`` per
pixel for every concept of the vocabulary (e.g. class probabilities)."""


def concept_scores_of(segmenter: object, argument: str = "segmenter") -> ConceptScores:
    """The soft concept scores of ``segmenter``: its ``concept_scores`` method, checked.

    Causal unit sets optimise a differentiable objective, so they need more than labels: a
    per-pixel score for each concept whose gradient flows back to the images. The embedded
    :class:`~lightning_dissect.segmenters.SyntheticSceneSegmenter` and the Hugging Face and
    torchvision adapters have one (softened nearest-colour distances, class probabilities);
    :func:`~lightning_dissect.segmenters.adapt_input` passes its segmenter's through.

    Raises:
        TypeError: If ``segmenter`` (or the segmenter it wraps) has no ``concept_scores`` method;
            the message names ``argument`` and what is missing.

    Examples:
        >>> seg = CallableSegmenter(lambda x: (x[:, 0] > 0).long(),
        ...                         ConceptVocabulary(("unlabeled", "red"), ("none", "colour")))
        >>> try:
        ...     concept_scores_of(seg)
        ... except TypeError as err:
        ...     print(str(err)[:68])
        `segmenter` (CallableSegmenter) has no soft concept scores: it lacks
    """
    inner = segmenter
    while hasattr(inner, "adapt") and hasattr(inner, "segmenter"):  # adapt_input(...) passes through
        inner = inner.segmenter
    method = getattr(inner, "concept_scores", None)
    if not callable(method):
        raise TypeError(
            f"{argument_name(argument)} ({type(inner).__name__}) has no soft concept scores: it lacks a method "
            "`concept_scores(images) -> (B, C, H, W)` giving a differentiable per-pixel score in [0, 1] for "
            "every concept (e.g. the softmax of its class logits). Causal unit sets optimise through it; "
            "SyntheticSceneSegmenter, TorchvisionSegmenter and TransformersSegmenter have one"
        )
    return segmenter.concept_scores  # type: ignore[attr-defined]


def check_value_range(value_range: object, name: str = "value_range") -> tuple[float, float]:
    """Check a ``(low, high)`` pair of finite numbers with ``low < high``; return it as floats.

    Examples:
        >>> check_value_range([0, 1])
        (0.0, 1.0)
        >>> check_value_range((1, 0))
        Traceback (most recent call last):
        ...
        ValueError: `value_range` must be (low, high) with low < high, got (1, 0)
    """
    try:
        low, high = (float(v) for v in value_range)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise TypeError(f"{argument_name(name)} must be a pair (low, high) of numbers, got {value_range!r}") from None
    if not (high > low and math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{argument_name(name)} must be (low, high) with low < high, got {value_range!r}")
    return (low, high)


def check_segmenter(segmenter: object, argument: str = "segmenter") -> None:
    """The one check that ``segmenter`` follows the :class:`Segmenter` protocol; errors name ``argument``.

    A segmenter is callable and has a :class:`ConceptVocabulary` ``vocabulary`` and a valid
    ``value_range``; ``channels`` (default 3) must be a positive int and ``multilabel`` (default
    ``False``) a bool when present. Every entry point (``dissect()``, the callback, the
    interventions, the combinators, the command line) calls it before any work.

    Raises:
        TypeError: Not callable, a missing or mistyped attribute; a plain function is told to wrap
            itself in :class:`CallableSegmenter`.
        ValueError: A ``value_range`` that is not ascending, ``channels < 1``.

    Examples:
        >>> try:
        ...     check_segmenter(lambda images: images)
        ... except TypeError as err:
        ...     print(str(err)[:52])
        `segmenter` is a function without `vocabulary`/`valu
    """
    missing = [a for a in ("vocabulary", "value_range") if not hasattr(segmenter, a)]
    if missing or not callable(segmenter):
        kind = "function" if callable(segmenter) else type(segmenter).__name__
        raise TypeError(
            f"{argument_name(argument)} is a {kind} without `{'`/`'.join(missing) or '__call__'}`: a segmenter "
            "maps images to labels and names its concepts; wrap a plain function as "
            "CallableSegmenter(fn, vocabulary, value_range) (lightning_dissect.segmenters)"
        )
    vocabulary = segmenter.vocabulary
    if not isinstance(vocabulary, ConceptVocabulary):
        raise TypeError(
            f"{argument_name(argument + '.vocabulary')} must be a ConceptVocabulary, got {type(vocabulary).__name__}"
        )
    check_value_range(segmenter.value_range, f"{argument}.value_range")
    check_int(getattr(segmenter, "channels", 3), f"{argument}.channels", minimum=1)
    multilabel = getattr(segmenter, "multilabel", False)
    if not isinstance(multilabel, bool) and type(multilabel).__name__ not in ("bool_", "bool"):
        raise TypeError(f"{argument_name(argument + '.multilabel')} must be True or False, got {multilabel!r}")


def segmenter_channels(segmenter: object) -> int:
    """The channel count a segmenter takes: its ``channels`` attribute, 3 (RGB) when it has none.

    Examples:
        >>> segmenter_channels(object()), segmenter_channels(CallableSegmenter(
        ...     lambda x: x[:, 0].long(), ConceptVocabulary(("-",), ("none",)), channels=1))
        (3, 1)

    """
    return int(getattr(segmenter, "channels", 3))


def map_range(images: Tensor, source: tuple[float, float], target: tuple[float, float]) -> Tensor:
    """Map images linearly from the value range ``source`` to ``target`` (clamped to ``target``).

    Examples:
        >>> map_range(torch.tensor([0.0, 0.5, 1.0]), (0, 1), (-1, 1))
        tensor([-1.,  0.,  1.])

    """
    (s0, s1), (t0, t1) = (float(v) for v in source), (float(v) for v in target)
    if (s0, s1) == (t0, t1):
        return images
    scale = (t1 - t0) / (s1 - s0)
    return ((images - s0) * scale + t0).clamp_(min(t0, t1), max(t0, t1))


_COMMON_RANGES = ((0.0, 1.0), (-1.0, 1.0), (0.0, 255.0))


def _fmt_range(r: tuple[float, float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in r) + ")"


def _range_fix(images: Tensor, value_range: tuple[float, float]) -> str:
    # The fix for images outside the declared range: map them in generate=, or adapt the segmenter.
    x = images.detach()
    lo, hi = float(x.amin()), float(x.amax())
    found = next(
        (r for r in _COMMON_RANGES if r[0] - 1e-3 <= lo and hi <= r[1] + 1e-3 * (r[1] - r[0])),
        (float(f"{lo:.3g}"), float(f"{hi:.3g}")),
    )
    target = _fmt_range(value_range)
    return (
        f". To fix it, either pass a `generate=` that maps the generator's images to {target}, or wrap "
        f"the segmenter: `segmenters.adapt_input(segmenter, value_range={_fmt_range(found)})` "
        f"(maps {_fmt_range(found)} to {target} before segmenting)"
    )


def validate_images(
    images: Tensor,
    value_range: tuple[float, float] = (-1.0, 1.0),
    name: str = "images",
    channels: int = 3,
) -> None:
    """Check that ``images`` is a float batch ``(B, channels, H, W)`` inside ``value_range``.

    Values may exceed the range by ``1e-3`` of its width (rounding, resampling overshoot). The
    checks are those of :func:`lightning_dissect.functional.check_images`, plus the channel count;
    a wrong range or channel count is reported with its fix (a ``generate=`` that maps the images,
    or :func:`~lightning_dissect.segmenters.adapt_input`).

    Args:
        images: The tensor to check.
        value_range: The declared ``(low, high)`` range.
        name: What to call the tensor in error messages.
        channels: The channel count the segmenter takes (3 for RGB, 1 for grey).

    Raises:
        TypeError: If ``images`` is not a tensor or not floating point.
        ValueError: Naming the problem: rank, channel count, empty batch, NaN/Inf, values outside
            the range (an ``ImageRangeError``, with the range actually found and the fix), or
            ``value_range`` not ascending.

    Examples:
        >>> validate_images(torch.zeros(2, 3, 8, 8))
        >>> validate_images(torch.zeros(2, 1, 8, 8), channels=1)
        >>> validate_images(torch.full((1, 3, 4, 4), 200.0))
        Traceback (most recent call last):
        ...
        lightning_dissect._utils.checks.ImageRangeError: `images` has values in [200, 200] given where [-1, 1] ...

    """
    channels = check_int(channels, "channels", minimum=1)
    if isinstance(images, Tensor) and images.ndim == 4 and images.shape[1] != channels:
        got = int(images.shape[1])
        hint = " (channels-last? use images.permute(0, 3, 1, 2))" if images.shape[-1] == channels else ""
        raise ValueError(
            f"`{name}` has {got} channel(s), shape {tuple(images.shape)}, but the segmenter takes "
            f"{channels}{' (RGB)' if channels == 3 else ''}{hint}. To fix it, either pass a "
            f"`generate=` that returns {channels}-channel images, or wrap the segmenter: "
            f"`segmenters.adapt_input(segmenter, channels={got})`"
            + (" (repeats the grey channel)" if got == 1 else "")
        )
    # check_images knows RGB only: show it a 3-channel view of other channel counts (same values)
    view = images
    if isinstance(images, Tensor) and images.ndim == 4 and channels != 3 and images.numel() > 0:
        view = images.reshape(images.shape[0], 1, -1, images.shape[-1]).expand(-1, 3, -1, -1)
    try:
        check_images(view, value_range=value_range, name=name)
    except ImageRangeError as err:
        raise ImageRangeError(f"{err}{_range_fix(images, value_range)}") from None


def validate_segmentation(
    labels: Tensor,
    vocabulary: ConceptVocabulary,
    batch_size: int | None = None,
    name: str = "segmenter output",
    multilabel: bool | None = None,
    range_hint: str | None = None,
) -> None:
    """Check a segmenter's output against its vocabulary.

    The checks are shared with the metrics (``check_segmentation`` in
    ``lightning_dissect.functional``).

    Args:
        labels: The labels to check: integer ``(B, H', W')`` or ``(B, L, H', W')``.
        vocabulary: The vocabulary the labels index.
        batch_size: The expected ``B`` (the number of images given), or ``None`` to skip.
        name: What to call the tensor in error messages.
        multilabel: If given, require rank 4 (``True``) or rank 3 (``False``).
        range_hint: What to say about labels outside the vocabulary (default: the segmenter
            returned them); ground truth names its files and options instead.

    Raises:
        TypeError: If ``labels`` is not a tensor or does not hold integers.
        ValueError: Naming the problem: rank, batch size or labels outside the vocabulary.

    Examples:
        >>> vocab = ConceptVocabulary(("unlabeled", "sky"), ("none", "material"))
        >>> validate_segmentation(torch.ones(2, 4, 4, dtype=torch.long), vocab, batch_size=2)
        >>> validate_segmentation(torch.full((2, 4, 4), 5), vocab, batch_size=2)
        Traceback (most recent call last):
        ...
        ValueError: `segmenter output` has labels outside [0, 2): found values in [5, 5]; ...

    """
    num_concepts = vocabulary.num_concepts
    check_segmentation(
        labels,
        num_concepts=num_concepts,
        batch_size=batch_size,
        name=name,
        multilabel=multilabel,
        batch_source="the images given",
        range_hint=range_hint or (
            f"the segmenter returned labels outside its vocabulary of {num_concepts} concepts "
            f"(valid labels 0..{num_concepts - 1})"
        ),
    )


def resolve_resolution(
    resolution: int | Sequence[int] | None, image_size: tuple[int, int]
) -> tuple[int, int]:
    """Turn a ``resolution`` argument into ``(H', W')``; ``None`` means ``image_size``.

    Examples:
        >>> resolve_resolution(None, (64, 64)), resolve_resolution(16, (64, 64))
        ((64, 64), (16, 16))

    """
    if resolution is None:
        return (int(image_size[0]), int(image_size[1]))
    if isinstance(resolution, int):
        out = (resolution, resolution)
    else:
        out = tuple(int(r) for r in resolution)
        if len(out) != 2:
            raise ValueError(f"resolution must be an int or (H, W), got {resolution!r}.")
    if min(out) < 1:
        raise ValueError(f"resolution must be positive, got {resolution!r}.")
    return out  # type: ignore[return-value]


def _check_resolution_arg(resolution: int | Sequence[int] | None) -> None:
    resolve_resolution(resolution, (1, 1))


def _nearest_index(size_in: int, size_out: int, device: torch.device) -> Tensor:
    # Source pixel whose centre is nearest to each output pixel centre (PyTorch "nearest-exact").
    idx = ((torch.arange(size_out, device=device) + 0.5) * (size_in / size_out)).floor().long()
    return idx.clamp_(0, size_in - 1)


def _cell_index(size_in: int, size_out: int, device: torch.device) -> Tensor:
    # The output cell containing each input pixel centre (a partition of the input pixels).
    idx = ((torch.arange(size_in, device=device) + 0.5) * (size_out / size_in)).floor().long()
    return idx.clamp_(0, size_out - 1)


def resample_labels(labels: Tensor, size: tuple[int, int], num_concepts: int) -> Tensor:
    """Resample integer label maps to ``size`` (the rule every embedded segmenter uses).

    * **Downsampling** (per axis): every input pixel belongs to the output cell that contains its
      centre; the output label is the most frequent label in the cell (the mode; ties go to the
      lowest label index). For an integer factor ``f`` the cells are the ``f × f`` blocks.
    * **Upsampling** (per axis): nearest sample (the input pixel whose centre is nearest, as
      ``F.interpolate(mode="nearest-exact")``).

    Args:
        labels: Integer ``(B, H, W)`` or ``(B, L, H, W)``.
        size: Output ``(H', W')``.
        num_concepts: Labels are in ``[0, num_concepts)``.

    Returns:
        Int64 labels ``(B, H', W')`` or ``(B, L, H', W')``.

    Examples:
        >>> x = torch.tensor([[[1, 1, 2, 2], [1, 3, 2, 2], [0, 0, 3, 3], [0, 4, 4, 3]]])
        >>> resample_labels(x, (2, 2), 5)
        tensor([[[1, 2],
                 [0, 3]]])

    """
    out_h, out_w = size
    lead = labels.shape[:-2]
    h, w = labels.shape[-2:]
    x = labels.reshape(-1, h, w).long()
    dev = x.device
    if out_h > h:
        x = x[:, _nearest_index(h, out_h, dev), :]
        h = out_h
    if out_w > w:
        x = x[:, :, _nearest_index(w, out_w, dev)]
        w = out_w
    if (h, w) != (out_h, out_w):
        rows = _cell_index(h, out_h, dev)
        cols = _cell_index(w, out_w, dev)
        cell = (rows[:, None] * out_w + cols[None, :]).reshape(1, h * w)
        n = x.shape[0]
        out = torch.empty(n, out_h * out_w, dtype=torch.int64, device=dev)
        chunk = max(1, (1 << 24) // max(1, out_h * out_w * num_concepts))
        for s in range(0, n, chunk):
            xs = x[s : s + chunk].reshape(-1, h * w)
            counts = torch.zeros(
                xs.shape[0], out_h * out_w * num_concepts, dtype=torch.int32, device=dev
            )
            counts.scatter_add_(
                1, cell * num_concepts + xs, torch.ones_like(xs, dtype=torch.int32)
            )
            out[s : s + chunk] = counts.view(xs.shape[0], out_h * out_w, num_concepts).argmax(-1)
        x = out.view(n, out_h, out_w)
    return x.reshape(*lead, out_h, out_w)


class CallableSegmenter:
    """Any function ``images -> labels`` as a :class:`Segmenter`, with validation.

    Args:
        fn: Called with validated images ``(B, 3, H, W)``; returns integer labels ``(B, H', W')``
            (or ``(B, L, H', W')`` when ``multilabel``).
        vocabulary: The concepts the labels index.
        value_range: The value range ``fn`` expects.
        multilabel: Whether ``fn`` returns label channels.
        resolution: Output size (``int`` or ``(H', W')``); ``None`` returns what ``fn`` returns.
            Otherwise ``fn``'s labels are resampled with :func:`resample_labels`.
        validate: Validate inputs and outputs (a cheap min/max reduction each).
        channels: The channel count ``fn`` takes (3 = RGB).

    Examples:
        >>> vocab = ConceptVocabulary(("unlabeled", "bright"), ("none", "colour"))
        >>> seg = CallableSegmenter(lambda x: (x.mean(1) > 0).long(), vocab, resolution=2)
        >>> seg(torch.ones(1, 3, 4, 4)).tolist()
        [[[1, 1], [1, 1]]]

    """

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        vocabulary: ConceptVocabulary,
        value_range: tuple[float, float] = (-1.0, 1.0),
        multilabel: bool = False,
        resolution: int | tuple[int, int] | None = None,
        validate: bool = True,
        channels: int = 3,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"CallableSegmenter needs a callable, got {type(fn).__name__}.")
        _check_resolution_arg(resolution)
        self.fn = fn
        self.vocabulary = vocabulary
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.multilabel = bool(multilabel)
        self.resolution = resolution
        self.validate = validate
        self.channels = int(channels)

    def __call__(self, images: Tensor) -> Tensor:
        """Label ``images``; see the class docstring."""
        if self.validate:
            validate_images(images, self.value_range, channels=self.channels)
        with torch.inference_mode():
            labels = self.fn(images)
        if self.validate:
            validate_segmentation(
                labels, self.vocabulary, images.shape[0], multilabel=self.multilabel
            )
        labels = labels.long()
        if self.resolution is not None:
            size = resolve_resolution(self.resolution, tuple(images.shape[-2:]))
            if tuple(labels.shape[-2:]) != size:
                labels = resample_labels(labels, size, self.vocabulary.num_concepts)
        return labels

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(fn={self.fn!r}, concepts={self.vocabulary.num_concepts}, "
            f"value_range={self.value_range}, multilabel={self.multilabel}, "
            f"resolution={self.resolution})"
        )
