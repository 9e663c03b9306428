"""The one preparation step of every intervention: checks, lookups, width, statistics, controls."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_dissect._utils.checks import check_int
from lightning_dissect.config import DissectionConfig
from lightning_dissect.engine.generator import GeneratorRunner
from lightning_dissect.engine.hooks import check_editable
from lightning_dissect.engine.latents import LatentBank, noise_seed
from lightning_dissect.interventions._common import (
    _CONTROL_DEFAULTS,
    Latents,
    Units,
    _as_bank,
    _check_mode,
    _concept_index,
    _options,
    _runner,
)
from lightning_dissect.interventions._controls import draw_controls
from lightning_dissect.interventions._engine import _measure, _Measured, _Variant
from lightning_dissect.interventions.edits import _unit_index, ablate
from lightning_dissect.interventions.statistics import UnitStatistics, _layer_statistics, _unit_values
from lightning_dissect.segmenters.base import Segmenter


@dataclass
class Prepared:
    """An intervention's inputs, checked once: what to run, on which layer, units and concept.

    Attributes:
        runner: Runs the generator (seeded noise, eval/inference mode, failure agreement).
        segmenter: Images → labels.
        bank: This process's latents.
        layer: The layer edited.
        width: Its number of units ``U``.
        concept: The concept's vocabulary index (``-1``: none, e.g. the ablation check).
        units: The units edited (sorted, unique), or ``None``.
        statistics: Statistics given by the caller (``UnitStatistics`` or ``(U,)`` means).
        quantile: Level of the statistics computed when none were given.
        region: Optional ``(H, W)`` region shared by all images.
        num_controls: Random unit sets per effect.
        control_seed: Seed of their draw.
    """

    runner: GeneratorRunner
    segmenter: Segmenter
    bank: LatentBank
    layer: str
    width: int
    concept: int = -1
    units: Tensor | None = None
    statistics: UnitStatistics | Tensor | None = None
    quantile: float = DissectionConfig.quantile
    region: Tensor | None = None
    num_controls: int = 1
    control_seed: int = 0
    computed: UnitStatistics | None = field(default=None, repr=False)

    @property
    def concept_name(self) -> str:
        """The concept's name."""
        return self.segmenter.vocabulary.names[self.concept]

    def unit_statistics(self) -> UnitStatistics | Tensor:
        """The given statistics, else those of ``bank`` (computed once, with one pass)."""
        if self.statistics is not None:
            return self.statistics
        if self.computed is None:
            self.computed = _layer_statistics(self.runner, self.bank, [self.layer], self.quantile)[self.layer]
        return self.computed

    def mean(self, mode: str) -> Tensor | UnitStatistics | None:
        """What ``mode`` ablation writes: ``None`` (zero) or the units' means."""
        return None if _check_mode(mode) == "zero" else self.unit_statistics()

    def controls(self, salt: int | None = None) -> list[Tensor]:
        """``num_controls`` random sets of ``len(units)`` units outside ``units`` (fewer if none fit)."""
        assert self.units is not None
        salt = self.concept if salt is None else salt
        return draw_controls(self.width, self.units, self.num_controls, self.control_seed, salt)

    def ablations(self, unit_sets: Sequence[Tensor], mode: str) -> dict[Hashable, _Variant]:
        """One variant per unit set, switched off in ``mode`` (keys from :func:`_ablated`)."""
        return _ablations(self.layer, self.width, unit_sets, mode, self.mean(mode) if unit_sets else None)

    def measure(self, variants: Mapping[Hashable, _Variant]) -> _Measured:
        """Concept fractions of every variant's images over ``bank`` (see ``_measure``)."""
        return _measure(self.runner, self.segmenter, self.bank, variants)


def _ablated(layer: str, units: Tensor) -> Hashable:
    """Key of the variant that switches ``units`` of ``layer`` off (equal sets share a variant)."""
    return ("ablated", layer, tuple(units.tolist()))


def _ablations(
    layer: str, width: int, unit_sets: Sequence[Tensor], mode: str = "zero", mean: Tensor | UnitStatistics | None = None
) -> dict[Hashable, _Variant]:
    """One variant per unit set of ``layer``, switched off in ``mode`` (keys from :func:`_ablated`)."""
    return {_ablated(layer, u): _Variant({layer: ablate(u, width, mode, mean)}) for u in unit_sets}


def _prepare(
    generator: nn.Module | GeneratorRunner,
    layer: str,
    segmenter: Segmenter,
    latents: Latents,
    *,
    concept: int | str | None = None,
    units: Units | None = None,
    num_units: int | None = None,
    statistics: UnitStatistics | Tensor | None = None,
    quantile: float = DissectionConfig.quantile,
    region: Tensor | None = None,
    options: Mapping[str, Any],
    function: str,
    defaults: Mapping[str, Any] = _CONTROL_DEFAULTS,
) -> Prepared:
    """Check the arguments shared by the interventions and resolve them (see :class:`Prepared`).

    ``options`` are the keyword options of ``function`` (completed from ``defaults``; any other
    raises). The layer width is ``num_units`` or inferred with one generator call on the first
    latent.
    """
    opts = _options(options, defaults, function)
    runner = generator if isinstance(generator, GeneratorRunner) else _runner(generator, opts)
    _check_region(region)
    num_controls = check_int(opts.get("num_controls", 0), "num_controls", minimum=0)
    control_seed = opts.get("control_seed", 0)
    name = runner.check_layers(layer, argument="layer")[0]
    check_editable(runner.selector, name)  # an intervention edits: refuse a read-only selector now
    bank = _as_bank(latents)
    index = -1 if concept is None else _concept_index(concept, segmenter)
    width = num_units or _layer_width(runner, bank, name)
    chosen = None if units is None else _unit_index(units, width)
    return Prepared(
        runner, segmenter, bank, name, width, index, chosen, statistics, quantile, region, num_controls, control_seed
    )


def _layer_width(runner: GeneratorRunner, bank: LatentBank, layer: str) -> int:
    """Width of ``layer``, from one generator call on the first latent (noise seeded as batch 0)."""
    width = 0
    with runner.session(), runner.collective("layer width"):
        if len(bank) == 0:
            raise ValueError(
                "cannot infer the layer width without latents: pass `num_units=` (needed on a "
                "process that has no latents)"
            )
        _, acts = runner.forward(bank[[0]], [layer], seed=noise_seed(bank.seed, 0), require_maps=False)
        width = _unit_values(acts[layer], layer).shape[0]
    return width


def _check_region(region: Tensor | None) -> None:
    if region is None:
        return
    if not isinstance(region, Tensor):
        raise TypeError(f"`region` must be a tensor or None, got {type(region).__name__}")
    if region.ndim not in (2, 3, 4) or (region.ndim >= 3 and region.shape[0] != 1):
        raise ValueError(
            "`region` must be one (H, W) mask shared by all images (also (1, H, W) or "
            f"(1, 1, H, W)), got shape {tuple(region.shape)}"
        )


def _top_units(units: torch.Tensor, iou: torch.Tensor, top: int) -> Tensor:
    """The ``top`` entries of ``units`` with the highest ``iou`` (ties: lower unit), sorted."""
    order = sorted(range(units.numel()), key=lambda i: (-float(iou[i]), int(units[i])))[:top]
    return units[order].sort().values
