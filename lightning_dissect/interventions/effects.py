"""Causal effects of given units on a concept: ablation, insertion and the average causal effect."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_dissect.hooks import LayerEdit, OutputSelector, capture_layers, resolve_layer, unwrap_model
from lightning_dissect.interventions._common import (
    _NAN,
    Generate,
    Latents,
    Units,
    _as_tensor,
    _check_batch_size,
    _concept_index,
    _control_seed,
    _layer_output,
)
from lightning_dissect.interventions._engine import _measure, _Variant
from lightning_dissect.interventions.edits import _unit_index, ablate, insert, random_units
from lightning_dissect.interventions.statistics import UnitStatistics, _resolve_mean, unit_statistics
from lightning_dissect.runner import eval_mode
from lightning_dissect.runner import module_device as _module_device
from lightning_dissect.segmenters.base import Segmenter


def _layer_width(
    generator: nn.Module,
    layer: str,
    latents: Tensor,
    generate: Generate | None,
    selector: OutputSelector | Mapping[str, OutputSelector],
) -> int:
    """Width of ``layer``, from one generator call on the first latent."""
    if latents.shape[0] == 0:
        raise ValueError(
            "cannot infer the layer width without latents: pass `num_units=` (needed on a "
            "process that has no latents)"
        )
    model = unwrap_model(generator)
    with torch.inference_mode(), eval_mode(model):
        with capture_layers(model, [layer], selector) as captured:
            (generate or (lambda g, x: g(x)))(generator, latents[:1].to(_module_device(model)))
        return int(_layer_output(captured, layer).shape[1])


def _relative(drop: float, baseline: float) -> float:
    return drop / baseline if baseline > 0 else 0.0


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else _NAN


@dataclass
class AblationEffect:
    """How much of a concept disappears when units are switched off, next to a random control.

    Fractions are of all pixels of all images (``E_z[s_c(x)]``). ``drop = baseline − ablated``
    and ``relative_drop = drop / baseline`` (0 when the baseline is 0); the ``control_*`` fields
    are the same for random units of the same number drawn from the layer's other units
    (averaged over the controls; NaN when the layer has too few other units).

    Attributes:
        layer: The layer edited.
        concept: The concept's name.
        concept_index: Its index in the segmenter's vocabulary.
        units: The units switched off.
        baseline: Fraction of pixels carrying the concept, unedited.
        ablated: The same with ``units`` switched off.
        drop: ``baseline − ablated``.
        relative_drop: ``drop / baseline``.
        control_ablated: The fraction with the random units switched off.
        control_drop: ``baseline − control_ablated``.
        control_relative_drop: ``control_drop / baseline``.
        control_units: The random unit sets (one per control).
        mode: ``"zero"`` or ``"mean"``.
        num_images: Images per variant, over all processes.

    """

    layer: str
    concept: str
    concept_index: int
    units: list[int]
    baseline: float
    ablated: float
    drop: float
    relative_drop: float
    control_ablated: float
    control_drop: float
    control_relative_drop: float
    control_units: list[list[int]] = field(default_factory=list)
    mode: str = "zero"
    num_images: int = 0

    @property
    def excess_drop(self) -> float:
        """``drop − control_drop``: the part of the drop that generic damage does not explain."""
        return self.drop - self.control_drop

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (JSON-ready)."""
        return asdict(self)


def _ablation_record(
    layer: str,
    concept_name: str,
    concept: int,
    units: Tensor,
    controls: list[Tensor],
    baseline: Tensor,
    ablated: Tensor,
    control_fractions: list[Tensor],
    mode: str,
    num_images: int,
) -> AblationEffect:
    base = float(baseline[concept])
    abl = float(ablated[concept])
    ctrl = _mean([float(f[concept]) for f in control_fractions])
    drop = base - abl
    ctrl_drop = base - ctrl
    return AblationEffect(
        layer=layer,
        concept=concept_name,
        concept_index=concept,
        units=units.tolist(),
        baseline=base,
        ablated=abl,
        drop=drop,
        relative_drop=_relative(drop, base),
        control_ablated=ctrl,
        control_drop=ctrl_drop,
        control_relative_drop=_relative(ctrl_drop, base) if math.isfinite(ctrl_drop) else _NAN,
        control_units=[c.tolist() for c in controls],
        mode=mode,
        num_images=num_images,
    )


