"""Adapter for torchvision semantic segmentation models (DeepLabV3, FCN, LRASPP).

The segmenter itself needs only torch: it accepts any module mapping normalised images to class
scores ``(B, K, h, w)`` (or a dict with ``"out"``, as torchvision's models return). torchvision
is imported only by :meth:`TorchvisionSegmenter.from_name`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import Tensor, nn

from ..vocabulary import ConceptVocabulary
from ._adapter import IMAGENET_MEAN, IMAGENET_STD, ModelSegmenter, first_tensor, missing_extra

if TYPE_CHECKING:  # pragma: no cover
    from ._adapter import AdapterOptions, Unpack

__all__ = ["VOC_CLASSES", "TorchvisionSegmenter"]

#: The 21 Pascal VOC classes of torchvision's segmentation weights, in output order.
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


def _vocabulary(class_names: Sequence[str], background_as_unlabeled: bool) -> tuple[
    ConceptVocabulary, int
]:
    names = tuple(class_names)
    if background_as_unlabeled:
        return ConceptVocabulary(names, ("none",) + ("object",) * (len(names) - 1), 0), 0
    return (
        ConceptVocabulary(
            ("unlabeled",) + names, ("none", "stuff") + ("object",) * (len(names) - 1), 0
        ),
        1,
    )


class TorchvisionSegmenter(ModelSegmenter):
    """A torchvision semantic segmentation model as a :class:`Segmenter`.

    Images in ``value_range`` are mapped to [0, 1], normalised with the ImageNet mean and std,
    optionally resized to ``input_size``, and segmented in batches of ``batch_size`` on the model's
    device (``device`` moves the model there) under ``torch.inference_mode()``, with float16
    autocast on CUDA when ``autocast``. The scores are resized bilinearly to the requested
    ``resolution`` before the arg-max; the labels come back on the images' device.

    **VOC background.** The VOC label 0, ``"background"``, means "none of the 20 objects". With
    ``background_as_unlabeled=True`` (default) it is the vocabulary's unlabeled entry (index 0,
    category ``"none"``): skipped by the statistics, as GAN Dissection skips label 0. With
    ``False`` every label shifts by one, 0 becomes a never-produced ``"unlabeled"`` and
    ``"background"`` (index 1, category ``"stuff"``) is dissected like any concept.

    Args:
        model: A torchvision segmentation model, or any module returning scores ``(B, K, h, w)``
            or a dict with them under ``"out"``.
        class_names: The model's classes in output order (default :data:`VOC_CLASSES`); the first
            is the background.
        background_as_unlabeled: See above.
        **options: Keyword-only adapter options (``resolution``, ``value_range``, ``batch_size``
            (default 16), ``device``, ``autocast``, ``input_size``), see
            :class:`~lightning_dissect.segmenters._adapter.AdapterOptions`. torchvision's VOC
            weights were trained around ``input_size=520``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Conv2d(3, 21, 1)  # stands in for a real network
        >>> seg = TorchvisionSegmenter(model, resolution=8)
        >>> seg(torch.rand(2, 3, 16, 16) * 2 - 1).shape
        torch.Size([2, 8, 8])
        >>> seg.vocabulary.names[:3], seg.vocabulary.unlabeled_index
        (('background', 'aeroplane', 'bicycle'), 0)

    """

    default_batch_size = 16

    def __init__(
        self,
        model: nn.Module,
        class_names: Sequence[str] = VOC_CLASSES,
        background_as_unlabeled: bool = True,
        **options: Unpack[AdapterOptions],
    ) -> None:
        vocabulary, offset = _vocabulary(class_names, background_as_unlabeled)
        super().__init__(model, vocabulary, offset, IMAGENET_MEAN, IMAGENET_STD, **options)

    def logits(self, pixel_values: Tensor, size: tuple[int, int]) -> Tensor:
        """Run the model; returns its ``"out"`` scores."""
        out = self.model(pixel_values)
        return first_tensor(out, ("out",), lambda: f"{type(out).__name__}")

    @classmethod
    def from_name(
        cls, name: str = "deeplabv3_resnet50", pretrained: bool = False, **kwargs: object
    ) -> TorchvisionSegmenter:
        """Build a torchvision segmentation architecture by name.

        Args:
            name: A builder of ``torchvision.models.segmentation``: ``"deeplabv3_resnet50"``,
                ``"deeplabv3_resnet101"``, ``"deeplabv3_mobilenet_v3_large"``, ``"fcn_resnet50"``,
                ``"fcn_resnet101"``, ``"lraspp_mobilenet_v3_large"``.
            pretrained: Load the default (VOC) weights, downloading them if needed. ``False``
                builds random weights without any download (``weights=None,
                weights_backbone=None``).
            **kwargs: Passed to :class:`TorchvisionSegmenter`.

        Raises:
            ImportError: If torchvision is not installed.
            ValueError: If ``name`` is not a segmentation builder.

        """
        try:
            from torchvision.models import segmentation
        except ImportError as err:  # torchvision absent or incompatible with this torch
            raise missing_extra(cls.__name__, "torchvision", "torchvision") from err
        builder = getattr(segmentation, name, None)
        if builder is None or name.startswith("_") or not callable(builder):
            raise ValueError(f"{name!r} is not a torchvision.models.segmentation builder.")
        if pretrained:
            model = builder(weights="DEFAULT")
        else:
            model = builder(weights=None, weights_backbone=None)
        return cls(model, **kwargs)  # type: ignore[arg-type]
