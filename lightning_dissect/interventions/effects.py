"""Causal effects of given units on a concept: ablation and the average causal effect."""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

import torch  # noqa: F401 - the examples use it
from torch import Tensor, nn

from lightning_dissect.config import DissectionConfig
from lightning_dissect.interventions._common import InterventionOptions, Latents, Units, _mean
from lightning_dissect.interventions._engine import _Measured, _Variant
from lightning_dissect.interventions._prepare import Prepared, _prepare
from lightning_dissect.interventions.edits import ablate, insert
from lightning_dissect.interventions.records import AblationEffect, CausalEffect, _ablation_record
from lightning_dissect.interventions.statistics import UnitStatistics
from lightning_dissect.segmenters.base import Segmenter

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["ablation_effect", "average_causal_effect"]


def ablation_effect(
    generator: nn.Module, layer: str, units: Units, concept: int | str, segmenter: Segmenter, latents: Latents,
    *,
    mode: str = "zero",
    statistics: UnitStatistics | Tensor | None = None,
    num_units: int | None = None,
    **options: Unpack[InterventionOptions],
) -> AblationEffect:
    """Switch ``units`` of ``layer`` off and measure the drop of ``concept``, with a control.

    Per batch of latents the generator runs once unedited, once ablated and once per control.
    The control draws ``len(units)`` units from the layer's other units with a private
    ``torch.Generator`` seeded from ``control_seed`` and the concept (the same on every rank).

    Args:
        generator: The generator.
        layer: Dotted name of the layer to edit.
        units: Units to switch off (indices or a boolean mask).
        concept: Concept name or index in ``segmenter.vocabulary``.
        segmenter: Images → labels.
        latents: This process's latents (see the module docstring for DDP).
        mode: ``"zero"`` or ``"mean"`` ablation.
        statistics: For ``mode="mean"``: :class:`UnitStatistics` or ``(U,)`` means; computed from
            ``latents`` when ``None``.
        num_units: Width of the layer; inferred with one generator call when ``None``.
        **options: :class:`InterventionOptions`: ``batch_size``, ``generate``, ``selector``,
            ``distributed``, ``control_seed``, ``num_controls``.

    Returns:
        An :class:`AblationEffect`.

    Examples:
        >>> from lightning_dissect.interventions._toy import sky_grass
        >>> gen, segmenter = sky_grass()  # unit 0 of layer "1" paints sky, unit 1 grass
        >>> z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # one sky image, one grass image
        >>> effect = ablation_effect(gen, "1", [0], "sky", segmenter, z)
        >>> effect.baseline, effect.ablated, effect.relative_drop, effect.control_drop
        (0.5, 0.0, 1.0, 0.0)

    """
    p = _prepare(
        generator, layer, segmenter, latents, concept=concept, units=units, num_units=num_units,
        statistics=statistics, options=options, function="ablation_effect",
    )  # fmt: skip
    assert p.units is not None
    controls = p.controls()
    measured = p.measure({"baseline": _Variant(None), **p.ablations([p.units, *controls], mode)})
    return _ablation_record(p, measured, p.units, controls, mode)


def average_causal_effect(
    generator: nn.Module, layer: str, units: Units, concept: int | str, segmenter: Segmenter, latents: Latents,
    *,
    mode: str = "zero",
    region: Tensor | None = None,
    value: float | Tensor | UnitStatistics | None = None,
    statistics: UnitStatistics | None = None,
    quantile: float = DissectionConfig.quantile,
    num_units: int | None = None,
    **options: Unpack[InterventionOptions],
) -> CausalEffect:
    """``ACE = E_z[s_c(x_inserted)] − E_z[s_c(x_ablated)]`` of ``units`` on ``concept``.

    Insertion writes ``value`` (default: the units' ``quantile`` level) into the units; ablation
    writes 0 (or the mean). With a ``region`` both edits are confined to it and the fractions are
    measured within it. The control does the same with random units of the same number.

    Args:
        generator: The generator.
        layer: Dotted name of the layer to edit.
        units: The units.
        concept: Concept name or index.
        segmenter: Images → labels.
        latents: This process's latents.
        mode: Ablation mode, ``"zero"`` or ``"mean"``.
        region: Optional ``(H, W)`` region shared by all images.
        value: Insertion value per unit (default ``statistics.high``).
        statistics: :class:`UnitStatistics` (computed from ``latents`` when needed).
        quantile: Level of the default insertion value.
        num_units: Width of the layer; inferred when ``None``.
        **options: How to run and the control (:class:`InterventionOptions`).

    Returns:
        A :class:`CausalEffect`.

    Examples:
        >>> from lightning_dissect.interventions._toy import sky_grass
        >>> gen, segmenter = sky_grass()  # unit 0 of layer "1" paints sky, unit 1 grass
        >>> z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> ace = average_causal_effect(gen, "1", [0, 1], "sky", segmenter, z,
        ...                             value=torch.tensor([1.0, 0.0]))  # sky on, grass off
        >>> ace.baseline, ace.inserted, ace.ablated, ace.ace
        (0.5, 1.0, 0.0, 1.0)

    """
    p = _prepare(
        generator, layer, segmenter, latents, concept=concept, units=units, num_units=num_units,
        statistics=statistics, quantile=quantile, region=region, options=options, function="average_causal_effect",
    )  # fmt: skip
    assert p.units is not None
    mean = p.mean(mode)
    values = value if value is not None else p.unit_statistics()

    def variants(key: str, units: Tensor) -> dict[Hashable, _Variant]:
        off = ablate(units, p.width, mode, mean)
        off.mask = p.region
        on = insert(units, p.width, values, p.region)
        return {
            ("inserted", key): _Variant({p.layer: on}, p.region),
            ("ablated", key): _Variant({p.layer: off}, p.region),
        }

    controls = p.controls()
    measured = p.measure(
        {"baseline": _Variant(None, p.region), **variants("units", p.units)}
        | {k: v for i, u in enumerate(controls) for k, v in variants(f"control {i}", u).items()}
    )
    return _causal_record(p, measured, controls, mode)


def _causal_record(prepared: Prepared, measured: _Measured, controls: list[Tensor], mode: str) -> CausalEffect:
    c = prepared.concept
    source = measured.in_region if prepared.region is not None else measured.fractions

    def fraction(kind: str, key: str) -> float:
        return float(source[(kind, key)][c])

    ins, abl = fraction("inserted", "units"), fraction("ablated", "units")
    ctrl_ins = _mean([fraction("inserted", f"control {i}") for i in range(len(controls))])
    ctrl_abl = _mean([fraction("ablated", f"control {i}") for i in range(len(controls))])
    assert prepared.units is not None
    return CausalEffect(
        layer=prepared.layer,
        concept=prepared.concept_name,
        concept_index=c,
        units=prepared.units.tolist(),
        baseline=float(source["baseline"][c]),
        inserted=ins,
        ablated=abl,
        ace=ins - abl,
        control_inserted=ctrl_ins,
        control_ablated=ctrl_abl,
        control_ace=ctrl_ins - ctrl_abl,
        control_units=[u.tolist() for u in controls],
        mode=mode,
        num_images=measured.num_images,
    )