@dataclass
class InsertionEffect:
    """How much of a concept appears when units are switched on (in a region), with a control.

    ``effect = inserted − baseline`` over all pixels; the ``*_in_region`` fields count only the
    pixels of the region (``None`` without a region). The ``control_*`` fields insert random
    units of the same number (NaN when the layer has too few other units).

    Attributes:
        layer: The layer edited.
        concept: The concept's name.
        concept_index: Its index in the vocabulary.
        units: The units switched on.
        baseline: Fraction of pixels carrying the concept, unedited.
        inserted: The same after the insertion.
        effect: ``inserted − baseline``.
        control_inserted: The fraction after inserting the random units.
        control_effect: ``control_inserted − baseline``.
        region_fraction: Share of the image's pixels inside the region (``None``: no region).
        baseline_in_region: Concept fraction within the region, unedited.
        inserted_in_region: Within the region, after the insertion.
        effect_in_region: ``inserted_in_region − baseline_in_region``.
        control_inserted_in_region: Within the region, after inserting the random units.
        control_effect_in_region: ``control_inserted_in_region − baseline_in_region``.
        control_units: The random unit sets.
        num_images: Images per variant, over all processes.

    """

    layer: str
    concept: str
    concept_index: int
    units: list[int]
    baseline: float
    inserted: float
    effect: float
    control_inserted: float
    control_effect: float
    region_fraction: float | None = None
    baseline_in_region: float | None = None
    inserted_in_region: float | None = None
    effect_in_region: float | None = None
    control_inserted_in_region: float | None = None
    control_effect_in_region: float | None = None
    control_units: list[list[int]] = field(default_factory=list)
    num_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (JSON-ready)."""
        return asdict(self)


@dataclass
class CausalEffect:
    """Average causal effect ``ACE = E[s_c(x_inserted)] − E[s_c(x_ablated)]``, with a control.

    Fractions are over all pixels, or within the region when one was given (both edits are then
    confined to it).

    Attributes:
        layer: The layer edited.
        concept: The concept's name.
        concept_index: Its index in the vocabulary.
        units: The units intervened on.
        baseline: Concept fraction, unedited.
        inserted: Concept fraction with the units switched on.
        ablated: Concept fraction with the units switched off.
        ace: ``inserted − ablated``.
        control_inserted: Same for random units of the same number.
        control_ablated: Same for random units.
        control_ace: ``control_inserted − control_ablated``.
        control_units: The random unit sets.
        mode: The ablation mode.
        num_images: Images per variant, over all processes.

    """

    layer: str
    concept: str
    concept_index: int
    units: list[int]
    baseline: float
    inserted: float
    ablated: float
    ace: float
    control_inserted: float
    control_ablated: float
    control_ace: float
    control_units: list[list[int]] = field(default_factory=list)
    mode: str = "zero"
    num_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (JSON-ready)."""
        return asdict(self)


