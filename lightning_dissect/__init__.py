"""lightning-dissect: GAN Dissection as a PyTorch Lightning callback and TorchMetrics metrics.

Importing the package is cheap; the Lightning-dependent parts (the callback, the data module) are
loaded on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

from lightning_dissect._utils import deprecation as _deprecation

_deprecation.install()

__version__ = "0.1.0"

_LAZY = {
    "UnitConceptIoU": "lightning_dissect.metrics",
    "UnitQuantiles": "lightning_dissect.metrics",
    "ConceptPixelFraction": "lightning_dissect.metrics",
    "capture_layers": "lightning_dissect.engine.hooks",
    "edit_layers": "lightning_dissect.engine.hooks",
    "LayerEdit": "lightning_dissect.engine.hooks",
    "dissect": "lightning_dissect.dissection",
    "dissect_images": "lightning_dissect.dissection",
    "ImageSet": "lightning_dissect.engine.images",
    "BrodenDataset": "lightning_dissect.engine.broden",
    "DissectionConfig": "lightning_dissect.dissection",
    "DissectionResult": "lightning_dissect.result",
    "DissectionCallback": "lightning_dissect.callbacks.generator",
    "ImageDissectionCallback": "lightning_dissect.callbacks.reader",
    "load_history": "lightning_dissect.callbacks.history",
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
    if f"{__name__}.{name}" in _deprecation.MOVED_MODULES:  # `lightning_dissect.visualize` without an import
        return _deprecation.moved_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'lightning_dissect' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
