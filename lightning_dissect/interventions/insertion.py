"""Insertion: switch units on (in a region) and measure how much of a concept appears."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING

import torch  # noqa: F401 - the examples use it
from torch import Tensor, nn

from lightning_dissect.config import DissectionConfig
from lightning_dissect.interventions._common import InterventionOptions, Latents, Units, _mean
from lightning_dissect.interventions._engine import _Measured, _Variant
from lightning_dissect.interventions._prepare import Prepared, _prepare
from lightning_dissect.interventions.edits import insert
from lightning_dissect.interventions.records import InsertionEffect
from lightning_dissect.interventions.statistics import UnitStatistics
from lightning_dissect.segmenters.base import Segmenter

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["insertion_effect"]


def insertion_effect(
    generator: nn.Module, layer: str, units: Units, concept: int | str, segmenter: Segmenter, latents: Latents,
    *,
    region: Tensor | None = None,
    value: float | Tensor | UnitStatistics | None = None,
    statistics: UnitStatistics | None = None,
    quantile: float = DissectionConfig.quantile,
    alpha: float = 1.0,
    num_units: int | None = None,
    **options: Unpack[InterventionOptions],
) -> InsertionEffect:
    """Switch ``units`` on (inside ``region``) and measure how much ``concept`` appears.

    Args:
        generator: The generator.
        layer: Dotted name of the layer to edit.
        units: Units to switch on.
        concept: Concept name or index.
        segmenter: Images → labels.
        latents: This process's latents.
        region: One ``(H, W)`` mask in ``[0, 1]`` at any resolution shared by all images (it is
            pooled to the layer's size for the edit and resampled to the segmentation's size for
            the in-region fractions); ``None`` edits everywhere.
        value: The value written per unit; default ``statistics.high``.
        statistics: :class:`UnitStatistics`; computed from ``latents`` at ``quantile`` when both
            it and ``value`` are ``None``.
        quantile: Level of the default insertion value (GANPaint 0.99).
        alpha: Edit strength in ``[0, 1]``.
        num_units: Width of the layer (inferred when ``None``).
        **options: :class:`InterventionOptions` (run settings and the random-units control).

    Returns:
        An :class:`InsertionEffect`.

    Examples:
        >>> from lightning_dissect.interventions._toy import sky_grass
        >>> gen, segmenter = sky_grass(low=4)  # layer "1": (B, 2, 4, 4); unit 0 sky, unit 1 grass
        >>> z = torch.tensor([[0.0, 1.0]]).repeat(4, 1)  # grass everywhere
        >>> region = torch.zeros(16, 16)
        >>> region[:8] = 1  # the top half
        >>> effect = insertion_effect(gen, "1", [0, 1], "sky", segmenter, z, region=region,
        ...                           value=torch.tensor([1.0, 0.0]))
        >>> effect.inserted_in_region, effect.inserted, effect.region_fraction
        (1.0, 0.5, 0.5)

    """
    p = _prepare(
        generator, layer, segmenter, latents, concept=concept, units=units, region=region, num_units=num_units,
        statistics=statistics, quantile=quantile, options=options, function="insertion_effect",
    )  # fmt: skip
    assert p.units is not None
    values = value if value is not None else p.unit_statistics()
    controls = p.controls()
    variants = {"baseline": _Variant(None, p.region)}
    for key, units in [("inserted", p.units)] + [(("control", i), u) for i, u in enumerate(controls)]:
        variants[key] = _Variant({p.layer: insert(units, p.width, values, p.region, alpha=alpha)}, p.region)
    return _insertion_record(p, p.measure(variants), controls)


def _insertion_record(prepared: Prepared, measured: _Measured, controls: list[Tensor]) -> InsertionEffect:
    c = prepared.concept
    keys = [("control", i) for i in range(len(controls))]

    def fractions(source: Mapping[Hashable, Tensor]) -> tuple[float, float, float]:
        base, ins = float(source["baseline"][c]), float(source["inserted"][c])
        return base, ins, _mean([float(source[k][c]) for k in keys])

    assert prepared.units is not None
    base, ins, ctrl = fractions(measured.fractions)
    record = InsertionEffect(
        layer=prepared.layer,
        concept=prepared.concept_name,
        concept_index=c,
        units=prepared.units.tolist(),
        baseline=base,
        inserted=ins,
        effect=ins - base,
        control_inserted=ctrl,
        control_effect=ctrl - base,
        control_units=[u.tolist() for u in controls],
        num_images=measured.num_images,
    )
    if prepared.region is not None:
        base_r, ins_r, ctrl_r = fractions(measured.in_region)
        record.region_fraction = measured.region_share
        record.baseline_in_region = base_r
        record.inserted_in_region = ins_r
        record.effect_in_region = ins_r - base_r
        record.control_inserted_in_region = ctrl_r
        record.control_effect_in_region = ctrl_r - base_r
    return record
