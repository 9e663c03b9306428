"""lightning-dissect: GAN Dissection as a PyTorch Lightning callback and TorchMetrics metrics.

The top level holds the nouns a user constructs (metrics, settings, results, vocabularies, sample
sets, callbacks) and the verbs of a whole run (``dissect``, ``dissect_images``, ``load_history``,
``dissect_checkpoints``, ``write_report``). Every intervention lives in
:mod:`lightning_dissect.interventions`, as TorchMetrics keeps its functions in
``torchmetrics.functional``; hooks on named layers in :mod:`lightning_dissect.engine.hooks`.

Importing the package is cheap: every name is loaded on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

from lightning_dissect._utils import deprecation as _deprecation

_deprecation.install()

__version__ = "0.1.0"

_LAZY = {
    # metrics
    "UnitConceptIoU": "lightning_dissect.metrics",
    "UnitQuantiles": "lightning_dissect.metrics",
    "ConceptPixelFraction": "lightning_dissect.metrics",
    # settings, results, concepts
    "DissectionConfig": "lightning_dissect.config",
    "DissectionResult": "lightning_dissect.result",
    "ConceptVocabulary": "lightning_dissect.vocabulary",
    # what a network is run on
    "LatentBank": "lightning_dissect.engine.latents",
    "ImageSet": "lightning_dissect.engine.images",
    "ImageFolder": "lightning_dissect.engine.image_folder",
    "BrodenDataset": "lightning_dissect.engine.broden",
    "LayerLayout": "lightning_dissect.engine.layouts",
    # callbacks
    "DissectionCallback": "lightning_dissect.callbacks.generator",
    "ImageDissectionCallback": "lightning_dissect.callbacks.reader",
    "AblationCheck": "lightning_dissect.callbacks.generator",
    "CausalRounds": "lightning_dissect.callbacks.generator",
    # whole runs
    "dissect": "lightning_dissect.dissection",
    "dissect_images": "lightning_dissect.dissection",
    "load_history": "lightning_dissect.callbacks.history",
    "dissect_checkpoints": "lightning_dissect.callbacks.replay",
    "write_report": "lightning_dissect.report",
}

#: Names that left the top level: they still resolve, with a ``DeprecationWarning`` naming their
#: home, for one release.
_MOVED = {
    "capture_layers": "lightning_dissect.engine.hooks",
    "edit_layers": "lightning_dissect.engine.hooks",
    "LayerEdit": "lightning_dissect.engine.hooks",
    "intervene": "lightning_dissect.interventions",
    "ablate": "lightning_dissect.interventions",
    "insert": "lightning_dissect.interventions",
    "ablation_effect": "lightning_dissect.interventions",
    "insertion_effect": "lightning_dissect.interventions",
    "average_causal_effect": "lightning_dissect.interventions",
    "ablation_curve": "lightning_dissect.interventions",
    "ablation_check": "lightning_dissect.interventions",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _MOVED:
        return _deprecation.moved_attribute(f"{__name__}.{name}", _MOVED[name], name)
    if f"{__name__}.{name}" in _deprecation.MOVED_MODULES:  # `lightning_dissect.visualize` without an import
        return _deprecation.moved_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'lightning_dissect' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
