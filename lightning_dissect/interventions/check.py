"""The ablation check of dissected layers: switch off each concept's units and report the drop.

A concept's units are the *interpretable* units of a layer labelled with it, best IoU first, at
most ``top_n`` (the paper switches off 20 of 512). Several layers are checked in one pass: per
batch of latents the generator runs **once unedited for all layers and concepts**, then once per
(layer, concept) with the concept's units switched off, and once per control.

The random controls follow the one control policy (``interventions._controls``, the same for
:func:`~lightning_dissect.interventions.reader_ablation`): concepts of one layer that switch off the
same number of units **share** their control sets, drawn from the units of none of them. So a
layer costs one ablated pass per concept plus ``num_controls`` per distinct number of units.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, overload

import torch
from torch import Tensor, nn

from lightning_dissect._utils.checks import check_int
from lightning_dissect.engine.generator import GeneratorRunner
from lightning_dissect.engine.latents import LatentBank
from lightning_dissect.interventions import _common
from lightning_dissect.interventions._common import _CONTROL_DEFAULTS, InterventionOptions, Latents
from lightning_dissect.interventions._controls import shared_controls
from lightning_dissect.interventions._engine import _measure, _Variant
from lightning_dissect.interventions._prepare import Prepared, _prepare
from lightning_dissect.interventions.records import AblationEffect, _ablation_record
from lightning_dissect.interventions.statistics import UnitStatistics, _layer_statistics
from lightning_dissect.result import DissectionResult, LayerDissection
from lightning_dissect.segmenters.base import Segmenter

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["ablation_check"]

Statistics = UnitStatistics | Tensor | Mapping[str, UnitStatistics | Tensor] | None


@overload
def ablation_check(
    generator: nn.Module, layer_result: LayerDissection, segmenter: Segmenter, latents: Latents, **options: Any
) -> list[AblationEffect]: ...
@overload
def ablation_check(
    generator: nn.Module,
    layer_result: DissectionResult | Mapping[str, LayerDissection],
    segmenter: Segmenter,
    latents: Latents,
    **options: Any,
) -> dict[str, list[AblationEffect]]: ...
def ablation_check(
    generator: nn.Module,
    layer_result: LayerDissection | DissectionResult | Mapping[str, LayerDissection],
    segmenter: Segmenter,
    latents: Latents,
    *,
    top_n: int = 20,
    concepts: Sequence[int | str] | None = None,
    mode: str = "zero",
    statistics: Statistics = None,
    layer: str | None = None,
    **options: Unpack[InterventionOptions],
) -> list[AblationEffect] | dict[str, list[AblationEffect]]:
    """For every concept with interpretable units in each layer, switch them off and measure the drop.

    See the module docs for the units chosen, the shared unedited pass and the shared controls.
    One :class:`~lightning_dissect.metrics.ConceptPixelFraction` per variant, synced at the end,
    so under DDP every rank (each passing its own latents) gets the same records.

    Args:
        generator: The generator.
        layer_result: A :class:`~lightning_dissect.result.LayerDissection` (one layer), or a
            :class:`~lightning_dissect.result.DissectionResult` / mapping ``layer -> LayerDissection``
            (all its layers in one pass); the same on every rank.
        segmenter: Images → labels (the one used for the dissection).
        latents: This process's latents.
        top_n: Most units switched off per concept.
        concepts: Only these concepts (names or indices); default all with interpretable units.
        mode: ``"zero"`` or ``"mean"`` ablation.
        statistics: Means for ``mode="mean"`` (one layer), or a mapping ``layer -> means``; the
            missing ones are computed from ``latents`` in one pass for all layers.
        layer: The layer to edit (one ``LayerDissection`` only); default ``layer_result.name``.
        **options: :class:`InterventionOptions`: how to run, and ``control_seed`` and
            ``num_controls`` (random unit sets per concept, fractions averaged; 0: no control).

    Returns:
        Per layer, one :class:`AblationEffect` per concept, concepts with more units first (ties
        by vocabulary order; empty without interpretable units): a list for one
        ``LayerDissection``, else a dict ``layer -> list`` in the layers' order.

    Examples:
        >>> from lightning_dissect.interventions._toy import sky_grass
        >>> from lightning_dissect.result import LayerDissection, UnitDissection
        >>> gen, segmenter = sky_grass()  # unit 0 of layer "1" paints sky, unit 1 grass
        >>> vocabulary = segmenter.vocabulary
        >>> units = [UnitDissection(u, name, vocabulary.index(name), "", 0.9, 0.0, 0.5, True, 0.0)
        ...          for u, name in enumerate(["sky", "grass"])]
        >>> layers = {"1": LayerDissection("1", units, torch.zeros(2, vocabulary.num_concepts))}
        >>> z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # one sky image, one grass image
        >>> records = ablation_check(gen, layers, segmenter, z)
        >>> [(r.concept, r.units, r.relative_drop, r.control_units) for r in records["1"]]
        [('sky', [0], 1.0, [[1]]), ('grass', [1], 1.0, [[0]])]

    """
    check_int(top_n, "top_n", minimum=1)
    _common._check_mode(mode)
    layers = _layer_results(layer_result, layer)
    statistics = _per_layer(statistics, layers)
    opts = _common._options(options, _CONTROL_DEFAULTS, "ablation_check")
    runner = _common._runner(generator, opts)
    bank = _common._as_bank(latents)
    wanted = None if concepts is None else {_common._concept_index(c, segmenter) for c in concepts}
    plans = []
    for name, result in layers.items():
        prepared = _prepare(
            runner, name, segmenter, bank, num_units=result.num_units, options=opts, function="ablation_check"
        )
        plans.append(_LayerPlan(prepared, *_plan(result, top_n, wanted, prepared.num_controls, prepared.control_seed)))
    records = _run_plans(runner, segmenter, bank, [p for p in plans if p.chosen], mode, statistics)
    out = {p.prepared.layer: records.get(p.prepared.layer, []) for p in plans}
    return out if not isinstance(layer_result, LayerDissection) else out[plans[0].prepared.layer]


@dataclass
class _LayerPlan:
    """One layer's part of the check: the chosen units per concept and their controls."""

    prepared: Prepared
    chosen: dict[int, Tensor]  # concept -> units, in the order of the records
    controls: dict[int, list[Tensor]]


