"""Per-unit activation statistics of a layer: the mean (mean ablation) and a high quantile (insertion)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_dissect.hooks import OutputSelector, capture_layers, resolve_layer, unwrap_model
from lightning_dissect.interventions._common import (
    Generate,
    Latents,
    _as_tensor,
    _check_batch_size,
    _layer_output,
)
from lightning_dissect.metrics._sync import all_reduce_sum
from lightning_dissect.metrics.unit_quantiles import UnitQuantiles
from lightning_dissect.runner import eval_mode
from lightning_dissect.runner import module_device as _module_device


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
    quantile: float = 0.99,
    batch_size: int = 32,
    generate: Generate | None = None,
    selector: OutputSelector | Mapping[str, OutputSelector] = None,
    relative_accuracy: float = 0.005,
) -> UnitStatistics:
    """Per-unit mean activation and ``quantile`` level of ``layer`` over ``latents``.

    Values are taken at the layer's own resolution (every position of every sample), which is
    where :func:`ablate` and :func:`insert` write. The quantile comes from
    :class:`~lightning_dissect.metrics.UnitQuantiles` (relative error ``relative_accuracy``);
    the mean is a float64 sum. Under DDP both are all-reduced (every rank needs at least one
    latent).

    Args:
        generator: The generator.
        layer: Dotted layer name; its output is ``(B, U, h, w)`` (or ``(B, U)``).
        latents: This process's latents.
        quantile: Level of ``high`` (GANPaint 0.99; PNAS 0.995).
        batch_size: Latents per generator call.
        generate: Custom ``(generator, latents) -> images`` call.
        selector: Picks the tensor of tuple/dict layer outputs.
        relative_accuracy: Accuracy of the quantile histogram.

    Examples:
        >>> net = nn.Sequential(nn.Linear(4, 2 * 3 * 3), nn.Unflatten(1, (2, 3, 3)), nn.ReLU())
        >>> stats = unit_statistics(net, "2", torch.zeros(5, 4), generate=lambda g, z: g(z))
        >>> stats.mean.shape, stats.high.shape, stats.num_samples
        (torch.Size([2]), torch.Size([2]), 5)

    """
    _check_batch_size(batch_size)
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"`quantile` must be in [0, 1], got {quantile}")
    z = _as_tensor(latents)
    if z.shape[0] == 0:
        raise ValueError("unit_statistics needs at least one latent on every process")
    model = unwrap_model(generator)
    resolve_layer(model, layer, argument="layer")
    device = _module_device(model)
    call = generate or (lambda g, x: g(x))
    with torch.inference_mode(), eval_mode(model):
        metric: UnitQuantiles | None = None
        sums: Tensor | None = None
        for batch in torch.split(z, batch_size):
            with capture_layers(model, [layer], selector) as captured:
                call(generator, batch.to(device))
            acts = _layer_output(captured, layer).float()
            units = acts.shape[1]
            flat = acts.transpose(0, 1).reshape(units, -1)  # (U, B*h*w)
            if metric is None:
                metric = UnitQuantiles(
                    units, [quantile], relative_accuracy=relative_accuracy
                ).to(acts.device)
                sums = torch.zeros(units + 2, dtype=torch.float64, device=acts.device)
            metric.update(flat.T)
            assert sums is not None
            sums[:units] += flat.double().sum(1)
            sums[units] += flat.shape[1]
            sums[units + 1] += acts.shape[0]
        assert metric is not None and sums is not None
        high = metric.compute()[:, 0]
        sums = all_reduce_sum(sums)[0]
        units = metric.num_units
        mean = (sums[:units] / sums[units]).float()
    return UnitStatistics(
        layer=layer,
        mean=mean.cpu().clone(),
        high=high.cpu().clone(),
        quantile=float(quantile),
        num_samples=int(sums[units + 1]),
    )


def _resolve_mean(
    mode: str,
    statistics: UnitStatistics | Tensor | None,
    compute: Callable[[], UnitStatistics],
) -> Tensor | UnitStatistics | None:
    if mode not in ("zero", "mean"):
        raise ValueError(f"`mode` must be 'zero' or 'mean', got {mode!r}")
    if mode == "zero":
        return None
    return statistics if statistics is not None else compute()
