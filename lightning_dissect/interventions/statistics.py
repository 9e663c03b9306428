"""Per-unit activation statistics of a layer: the mean (mean ablation) and a high quantile (insertion)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from lightning_dissect.config import DissectionConfig
from lightning_dissect.engine.generator import GeneratorRunner
from lightning_dissect.engine.latents import LatentBank
from lightning_dissect.interventions._common import (
    _RUN_DEFAULTS,
    Latents,
    RunOptions,
    _as_bank,
    _options,
    _runner,
    _sum_over_ranks,
)
from lightning_dissect.metrics.unit_quantiles import UnitQuantiles

if TYPE_CHECKING:
    from typing_extensions import Unpack


@dataclass
class UnitStatistics:
    """Per-unit activation statistics of one layer over a latent set (synced under DDP).

    Attributes:
        layer: The layer name.
        mean: ``(U,)`` mean activation over all samples and positions (mean ablation).
        high: ``(U,)`` activation quantile at level ``quantile`` (the insertion value).
        quantile: The level of ``high`` (GANPaint: 0.99).
        num_samples: Latents seen (over all processes).

    """

    layer: str
    mean: Tensor
    high: Tensor
    quantile: float
    num_samples: int

    @property
    def num_units(self) -> int:
        """Width ``U`` of the layer."""
        return int(self.mean.shape[0])


def unit_statistics(
    generator: nn.Module,
    layer: str,
    latents: Latents,
    *,
    quantile: float = DissectionConfig.quantile,
    relative_accuracy: float = 0.005,
    **options: Unpack[RunOptions],
) -> UnitStatistics:
    """Per-unit mean activation and ``quantile`` level of ``layer`` over ``latents``.

    Values are taken at the layer's own resolution (every position of every sample), which is
    where :func:`ablate` and :func:`insert` write. The quantile comes from
    :class:`~lightning_dissect.metrics.UnitQuantiles` (relative error ``relative_accuracy``);
    the mean is a float64 sum. Generator noise is seeded per batch (see the package docs), so the
    global RNG never moves and the result is reproducible. Under DDP both are all-reduced (every
    rank needs at least one latent) unless ``distributed=False``.

    Args:
        generator: The generator.
        layer: Dotted layer name; its output is ``(B, U, h, w)`` (or ``(B, U)``).
        latents: This process's latents.
        quantile: Level of ``high`` (GANPaint insertion 0.99, as PNAS; NetDissect 0.995).
        relative_accuracy: Accuracy of the quantile histogram.
        **options: :class:`RunOptions` (``batch_size``, ``generate``, ``selector``, ``distributed``).

    Examples:
        >>> net = nn.Sequential(nn.Linear(4, 2 * 3 * 3), nn.Unflatten(1, (2, 3, 3)), nn.ReLU())
        >>> stats = unit_statistics(net, "2", torch.zeros(5, 4), generate=lambda g, z: g(z))
        >>> stats.mean.shape, stats.high.shape, stats.num_samples
        (torch.Size([2]), torch.Size([2]), 5)

    """
    runner = _runner(generator, _options(options, _RUN_DEFAULTS, "unit_statistics"))
    layer = runner.check_layers(layer, argument="layer")[0]
    return _layer_statistics(runner, _as_bank(latents), [layer], quantile, relative_accuracy)[layer]


def _layer_statistics(
    runner: GeneratorRunner,
    bank: LatentBank,
    layers: Sequence[str],
    quantile: float = DissectionConfig.quantile,
    relative_accuracy: float = 0.005,
) -> dict[str, UnitStatistics]:
    """:class:`UnitStatistics` of several layers from one pass over ``bank`` (see ``unit_statistics``)."""
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"`quantile` must be in [0, 1], got {quantile}")
    if len(bank) == 0:
        raise ValueError("unit_statistics needs at least one latent on every process")
    metrics: dict[str, UnitQuantiles] = {}
    sums: dict[str, Tensor] = {}
    with runner.session():
        with runner.collective("unit statistics"):
            for batch in runner.batches(bank, torch.arange(len(bank)), layers=layers, require_maps=False):
                for name in layers:
                    flat = _unit_values(batch.activations[name], name)  # (U, B*h*w)
                    if name not in metrics:
                        metrics[name] = UnitQuantiles(
                            flat.shape[0], [quantile], relative_accuracy=relative_accuracy, **runner.metric_options
                        ).to(flat.device)
                        sums[name] = torch.zeros(flat.shape[0] + 2, dtype=torch.float64, device=flat.device)
                    metrics[name].update(flat.T)
                    seen = torch.tensor([flat.shape[1], len(batch.indices)], dtype=torch.float64, device=flat.device)
                    sums[name] += torch.cat([flat.double().sum(1), seen])
        return {name: _summary(name, metrics[name], _sum_over_ranks(sums[name], runner), quantile) for name in layers}


def _unit_values(output: Tensor, name: str) -> Tensor:
    """A layer output ``(B, U, ...)`` as ``(U, B * positions)`` float values."""
    if output.ndim < 2:
        raise ValueError(f"layer {name!r} output has shape {tuple(output.shape)}; need (B, U, ...)")
    return output.float().transpose(0, 1).reshape(output.shape[1], -1)


def _summary(layer: str, metric: UnitQuantiles, sums: Tensor, quantile: float) -> UnitStatistics:
    units = metric.num_units
    return UnitStatistics(
        layer=layer,
        mean=(sums[:units] / sums[units]).float().cpu().clone(),
        high=metric.compute()[:, 0].cpu().clone(),
        quantile=float(quantile),
        num_samples=int(sums[units + 1]),
    )
