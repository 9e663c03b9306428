"""Plumbing shared by the adapters for real segmentation models."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..vocabulary import ConceptVocabulary
from .base import _check_resolution_arg, resolve_resolution, validate_images

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Unpack as Unpack

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def missing_extra(cls_name: str, package: str, extra: str) -> ImportError:
    """Build the error raised when an optional extra is not installed."""
    return ImportError(
        f"{cls_name} needs {package}: pip install 'lightning-dissect[{extra}]'"
    )


def _size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    h, w = (int(s) for s in size)
    return (h, w)


class AdapterOptions(TypedDict, total=False):
    """The options every model adapter takes (keyword arguments of its constructor).

    Attributes:
        resolution: Output size, ``int`` or ``(H', W')``; ``None`` (default) = the image size.
        value_range: The value range of the images given (default ``(-1.0, 1.0)``).
        batch_size: Images per model call (default: the adapter's ``default_batch_size``).
        device: Move the model to this device; ``None`` (default) uses the model's device.
        autocast: float16 autocast on CUDA (default ``True``).
        input_size: Resize images to this size for the model; ``None`` (default) keeps the image
            size.
    """

    resolution: int | tuple[int, int] | None
    value_range: tuple[float, float]
    batch_size: int | None
    device: torch.device | str | None
    autocast: bool
    input_size: int | tuple[int, int] | None


class ModelSegmenter(abc.ABC):
    """Base of the adapters: value range → normalised model input → logits → labels.

    Subclasses set ``vocabulary`` and implement :meth:`logits` (model input → class scores
    ``(B, K, h, w)``); label = class index + ``label_offset``. The keyword options are those of
    :class:`AdapterOptions`.
    """

    multilabel = False
    channels = 3
    default_batch_size = 8

    def __init__(
        self,
        model: nn.Module,
        vocabulary: ConceptVocabulary,
        label_offset: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        resolution: int | tuple[int, int] | None = None,
        value_range: tuple[float, float] = (-1.0, 1.0),
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        autocast: bool = True,
        input_size: int | tuple[int, int] | None = None,
    ) -> None:
        if batch_size is None:
            batch_size = self.default_batch_size
        if not isinstance(model, nn.Module):
            raise TypeError(f"{type(self).__name__} needs a torch.nn.Module, got {model!r}.")
        _check_resolution_arg(resolution)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.model = model.eval()
        self.vocabulary = vocabulary
        self.label_offset = int(label_offset)
        self.num_classes = vocabulary.num_concepts - self.label_offset
        self.resolution = resolution
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.batch_size = int(batch_size)
        self.device = None if device is None else torch.device(device)
        self.autocast = bool(autocast)
        self.input_size = _size(input_size)
        self.mean = torch.tensor([float(m) for m in mean]).view(1, 3, 1, 1)
        self.std = torch.tensor([float(s) for s in std]).view(1, 3, 1, 1)
        if self.device is not None:
            self.model.to(self.device)

    # -- to be provided by subclasses
    @abc.abstractmethod
    def logits(self, pixel_values: Tensor, size: tuple[int, int]) -> Tensor:  # pragma: no cover
        """Class scores ``(B, K, H', W')`` at ``size`` for normalised model input."""

    # -- shared plumbing
    def _model_device(self) -> torch.device:
        if self.device is not None:
            return self.device
        for p in self.model.parameters():
            return p.device
        for b in self.model.buffers():
            return b.device
        return torch.device("cpu")

    def preprocess(self, images: Tensor, device: torch.device) -> Tensor:
        """Images in ``value_range`` → ImageNet-normalised float32 at ``input_size``."""
        low, high = self.value_range
        x = images.to(device=device, dtype=torch.float32)
        x = ((x - low) / (high - low)).clamp_(0.0, 1.0)
        x = (x - self.mean.to(device)) / self.std.to(device)
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            shrink = self.input_size[0] < x.shape[-2] or self.input_size[1] < x.shape[-1]
            x = F.interpolate(
                x, size=self.input_size, mode="bilinear", align_corners=False, antialias=shrink
            )
        return x

    @contextlib.contextmanager
    def _autocast(self, device: torch.device) -> Iterator[None]:
        if self.autocast and device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                yield
        else:
            yield

    def __call__(self, images: Tensor) -> Tensor:
        """Label images ``(B, 3, H, W)`` in ``value_range``.

        Returns int64 ``(B, H', W')`` on the images' device.
        """
        validate_images(images, self.value_range, channels=self.channels)
        size = resolve_resolution(self.resolution, tuple(images.shape[-2:]))
        device = self._model_device()
        out = torch.empty(images.shape[0], *size, dtype=torch.int64, device=images.device)
        with torch.inference_mode():
            for s in range(0, images.shape[0], self.batch_size):
                x = self.preprocess(images[s : s + self.batch_size], device)
                with self._autocast(device):
                    scores = self.logits(x, size)
                if scores.ndim != 4 or scores.shape[1] != self.num_classes:
                    raise ValueError(
                        f"{type(self).__name__}: the model returned scores of shape "
                        f"{tuple(scores.shape)}, expected (B, {self.num_classes}, h, w) for a "
                        f"vocabulary of {self.num_classes} classes."
                    )
                if tuple(scores.shape[-2:]) != size:
                    scores = _resize(scores.float(), size)
                labels = scores.argmax(1) + self.label_offset
                out[s : s + self.batch_size] = labels.to(images.device)
        return out

    def concept_scores(self, images: Tensor) -> Tensor:
        """The model's class probabilities per pixel ``(B, C, H', W')``, differentiable.

        The softmax of the class scores over the model's classes, resized to ``resolution`` like
        the scores the labels come from (so their arg-max is the label, up to float16 autocast on
        CUDA); vocabulary entries that are not model classes (the ``label_offset`` entries before
        them, e.g. a never-produced ``"unlabeled"``) score 0. Not run under inference mode:
        gradients flow back to ``images`` (the model's own parameters are not trained by it).

        Args:
            images: ``(B, 3, H, W)`` in ``value_range``.

        Returns:
            Float32 ``(B, C, H', W')`` on the images' device.
        """
        validate_images(images, self.value_range, channels=self.channels)
        size = resolve_resolution(self.resolution, tuple(images.shape[-2:]))
        device = self._model_device()
        chunks = []
        for s in range(0, images.shape[0], self.batch_size):
            x = self.preprocess(images[s : s + self.batch_size], device)
            with self._autocast(device):
                scores = self.logits(x, size)
            if tuple(scores.shape[-2:]) != size:
                scores = _resize(scores.float(), size)
            probs = torch.softmax(scores.float(), dim=1)
            if self.label_offset:
                probs = F.pad(probs, (0, 0, 0, 0, self.label_offset, 0))
            chunks.append(probs.to(images.device))
        return torch.cat(chunks)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={type(self.model).__name__}, "
            f"concepts={self.vocabulary.num_concepts}, resolution={self.resolution}, "
            f"value_range={self.value_range}, input_size={self.input_size})"
        )


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of score maps (antialiased when shrinking)."""
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def first_tensor(output: object, keys: Sequence[str], what: Callable[[], str]) -> Tensor:
    """Pick the score tensor out of a model output (tensor, dict, tuple or ModelOutput)."""
    if isinstance(output, Tensor):
        return output
    for key in keys:
        value = None
        if isinstance(output, dict):
            value = output.get(key)
        else:
            value = getattr(output, key, None)
        if isinstance(value, Tensor):
            return value
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"could not find class scores in the model output: {what()}")
