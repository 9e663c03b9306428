"""Adapter for Hugging Face semantic segmentation models (SegFormer, UPerNet, Mask2Former, ...).

The segmenter accepts the model object itself and needs only torch; ``transformers`` is imported
only by :meth:`TransformersSegmenter.from_pretrained`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..vocabulary import ConceptVocabulary
from ._adapter import IMAGENET_MEAN, IMAGENET_STD, ModelSegmenter, missing_extra

if TYPE_CHECKING:  # pragma: no cover
    from ._adapter import AdapterOptions, Unpack

__all__ = ["TransformersSegmenter", "ade20k_categories"]


@lru_cache(maxsize=1)
def ade20k_categories() -> dict[str, str]:
    """Category (``"object"`` or ``"stuff"``) of each ADE20K class name, from the shipped table.

    Examples:
        >>> cats = ade20k_categories()
        >>> len(cats), cats["sky"], cats["person"]
        (150, 'stuff', 'object')

    """
    text = resources.files("lightning_dissect").joinpath("data/ade20k_categories.json")
    return dict(json.loads(text.read_text(encoding="utf-8"))["categories"])


def _category(name: str, table: Mapping[str, str]) -> str:
    if name in table:
        return table[name]
    first = name.split(",")[0].strip()  # long ADE names: "windowpane, window"
    return table.get(first, table.get(first.lower(), "object"))


def _id2label(model: nn.Module) -> dict[int, str]:
    config = getattr(model, "config", None)
    mapping = getattr(config, "id2label", None)
    if not mapping:
        raise ValueError(
            "TransformersSegmenter: the model has no config.id2label; pass class_names."
        )
    return {int(k): str(v) for k, v in mapping.items()}


class TransformersSegmenter(ModelSegmenter):
    """A Hugging Face semantic segmentation model as a :class:`Segmenter`.

    Supported outputs: ``logits`` ``(B, K, h, w)`` (SegFormer, UPerNet, BEiT, DPT, ...) and
    MaskFormer / Mask2Former / OneFormer style ``class_queries_logits`` ``(B, Q, K + 1)`` with
    ``masks_queries_logits`` ``(B, Q, h, w)``, combined as in their semantic post-processing:
    ``Σ_q softmax(class)[..., :K] · sigmoid(mask↑)``.

    **Vocabulary.** ADE20K's 150 classes have no "unlabeled" class, so labels are shifted by one:
    label 0 is ``"unlabeled"`` (never produced; category ``"none"``) and model class ``k`` is
    label ``k + 1`` — every vocabulary of the project then declares ``unlabeled_index=0``.
    Names come from ``model.config.id2label`` (or ``class_names``); categories from
    ``categories`` or the shipped ADE20K table (``lightning_dissect/data/ade20k_categories.json``;
    ``"object"`` for names it lacks).

    Args:
        model: A ``transformers`` segmentation model (or any module called as
            ``model(pixel_values=x)`` with such outputs).
        processor: Optional image processor; its ``image_mean``/``image_std`` replace the
            ImageNet defaults.
        class_names: Class names in output order (default: ``model.config.id2label``).
        categories: Category per class name (default: the ADE20K table).
        **options: Keyword-only adapter options (``resolution``, ``value_range``, ``batch_size``
            (default 8), ``device``, ``autocast``, ``input_size``), see
            :class:`~lightning_dissect.segmenters._adapter.AdapterOptions`. ADE20K models were
            trained at ``input_size=512``.

    Examples:
        >>> from torch import nn
        >>> class Tiny(nn.Module):  # stands in for e.g. SegformerForSemanticSegmentation
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.conv = nn.Conv2d(3, 3, 1)
        ...     def forward(self, pixel_values):
        ...         return {"logits": self.conv(pixel_values)[..., ::4, ::4]}
        >>> seg = TransformersSegmenter(Tiny(), class_names=["wall", "sky", "person"])
        >>> seg.vocabulary.names, seg.vocabulary.categories
        (('unlabeled', 'wall', 'sky', 'person'), ('none', 'stuff', 'stuff', 'object'))
        >>> labels = seg(torch.zeros(1, 3, 16, 16))
        >>> labels.shape, bool(labels.min() >= 1)
        (torch.Size([1, 16, 16]), True)

    """

    def __init__(
        self,
        model: nn.Module,
        processor: object | None = None,
        class_names: Sequence[str] | None = None,
        categories: Mapping[str, str] | None = None,
        **options: Unpack[AdapterOptions],
    ) -> None:
        if class_names is None:
            id2label = _id2label(model)
            class_names = [id2label[i] for i in range(len(id2label))]
        table = ade20k_categories() if categories is None else categories
        names = ("unlabeled",) + tuple(class_names)
        vocabulary = ConceptVocabulary(
            names, ("none",) + tuple(_category(n, table) for n in class_names), 0
        )
        mean = getattr(processor, "image_mean", None) or IMAGENET_MEAN
        std = getattr(processor, "image_std", None) or IMAGENET_STD
        super().__init__(model, vocabulary, 1, mean, std, **options)

    def logits(self, pixel_values: Tensor, size: tuple[int, int]) -> Tensor:
        """Run the model and return per-class scores ``(B, K, h, w)``."""
        out = self.model(pixel_values=pixel_values)
        get = out.get if isinstance(out, Mapping) else lambda k: getattr(out, k, None)
        cls_logits, mask_logits = get("class_queries_logits"), get("masks_queries_logits")
        if isinstance(cls_logits, Tensor) and isinstance(mask_logits, Tensor):
            masks = F.interpolate(
                mask_logits.float(), size=size, mode="bilinear", align_corners=False
            ).sigmoid()
            probs = cls_logits.float().softmax(-1)[..., :-1]  # drop the "no object" class
            return torch.einsum("bqc,bqhw->bchw", probs, masks)
        logits = get("logits")
        if isinstance(logits, Tensor):
            return logits
        if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
            return out[0]
        raise TypeError(
            f"TransformersSegmenter: no 'logits' or 'class_queries_logits'/'masks_queries_logits'"
            f" in the model output ({type(out).__name__})."
        )

    @classmethod
    def from_pretrained(
        cls, name: str = "nvidia/segformer-b0-finetuned-ade-512-512", **kwargs: object
    ) -> TransformersSegmenter:
        """Load a model and its image processor from a local folder or the Hugging Face Hub.

        A folder written by ``model.save_pretrained(folder)`` (and optionally
        ``processor.save_pretrained(folder)``) loads without network access; with
        ``HF_HUB_OFFLINE=1`` a hub id loads only from the local cache.

        Args:
            name: A local folder, or a model id on the Hub; any semantic
                (``AutoModelForSemanticSegmentation``: SegFormer, UPerNet, BEiT, DPT, ...) or
                universal (``AutoModelForUniversalSegmentation``: Mask2Former, MaskFormer,
                OneFormer) segmentation model.
            **kwargs: Passed to :class:`TransformersSegmenter`. ``input_size`` defaults to the
                processor's size; ``processor`` to the folder's image processor (``None`` when
                the folder has none: ImageNet mean and std).

        Raises:
            ImportError: If transformers is not installed.
            OSError: If ``name`` is neither a folder with a saved model nor reachable on the Hub.

        """
        try:
            import transformers
        except ImportError as err:
            raise missing_extra(cls.__name__, "transformers", "transformers") from err
        try:
            model = transformers.AutoModelForSemanticSegmentation.from_pretrained(name)
        except ValueError:  # not a semantic segmentation config: try the universal models
            model = transformers.AutoModelForUniversalSegmentation.from_pretrained(name)
        if "processor" not in kwargs:
            kwargs["processor"] = None
            folder = Path(name)
            if not folder.is_dir() or (folder / "preprocessor_config.json").is_file():
                try:
                    kwargs["processor"] = transformers.AutoImageProcessor.from_pretrained(name)
                except OSError:  # a hub model without a preprocessor config
                    pass
        kwargs.setdefault("input_size", _processor_size(kwargs["processor"]))
        return cls(model, **kwargs)  # type: ignore[arg-type]


def _processor_size(processor: object) -> tuple[int, int] | None:
    size = getattr(processor, "size", None)
    if size is None:
        return None

    def get(key: str) -> object:  # a dict, or transformers' SizeDict (attributes)
        return size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)

    height, width, edge = get("height"), get("width"), get("shortest_edge")
    if height is not None and width is not None:
        return (int(height), int(width))  # type: ignore[call-overload]
    if edge is not None:
        return (int(edge), int(edge))  # type: ignore[call-overload]
    return None
