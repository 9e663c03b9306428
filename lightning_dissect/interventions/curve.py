"""Gandissect's ablation curve: the concept left after switching off the top-``n`` units by IoU."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_dissect.hooks import OutputSelector, resolve_layer, unwrap_model
from lightning_dissect.interventions._common import (
    _NAN,
    Generate,
    Latents,
    _as_tensor,
    _check_batch_size,
    _concept_index,
    _control_seed,
)
from lightning_dissect.interventions._engine import _measure, _Variant
from lightning_dissect.interventions.edits import ablate
from lightning_dissect.interventions.statistics import UnitStatistics, _resolve_mean, unit_statistics
from lightning_dissect.result import LayerDissection
from lightning_dissect.segmenters.base import Segmenter


@dataclass
class AblationCurve:
    """Remaining concept fraction after switching off the top-``n`` units by IoU, per ``n``.

    Attributes:
        layer: The layer edited.
        concept: The concept's name.
        concept_index: Its index in the vocabulary.
        num_units: ``(S,)`` long, the ``n`` of each point (ascending, starting at 0 by default).
        fraction: ``(S,)`` float64 concept fraction with the top-``n`` units off.
        control_fraction: ``(S,)`` float64, the same for ``n`` random units drawn from the units
            outside the top ``n`` (NaN where fewer than ``n`` remain).
        ranking: ``(N,)`` long, the units in the order they are switched off (best IoU first).
        control_units: Per point, the random units switched off.
        baseline: The unedited fraction.
        mode: ``"zero"`` or ``"mean"``.
        num_images: Images per variant, over all processes.

    """

    layer: str
    concept: str
    concept_index: int
    num_units: Tensor
    fraction: Tensor
    control_fraction: Tensor
    ranking: Tensor
    control_units: list[list[int]]
    baseline: float
    mode: str = "zero"
    num_images: int = 0

    @property
    def relative(self) -> Tensor:
        """``fraction / baseline`` (the remaining share of the concept; 0 if the baseline is 0)."""
        if self.baseline > 0:
            return self.fraction / self.baseline
        return torch.zeros_like(self.fraction)

    @property
    def control_relative(self) -> Tensor:
        """``control_fraction / baseline``."""
        if self.baseline > 0:
            return self.control_fraction / self.baseline
        return torch.zeros_like(self.control_fraction)


def ablation_curve(
    generator: nn.Module,
    layer: str,
    concept: int | str,
    segmenter: Segmenter,
    latents: Latents,
    iou: Tensor | LayerDissection,
    *,
    max_units: int = 30,
    steps: Sequence[int] | None = None,
    mode: str = "zero",
    statistics: UnitStatistics | Tensor | None = None,
    batch_size: int = 32,
    generate: Generate | None = None,
    selector: OutputSelector | Mapping[str, OutputSelector] = None,
    control_seed: int = 0,
) -> AblationCurve:
    """Gandissect's ablation curve: the concept's fraction with the top-``n`` units switched off.

    Units are ranked by IoU with ``concept`` (ties to the lower index); for each ``n`` in
    ``steps`` (default ``0, 1, …, N`` with ``N = min(max_units, U)``) the top ``n`` are ablated.
    The control switches off ``n`` random units drawn from the units outside the top ``n``.
    Each batch of latents is generated once unedited and once per ``n`` (and control), so every
    point of the curve sees the same latents.

    Args:
        generator: The generator.
        layer: Dotted name of the layer to edit.
        concept: Concept name or index.
        segmenter: Images → labels.
        latents: This process's latents (gandissect: 200).
        iou: ``(U,)`` IoU of every unit with the concept, ``(U, C)`` IoU with every concept, or a
            :class:`~lightning_dissect.result.LayerDissection` (its ``iou`` matrix).
        max_units: Largest ``n`` (gandissect: 30), capped by the layer width.
        steps: The ``n`` values to evaluate (each in ``[0, N]``), default all.
        mode: ``"zero"`` or ``"mean"`` ablation.
        statistics: Means for ``mode="mean"`` (computed from ``latents`` when ``None``).
        batch_size: Latents per generator call.
        generate: Custom ``(generator, latents) -> images`` call.
        selector: Picks the tensor of tuple/dict layer outputs.
        control_seed: Seed of the random control units.

    Returns:
        An :class:`AblationCurve` (tensors ``num_units``, ``fraction``, ``control_fraction``).

    Examples:
        >>> from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
        >>> world = SceneWorld(16)
        >>> paint = nn.Conv2d(2, 3, 1, bias=False)  # unit 0 paints sky, unit 1 grass
        >>> paint.weight.data = world.palette[[1, 5]].T.reshape(3, 2, 1, 1)
        >>> gen = nn.Sequential(nn.Unflatten(1, (2, 1, 1)), nn.Upsample(size=16), paint)
        >>> z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> curve = ablation_curve(gen, "1", "sky", SyntheticSceneSegmenter(world), z,
        ...                        iou=torch.tensor([0.9, 0.1]))
        >>> curve.num_units.tolist(), curve.fraction.tolist()
        ([0, 1, 2], [0.5, 0.0, 0.0])

    """
    _check_batch_size(batch_size)
    z = _as_tensor(latents)
    resolve_layer(unwrap_model(generator), layer, argument="layer")
    c = _concept_index(concept, segmenter)
    if isinstance(iou, LayerDissection):
        iou = iou.iou
    if not isinstance(iou, Tensor):
        iou = torch.as_tensor(iou)
    if iou.ndim == 2:
        iou = iou[:, c]
    if iou.ndim != 1 or iou.numel() == 0:
        raise ValueError(f"`iou` must be (U,) or (U, C), got shape {tuple(iou.shape)}")
    width = int(iou.shape[0])
    if isinstance(max_units, bool) or not isinstance(max_units, int) or max_units < 0:
        raise ValueError(f"`max_units` must be a non-negative int, got {max_units!r}")
    top = min(max_units, width)
    if steps is None:
        points = list(range(top + 1))
    else:
        points = sorted({int(n) for n in steps})
        if points and (points[0] < 0 or points[-1] > top):
            raise ValueError(f"`steps` must lie in [0, {top}], got {list(steps)}")
    if not points:
        raise ValueError("`steps` must name at least one n")
    ranking = torch.sort(-iou.detach().double().cpu(), stable=True).indices[:top]
    mean = _resolve_mean(
        mode,
        statistics,
        lambda: unit_statistics(
            generator, layer, z, batch_size=batch_size, generate=generate, selector=selector
        ),
    )
    rng = torch.Generator().manual_seed(_control_seed(control_seed, c))
    order = torch.randperm(width, generator=rng)
    variants: dict[Hashable, _Variant] = {"baseline": _Variant(None)}
    control_sets: dict[int, Tensor | None] = {}
    for n in points:
        if n == 0:
            continue
        chosen = ranking[:n]
        variants[("top", n)] = _Variant({layer: ablate(chosen, width, mode, mean)})
        outside = order[~torch.isin(order, chosen)]  # a fixed random order of the other units
        control = outside[:n].sort().values if outside.numel() >= n else None
        control_sets[n] = control
        if control is not None:
            variants[("control", n)] = _Variant({layer: ablate(control, width, mode, mean)})
    measured = _measure(
        generator, segmenter, z, variants,
        batch_size=batch_size, generate=generate, selector=selector,
    )  # fmt: skip
    fractions, num_images = measured.fractions, measured.num_images
    baseline = float(fractions["baseline"][c])
    values, controls, control_units = [], [], []
    for n in points:
        if n == 0:
            values.append(baseline)
            controls.append(baseline)
            control_units.append([])
            continue
        values.append(float(fractions[("top", n)][c]))
        control = control_sets[n]
        controls.append(float(fractions[("control", n)][c]) if control is not None else _NAN)
        control_units.append(control.tolist() if control is not None else [])
    return AblationCurve(
        layer=layer,
        concept=segmenter.vocabulary.names[c],
        concept_index=c,
        num_units=torch.tensor(points, dtype=torch.long),
        fraction=torch.tensor(values, dtype=torch.float64),
        control_fraction=torch.tensor(controls, dtype=torch.float64),
        ranking=ranking.clone(),
        control_units=control_units,
        baseline=baseline,
        mode=mode,
        num_images=num_images,
    )
