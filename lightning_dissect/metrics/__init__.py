"""TorchMetrics metrics of lightning-dissect; every state is an integer sum (DDP-exact)."""

from lightning_dissect.metrics._sync import all_reduce_sum
from lightning_dissect.metrics.concept_fraction import ConceptPixelFraction
from lightning_dissect.metrics.unit_concept_iou import UnitConceptIoU
from lightning_dissect.metrics.unit_quantiles import UnitQuantiles

__all__ = ["ConceptPixelFraction", "UnitConceptIoU", "UnitQuantiles", "all_reduce_sum"]
