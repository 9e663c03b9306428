"""Concept sources: the segmenter protocol, the synthetic scene world and adapters for real models.

Importing this package does not import ``lightning``, ``torchvision`` or ``transformers``:
``SyntheticSceneDataModule`` is loaded on first attribute access (it is left out of ``__all__``,
so a star import stays light too), and the adapters import their extras only when a model is
built by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    CallableSegmenter,
    ConceptScores,
    Segmenter,
    concept_scores_of,
    map_range,
    resample_labels,
    segmenter_channels,
    validate_images,
    validate_segmentation,
)
from .combine import AdaptedSegmenter, MergedSegmenter, adapt_input, merge_segmenters
from .synthetic import SyntheticSceneDataset, SyntheticSceneSegmenter
from .torchvision_adapter import TorchvisionSegmenter
from .transformers_adapter import TransformersSegmenter
from .world import SceneWorld

if TYPE_CHECKING:  # pragma: no cover
    from .datamodule import SyntheticSceneDataModule as SyntheticSceneDataModule

__all__ = [
    "AdaptedSegmenter",
    "CallableSegmenter",
    "ConceptScores",
    "MergedSegmenter",
    "SceneWorld",
    "Segmenter",
    "SyntheticSceneDataset",
    "SyntheticSceneSegmenter",
    "TorchvisionSegmenter",
    "TransformersSegmenter",
    "adapt_input",
    "concept_scores_of",
    "map_range",
    "merge_segmenters",
    "resample_labels",
    "segmenter_channels",
    "validate_images",
    "validate_segmentation",
]


def __getattr__(name: str) -> Any:
    if name in ("ConceptVocabulary", "NO_CATEGORY"):  # lived here until the vocabulary got its own module
        from lightning_dissect._utils.deprecation import moved_attribute

        return moved_attribute(f"{__name__}.{name}", "lightning_dissect.vocabulary", name)
    if name == "SyntheticSceneDataModule":
        from .datamodule import SyntheticSceneDataModule

        return SyntheticSceneDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
