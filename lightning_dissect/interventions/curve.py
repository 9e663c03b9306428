"""Gandissect's ablation curve: the concept left after switching off the top-``n`` units by IoU."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from lightning_dissect._utils.checks import check_int
from lightning_dissect.interventions._common import (
    _NAN,
    _RUN_DEFAULTS,
    Latents,
    RunOptions,
    _concept_index,
)
from lightning_dissect.interventions._controls import curve_controls
from lightning_dissect.interventions._engine import _Measured, _Variant
from lightning_dissect.interventions._prepare import Prepared, _ablated, _prepare
from lightning_dissect.interventions.statistics import UnitStatistics
from lightning_dissect.result import LayerDissection
from lightning_dissect.segmenters.base import Segmenter

if TYPE_CHECKING:
    from typing_extensions import Unpack

_CURVE_DEFAULTS = {**_RUN_DEFAULTS, "control_seed": 0}


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
    control_seed: int = 0,
    **options: Unpack[RunOptions],
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
        control_seed: Seed of the random order the control units are drawn from.
        **options: :class:`RunOptions`: ``batch_size``, ``generate``, ``selector``, ``distributed``.

    Returns:
        An :class:`AblationCurve` (tensors ``num_units``, ``fraction``, ``control_fraction``).

    Examples:
        >>> from lightning_dissect.interventions._toy import sky_grass
        >>> gen, segmenter = sky_grass()  # unit 0 of layer "1" paints sky, unit 1 grass
        >>> z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> curve = ablation_curve(gen, "1", "sky", segmenter, z, iou=torch.tensor([0.9, 0.1]))
        >>> curve.num_units.tolist(), curve.fraction.tolist()
        ([0, 1, 2], [0.5, 0.0, 0.0])

    """
    iou = _concept_iou(iou, _concept_index(concept, segmenter))
    p = _prepare(
        generator, layer, segmenter, latents, concept=concept, num_units=int(iou.shape[0]), statistics=statistics,
        options={**options, "control_seed": control_seed}, function="ablation_curve", defaults=_CURVE_DEFAULTS,
    )  # fmt: skip
    top = min(check_int(max_units, "max_units", minimum=0), p.width)
    points = _curve_points(steps, top)
    ranking = _iou_ranking(iou, top)
    chosen = {n: ranking[:n].sort().values for n in points if n}
    controls = curve_controls(p.width, ranking, points, control_seed, p.concept)
    measured = p.measure({"baseline": _Variant(None), **p.ablations([*chosen.values(), *controls.values()], mode)})
    return _curve(p, measured, points, ranking, chosen, controls, mode)


def _concept_iou(iou: Tensor | LayerDissection, concept: int) -> Tensor:
    """``(U,)`` IoU of every unit with ``concept`` from a vector, a matrix or a layer's result."""
    if isinstance(iou, LayerDissection):
        iou = iou.iou
    if not isinstance(iou, Tensor):
        iou = torch.as_tensor(iou)
    if iou.ndim == 2:
        iou = iou[:, concept]
    if iou.ndim != 1 or iou.numel() == 0:
        raise ValueError(f"`iou` must be (U,) or (U, C), got shape {tuple(iou.shape)}")
    return iou


def _iou_ranking(iou: Tensor, top: int) -> Tensor:
    """The ``top`` units of highest IoU, best first (ties to the lower index)."""
    return torch.sort(-iou.detach().double().cpu(), stable=True).indices[:top]


def _curve_points(steps: Sequence[int] | None, top: int) -> list[int]:
    if steps is None:
        return list(range(top + 1))
    points = sorted({int(n) for n in steps})
    if points and (points[0] < 0 or points[-1] > top):
        raise ValueError(f"`steps` must lie in [0, {top}], got {list(steps)}")
    if not points:
        raise ValueError("`steps` must name at least one n")
    return points


def _curve(
    prepared: Prepared,
    measured: _Measured,
    points: list[int],
    ranking: Tensor,
    chosen: dict[int, Tensor],
    controls: dict[int, Tensor],
    mode: str,
) -> AblationCurve:
    c, layer, fractions = prepared.concept, prepared.layer, measured.fractions
    baseline = float(fractions["baseline"][c])

    def fraction(n: int, units: dict[int, Tensor]) -> float:
        if n == 0:
            return baseline
        return float(fractions[_ablated(layer, units[n])][c]) if n in units else _NAN

    return AblationCurve(
        layer=layer,
        concept=prepared.concept_name,
        concept_index=c,
        num_units=torch.tensor(points, dtype=torch.long),
        fraction=torch.tensor([fraction(n, chosen) for n in points], dtype=torch.float64),
        control_fraction=torch.tensor([fraction(n, controls) for n in points], dtype=torch.float64),
        ranking=ranking.clone(),
        control_units=[controls[n].tolist() if n in controls else [] for n in points],
        baseline=baseline,
        mode=mode,
        num_images=measured.num_images,
    )