def _layer_results(
    layer_result: LayerDissection | DissectionResult | Mapping[str, LayerDissection], layer: str | None
) -> dict[str, LayerDissection]:
    """``layer name -> LayerDissection`` from any accepted form (``layer`` renames a single one)."""
    if isinstance(layer_result, LayerDissection):
        return {layer if layer is not None else layer_result.name: layer_result}
    if layer is not None:
        raise ValueError("`layer` renames a single LayerDissection; a mapping's keys name the layers")
    layers = layer_result.layers if isinstance(layer_result, DissectionResult) else layer_result
    if not isinstance(layers, Mapping):
        raise TypeError(
            "`layer_result` must be a LayerDissection, a DissectionResult or a mapping layer -> "
            f"LayerDissection, got {type(layer_result).__name__}"
        )
    for name, value in layers.items():
        if not isinstance(value, LayerDissection):
            raise TypeError(f"`layer_result`[{name!r}] must be a LayerDissection, got {type(value).__name__}")
    return dict(layers)


def _per_layer(
    statistics: Statistics, layers: Mapping[str, LayerDissection]
) -> Mapping[str, UnitStatistics | Tensor] | None:
    """``statistics`` as a mapping ``layer -> statistics`` (one layer's may be given alone)."""
    if statistics is None or isinstance(statistics, Mapping):
        return statistics
    if len(layers) > 1:
        raise ValueError("`statistics` of several layers must be a mapping layer -> statistics")
    return {next(iter(layers)): statistics}


def _plan(
    result: LayerDissection, top_n: int, wanted: set[int] | None, num_controls: int, control_seed: int
) -> tuple[dict[int, Tensor], dict[int, list[Tensor]]]:
    """Each concept's units (``concept -> units``, more units first) and their controls (the one policy)."""
    chosen = _choose(result, top_n, wanted)
    return chosen, shared_controls(result.num_units, chosen, num_controls, control_seed)


def _choose(result: LayerDissection, top_n: int, wanted: set[int] | None) -> dict[int, Tensor]:
    """``concept -> units`` (sorted) of every concept with interpretable units, more units first."""
    concepts = {
        u.concept_index for u in result.units if u.interpretable and (wanted is None or u.concept_index in wanted)
    }
    chosen = {c: torch.tensor(sorted(u.unit for u in result.units_for(c, top_n)), dtype=torch.long) for c in concepts}
    return {c: chosen[c] for c in sorted(chosen, key=lambda c: (-chosen[c].numel(), c))}


def _unit_sets(chosen: Mapping[int, Tensor], controls: Mapping[int, list[Tensor]]) -> list[Tensor]:
    """Every unit set a plan switches off: each concept's units, then its controls."""
    return [u for c, units in chosen.items() for u in [units, *controls[c]]]


def _run_plans(
    runner: GeneratorRunner,
    segmenter: Segmenter,
    bank: LatentBank,
    plans: list[_LayerPlan],
    mode: str,
    statistics: Mapping[str, UnitStatistics | Tensor] | None,
) -> dict[str, list[AblationEffect]]:
    """Measure every plan's variants next to one shared unedited pass; the records per layer."""
    if not plans:
        return {}
    _attach_statistics(runner, bank, plans, mode, statistics)
    variants: dict[Hashable, _Variant] = {"baseline": _Variant(None)}
    for plan in plans:
        variants.update(plan.prepared.ablations(_unit_sets(plan.chosen, plan.controls), mode))
    measured = _measure(runner, segmenter, bank, variants)
    return {
        plan.prepared.layer: [
            _ablation_record(replace(plan.prepared, concept=c), measured, units, plan.controls[c], mode)
            for c, units in plan.chosen.items()
        ]
        for plan in plans
    }


def _attach_statistics(
    runner: GeneratorRunner,
    bank: LatentBank,
    plans: list[_LayerPlan],
    mode: str,
    statistics: Mapping[str, UnitStatistics | Tensor] | None,
) -> None:
    """Give every plan its means for ``mode="mean"``: the given ones, the rest from one pass."""
    if mode != "mean":
        return
    given = dict(statistics or {})
    missing = [p.prepared.layer for p in plans if p.prepared.layer not in given]
    if missing:
        given.update(_layer_statistics(runner, bank, missing))
    for plan in plans:
        plan.prepared.statistics = given[plan.prepared.layer]
