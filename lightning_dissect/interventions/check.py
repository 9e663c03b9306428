"""The ablation check of a dissected layer: switch off each concept's units and report the drop."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_dissect.hooks import OutputSelector, resolve_layer, unwrap_model
from lightning_dissect.interventions._common import (
    Generate,
    Latents,
    _as_tensor,
    _check_batch_size,
    _concept_index,
    _control_seed,
)
from lightning_dissect.interventions._engine import _measure, _Variant
from lightning_dissect.interventions.edits import ablate, random_units
from lightning_dissect.interventions.effects import AblationEffect, _ablation_record
from lightning_dissect.interventions.statistics import UnitStatistics, _resolve_mean, unit_statistics
from lightning_dissect.result import LayerDissection
from lightning_dissect.segmenters.base import Segmenter


def ablation_check(
    generator: nn.Module,
    layer_result: LayerDissection,
    segmenter: Segmenter,
    latents: Latents,
    *,
    top_n: int = 20,
    concepts: Sequence[int | str] | None = None,
    mode: str = "zero",
    statistics: UnitStatistics | Tensor | None = None,
    batch_size: int = 32,
    generate: Generate | None = None,
    selector: OutputSelector | Mapping[str, OutputSelector] = None,
    control_seed: int = 0,
    num_controls: int = 1,
    layer: str | None = None,
) -> list[AblationEffect]:
    """For every concept with interpretable units in a layer, switch them off and measure the drop.

    A concept's units are the *interpretable* units labelled with it, best IoU first, at most
    ``top_n`` (the paper switches off 20 of 512). The random control switches off as many units
    drawn from the layer's other units. Per batch of latents the generator runs once unedited,
    then once per concept (and per control); one set of
    :class:`~lightning_dissect.metrics.ConceptPixelFraction` metrics per variant, synced at the
    end, so under DDP every rank (each passing its own latents) gets the same records.

    Args:
        generator: The generator.
        layer_result: The layer's :class:`~lightning_dissect.result.LayerDissection` (the same on
            every rank, as :func:`~lightning_dissect.dissection.dissect` returns it).
        segmenter: Images → labels (the one used for the dissection).
        latents: This process's latents.
        top_n: Most units switched off per concept.
        concepts: Only these concepts (names or indices); default every concept with
            interpretable units.
        mode: ``"zero"`` or ``"mean"`` ablation.
        statistics: Means for ``mode="mean"`` (computed from ``latents`` when ``None``).
        batch_size: Latents per generator call.
        generate: Custom ``(generator, latents) -> images`` call.
        selector: Picks the tensor of tuple/dict layer outputs.
        control_seed: Seed of the random control units (per concept, the same on every rank).
        num_controls: Random unit sets per concept (their fractions are averaged; 0: no control).
        layer: The layer to edit; default ``layer_result.name``.

    Returns:
        One :class:`AblationEffect` per concept, concepts with more units first (ties by
        vocabulary order); empty when the layer has no interpretable unit.

    Examples:
        >>> from lightning_dissect.dissection import dissect
        >>> from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
        >>> world = SceneWorld(16)
        >>> segmenter = SyntheticSceneSegmenter(world)
        >>> paint = nn.Conv2d(2, 3, 1, bias=False)  # unit 0 paints sky, unit 1 grass
        >>> paint.weight.data = world.palette[[1, 5]].T.reshape(3, 2, 1, 1)
        >>> gen = nn.Sequential(nn.Unflatten(1, (2, 1, 1)), nn.Upsample(size=16),
        ...                     nn.Hardtanh(0.0, 1.0), paint)
        >>> def sampler(n, g):  # one unit on per image, with a random strength in [1, 2]
        ...     which = torch.randint(0, 2, (n,), generator=g)
        ...     return torch.eye(2)[which] * (1 + torch.rand(n, 1, generator=g))
        >>> result = dissect(gen, ["1"], segmenter, latent_sampler=sampler, num_samples=16,
        ...                  quantile=0.75, progress=False)
        >>> records = ablation_check(gen, result["1"], segmenter, sampler(8, torch.Generator()))
        >>> [(r.concept, r.units, r.relative_drop) for r in records]
        [('sky', [0], 1.0), ('grass', [1], 1.0)]

    """
    _check_batch_size(batch_size)
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
        raise ValueError(f"`top_n` must be a positive int, got {top_n!r}")
    if isinstance(num_controls, bool) or not isinstance(num_controls, int) or num_controls < 0:
        raise ValueError(f"`num_controls` must be a non-negative int, got {num_controls!r}")
    if not isinstance(layer_result, LayerDissection):
        raise TypeError(
            f"`layer_result` must be a LayerDissection, got {type(layer_result).__name__}"
        )
    name = layer if layer is not None else layer_result.name
    resolve_layer(unwrap_model(generator), name, argument="layer")
    z = _as_tensor(latents)
    width = layer_result.num_units
    wanted = None if concepts is None else {_concept_index(c, segmenter) for c in concepts}
    by_concept: dict[int, list[Any]] = {}
    for unit in layer_result.units:
        if unit.interpretable and (wanted is None or unit.concept_index in wanted):
            by_concept.setdefault(unit.concept_index, []).append(unit)
    if not by_concept:
        return []
    chosen: dict[int, Tensor] = {}
    for c, units in by_concept.items():
        best = sorted(units, key=lambda u: (-u.iou, u.unit))[: min(top_n, width)]
        chosen[c] = torch.tensor(sorted(u.unit for u in best), dtype=torch.long)
    order = sorted(chosen, key=lambda c: (-chosen[c].numel(), c))
    mean = _resolve_mean(
        mode,
        statistics,
        lambda: unit_statistics(
            generator, name, z, batch_size=batch_size, generate=generate, selector=selector
        ),
    )
    variants: dict[Hashable, _Variant] = {"baseline": _Variant(None)}
    controls: dict[int, list[Tensor]] = {}
    for c in order:
        variants[("ablated", c)] = _Variant({name: ablate(chosen[c], width, mode, mean)})
        rng = torch.Generator().manual_seed(_control_seed(control_seed, c))
        controls[c] = []
        for i in range(num_controls):
            drawn = random_units(width, chosen[c].numel(), chosen[c], generator=rng)
            if drawn is None:
                break
            controls[c].append(drawn)
            variants[("control", c, i)] = _Variant({name: ablate(drawn, width, mode, mean)})
    measured = _measure(
        generator, segmenter, z, variants,
        batch_size=batch_size, generate=generate, selector=selector,
    )  # fmt: skip
    fractions, num_images = measured.fractions, measured.num_images
    names = segmenter.vocabulary.names
    return [
        _ablation_record(
            name,
            names[c],
            c,
            chosen[c],
            controls[c],
            fractions["baseline"],
            fractions[("ablated", c)],
            [fractions[("control", c, i)] for i in range(len(controls[c]))],
            mode,
            num_images,
        )
        for c in order
    ]