def ablation_effect(
    generator: nn.Module,
    layer: str,
    units: Units,
    concept: int | str,
    segmenter: Segmenter,
    latents: Latents,
    *,
    mode: str = "zero",
    statistics: UnitStatistics | Tensor | None = None,
    batch_size: int = 32,
    generate: Generate | None = None,
    selector: OutputSelector | Mapping[str, OutputSelector] = None,
    control_seed: int = 0,
    num_controls: int = 1,
    num_units: int | None = None,
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
        batch_size: Latents per generator call.
        generate: Custom ``(generator, latents) -> images`` call.
        selector: Picks the tensor of tuple/dict layer outputs.
        control_seed: Seed of the random control units.
        num_controls: Number of random unit sets (their fractions are averaged; 0: no control).
        num_units: Width of the layer; inferred with one generator call when ``None``.

    Returns:
        An :class:`AblationEffect`.

    Examples:
        >>> from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
        >>> world = SceneWorld(16)
        >>> paint = nn.Conv2d(2, 3, 1, bias=False)  # unit 0 paints sky, unit 1 grass
        >>> paint.weight.data = world.palette[[1, 5]].T.reshape(3, 2, 1, 1)
        >>> gen = nn.Sequential(nn.Unflatten(1, (2, 1, 1)), nn.Upsample(size=16), paint)
        >>> z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # one sky image, one grass image
        >>> effect = ablation_effect(gen, "1", [0], "sky", SyntheticSceneSegmenter(world), z)
        >>> effect.baseline, effect.ablated, effect.relative_drop, effect.control_drop
        (0.5, 0.0, 1.0, 0.0)

    """
    _check_batch_size(batch_size)
    if isinstance(num_controls, bool) or not isinstance(num_controls, int) or num_controls < 0:
        raise ValueError(f"`num_controls` must be a non-negative int, got {num_controls!r}")
    z = _as_tensor(latents)
    resolve_layer(unwrap_model(generator), layer, argument="layer")
    c = _concept_index(concept, segmenter)
    width = num_units or _layer_width(generator, layer, z, generate, selector)
    index = _unit_index(units, width)
    mean = _resolve_mean(
        mode,
        statistics,
        lambda: unit_statistics(
            generator, layer, z, batch_size=batch_size, generate=generate, selector=selector
        ),
    )
    rng = torch.Generator().manual_seed(_control_seed(control_seed, c))
    controls = []
    for _ in range(num_controls):
        drawn = random_units(width, index.numel(), index, generator=rng)
        if drawn is not None:
            controls.append(drawn)
    variants: dict[Hashable, _Variant] = {
        "baseline": _Variant(None),
        "ablated": _Variant({layer: ablate(index, width, mode, mean)}),
    }
    for i, units_i in enumerate(controls):
        variants[("control", i)] = _Variant({layer: ablate(units_i, width, mode, mean)})
    measured = _measure(
        generator, segmenter, z, variants,
        batch_size=batch_size, generate=generate, selector=selector,
    )  # fmt: skip
    fractions, num_images = measured.fractions, measured.num_images
    return _ablation_record(
        layer,
        segmenter.vocabulary.names[c],
        c,
        index,
        controls,
        fractions["baseline"],
        fractions["ablated"],
        [fractions[("control", i)] for i in range(len(controls))],
        mode,
        num_images,
    )


def _insertion_values(
    value: float | Tensor | UnitStatistics | None,
    statistics: UnitStatistics | None,
    compute: Callable[[], UnitStatistics],
) -> float | Tensor | UnitStatistics:
    if value is not None:
        return value
    if statistics is not None:
        return statistics
    return compute()


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


def insertion_effect(
    generator: nn.Module,
    layer: str,
    units: Units,
    concept: int | str,
    segmenter: Segmenter,
    latents: Latents,
    *,
    region: Tensor | None = None,
    value: float | Tensor | UnitStatistics | None = None,
    statistics: UnitStatistics | None = None,
    quantile: float = 0.99,
    alpha: float = 1.0,
    batch_size: int = 32,
    generate: Generate | None = None,
    selector: OutputSelector | Mapping[str, OutputSelector] = None,
    control_seed: int = 0,
    num_controls: int = 1,
    num_units: int | None = None,
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
        batch_size: Latents per generator call.
        generate: Custom ``(generator, latents) -> images`` call.
        selector: Picks the tensor of tuple/dict layer outputs.
        control_seed: Seed of the random control units.
        num_controls: Number of random unit sets (0: no control).
        num_units: Width of the layer; inferred when ``None``.

    Returns:
        An :class:`InsertionEffect`.

    Examples:
        >>> from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
        >>> world = SceneWorld(16)
        >>> paint = nn.Conv2d(2, 3, 1, bias=False)  # unit 0 paints sky, unit 1 grass
        >>> paint.weight.data = world.palette[[1, 5]].T.reshape(3, 2, 1, 1)
        >>> gen = nn.Sequential(nn.Unflatten(1, (2, 1, 1)), nn.Upsample(size=4), paint,
        ...                     nn.Upsample(size=16))
        >>> z = torch.tensor([[0.0, 1.0]]).repeat(4, 1)  # grass everywhere
        >>> region = torch.zeros(16, 16)
        >>> region[:8] = 1  # the top half
        >>> effect = insertion_effect(gen, "1", [0, 1], "sky", SyntheticSceneSegmenter(world), z,
        ...                           region=region, value=torch.tensor([1.0, 0.0]))
        >>> effect.inserted_in_region, effect.inserted, effect.region_fraction
        (1.0, 0.5, 0.5)

    """
    _check_batch_size(batch_size)
    _check_region(region)
    if isinstance(num_controls, bool) or not isinstance(num_controls, int) or num_controls < 0:
        raise ValueError(f"`num_controls` must be a non-negative int, got {num_controls!r}")
    z = _as_tensor(latents)
    resolve_layer(unwrap_model(generator), layer, argument="layer")
    c = _concept_index(concept, segmenter)
    width = num_units or _layer_width(generator, layer, z, generate, selector)
    index = _unit_index(units, width)
    values = _insertion_values(
        value,
        statistics,
        lambda: unit_statistics(
            generator, layer, z, quantile=quantile, batch_size=batch_size, generate=generate,
            selector=selector,
        ),
    )
    rng = torch.Generator().manual_seed(_control_seed(control_seed, c))
    controls = []
    for _ in range(num_controls):
        drawn = random_units(width, index.numel(), index, generator=rng)
        if drawn is not None:
            controls.append(drawn)
    variants: dict[Hashable, _Variant] = {
        "baseline": _Variant(None, region),
        "inserted": _Variant({layer: insert(index, width, values, region, alpha=alpha)}, region),
    }
    for i, units_i in enumerate(controls):
        variants[("control", i)] = _Variant(
            {layer: insert(units_i, width, values, region, alpha=alpha)}, region
        )
    measured = _measure(
        generator, segmenter, z, variants,
        batch_size=batch_size, generate=generate, selector=selector,
    )  # fmt: skip
    fractions, inside, num_images = measured.fractions, measured.in_region, measured.num_images
    base = float(fractions["baseline"][c])
    ins = float(fractions["inserted"][c])
    ctrl = _mean([float(fractions[("control", i)][c]) for i in range(len(controls))])
    record = InsertionEffect(
        layer=layer,
        concept=segmenter.vocabulary.names[c],
        concept_index=c,
        units=index.tolist(),
        baseline=base,
        inserted=ins,
        effect=ins - base,
        control_inserted=ctrl,
        control_effect=ctrl - base,
        control_units=[u.tolist() for u in controls],
        num_images=num_images,
    )
    if region is not None:
        base_r = float(inside["baseline"][c])
        ins_r = float(inside["inserted"][c])
        ctrl_r = _mean([float(inside[("control", i)][c]) for i in range(len(controls))])
        record.region_fraction = measured.region_share
        record.baseline_in_region = base_r
        record.inserted_in_region = ins_r
        record.effect_in_region = ins_r - base_r
        record.control_inserted_in_region = ctrl_r
        record.control_effect_in_region = ctrl_r - base_r
    return record


def average_causal_effect(
    generator: nn.Module,
    layer: str,
    units: Units,
    concept: int | str,
    segmenter: Segmenter,
    latents: Latents,
    *,
    mode: str = "zero",
    region: Tensor | None = None,
    value: float | Tensor | UnitStatistics | None = None,
    statistics: UnitStatistics | None = None,
    quantile: float = 0.99,
    batch_size: int = 32,
    generate: Generate | None = None,
    selector: OutputSelector | Mapping[str, OutputSelector] = None,
    control_seed: int = 0,
    num_controls: int = 1,
    num_units: int | None = None,
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
        batch_size: Latents per generator call.
        generate: Custom ``(generator, latents) -> images`` call.
        selector: Picks the tensor of tuple/dict layer outputs.
        control_seed: Seed of the random control units.
        num_controls: Number of random unit sets (0: no control).
        num_units: Width of the layer; inferred when ``None``.

    Returns:
        A :class:`CausalEffect`.

    Examples:
        >>> from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
        >>> world = SceneWorld(16)
        >>> paint = nn.Conv2d(2, 3, 1, bias=False)  # unit 0 paints sky, unit 1 grass
        >>> paint.weight.data = world.palette[[1, 5]].T.reshape(3, 2, 1, 1)
        >>> gen = nn.Sequential(nn.Unflatten(1, (2, 1, 1)), nn.Upsample(size=16), paint)
        >>> z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> ace = average_causal_effect(gen, "1", [0, 1], "sky", SyntheticSceneSegmenter(world), z,
        ...                             value=torch.tensor([1.0, 0.0]))  # sky on, grass off
        >>> ace.baseline, ace.inserted, ace.ablated, ace.ace
        (0.5, 1.0, 0.0, 1.0)

    """
    _check_batch_size(batch_size)
    _check_region(region)
    if isinstance(num_controls, bool) or not isinstance(num_controls, int) or num_controls < 0:
        raise ValueError(f"`num_controls` must be a non-negative int, got {num_controls!r}")
    z = _as_tensor(latents)
    resolve_layer(unwrap_model(generator), layer, argument="layer")
    c = _concept_index(concept, segmenter)
    width = num_units or _layer_width(generator, layer, z, generate, selector)
    index = _unit_index(units, width)
    stats_cache: list[UnitStatistics] = []

    def stats() -> UnitStatistics:
        if statistics is not None:
            return statistics
        if not stats_cache:
            stats_cache.append(
                unit_statistics(
                    generator, layer, z, quantile=quantile, batch_size=batch_size,
                    generate=generate, selector=selector,
                )
            )
        return stats_cache[0]

    values = value if value is not None else stats()
    mean = _resolve_mean(mode, statistics, stats)

    def ablation_edit(u: Tensor) -> LayerEdit:
        edit = ablate(u, width, mode, mean)
        edit.mask = region
        return edit

    rng = torch.Generator().manual_seed(_control_seed(control_seed, c))
    controls = []
    for _ in range(num_controls):
        drawn = random_units(width, index.numel(), index, generator=rng)
        if drawn is not None:
            controls.append(drawn)
    variants: dict[Hashable, _Variant] = {
        "baseline": _Variant(None, region),
        "inserted": _Variant({layer: insert(index, width, values, region)}, region),
        "ablated": _Variant({layer: ablation_edit(index)}, region),
    }
    for i, units_i in enumerate(controls):
        plus = insert(units_i, width, values, region)
        variants[("control+", i)] = _Variant({layer: plus}, region)
        variants[("control-", i)] = _Variant({layer: ablation_edit(units_i)}, region)
    measured = _measure(
        generator, segmenter, z, variants,
        batch_size=batch_size, generate=generate, selector=selector,
    )  # fmt: skip
    fractions, inside, num_images = measured.fractions, measured.in_region, measured.num_images
    source = inside if region is not None else fractions
    ins = float(source["inserted"][c])
    abl = float(source["ablated"][c])
    ctrl_ins = _mean([float(source[("control+", i)][c]) for i in range(len(controls))])
    ctrl_abl = _mean([float(source[("control-", i)][c]) for i in range(len(controls))])
    return CausalEffect(
        layer=layer,
        concept=segmenter.vocabulary.names[c],
        concept_index=c,
        units=index.tolist(),
        baseline=float(source["baseline"][c]),
        inserted=ins,
        ablated=abl,
        ace=ins - abl,
        control_inserted=ctrl_ins,
        control_ablated=ctrl_abl,
        control_ace=ctrl_ins - ctrl_abl,
        control_units=[u.tolist() for u in controls],
        mode=mode,
        num_images=num_images,
    )
