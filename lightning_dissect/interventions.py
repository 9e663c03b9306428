r"""Interventions: switch units off (ablation) or on (insertion) and measure what the images lose.

Dissection finds *correlation* between units and concepts; interventions test *causation*. One
rule covers every edit of a layer output ``r`` (see :class:`~lightning_dissect.hooks.LayerEdit`):

.. math:: r \leftarrow r\,(1 - \alpha m) + v\,\alpha m

with a per-unit strength ``α`` (1 for the units edited, 0 for the others), a value ``v`` and an
optional spatial mask ``m``.

* :func:`ablate` — ``v = 0`` (the paper's ablation) or ``v`` = the unit's mean activation
  (``mode="mean"``, which removes the unit's *information* but keeps its average contribution).
* :func:`insert` — ``v`` = a high per-unit value (by default the unit's 0.99 quantile, as in
  GANPaint) written into a region.
* :func:`intervene` — a context manager applying edits to several layers, always removed on exit.

Effects are measured as fractions of pixels carrying a concept (``E_z[s_c(G(z))]``), counted
exactly with :class:`~lightning_dissect.metrics.ConceptPixelFraction`:

* :func:`ablation_effect` — baseline, ablated and the drop, next to a *random-units control* of
  the same size (drawn from the layer's other units with a private, seeded generator);
* :func:`insertion_effect` — the concept created by inserting units, overall and in the region;
* :func:`average_causal_effect` — ``ACE = E[s_c(x_inserted)] − E[s_c(x_ablated)]``;
* :func:`ablation_curve` — the remaining fraction after zeroing the top-``n`` units by IoU,
  ``n = 0 … N`` (gandissect's curve), with the control curve;
* :func:`ablation_check` — for every concept with interpretable units in a
  :class:`~lightning_dissect.result.LayerDissection`, switch off its units and report the drop;
  this is what :class:`~lightning_dissect.callback.DissectionCallback` runs at every round.

Every function runs under ``torch.inference_mode()`` with the generator in eval mode (restoring
each submodule's mode), never touches the global RNG, and removes its hooks even when the
generator raises. Under an initialised ``torch.distributed`` process group each rank passes *its
own* latents (e.g. ``bank[shard_indices(len(bank), rank, world_size)]``) and every rank gets the
same result: the pixel counts are all-reduced, so the fractions equal those of one process over
all latents bit for bit (when each latent's image does not depend on its batch). All ranks must
call the function with the same arguments apart from the latents.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_dissect.dissection import _module_device, eval_mode, generate_images
from lightning_dissect.hooks import (
    LayerEdit,
    OutputSelector,
    capture_layers,
    edit_layers,
    resolve_layer,
    unwrap_model,
)
from lightning_dissect.latents import LatentBank
from lightning_dissect.metrics._sync import all_reduce_sum
from lightning_dissect.metrics.concept_fraction import ConceptPixelFraction
from lightning_dissect.metrics.unit_quantiles import UnitQuantiles
from lightning_dissect.result import LayerDissection
from lightning_dissect.segmenters.base import Segmenter, validate_images, validate_segmentation

__all__ = [
    "Generate",
    "Latents",
    "UnitStatistics",
    "AblationEffect",
    "InsertionEffect",
    "CausalEffect",
    "AblationCurve",
    "intervene",
    "ablate",
    "insert",
    "unit_statistics",
    "random_units",
    "ablation_effect",
    "insertion_effect",
    "average_causal_effect",
    "ablation_curve",
    "ablation_check",
]

Generate = Callable[[nn.Module, Tensor], Tensor]
"""``(generator, latents) -> images``; the default calls ``generator(latents)``."""

Latents = Tensor | LatentBank
"""This process's latents: a ``(N, ...)`` tensor or a
:class:`~lightning_dissect.latents.LatentBank`."""

Units = Sequence[int] | Tensor
"""Unit indices (a sequence or a long tensor) or a ``(U,)`` boolean mask."""

_NAN = float("nan")


# ---------------------------------------------------------------------------- edits
def _unit_index(units: Units, num_units: int, name: str = "units") -> Tensor:
    """Sorted, unique long indices of ``units`` (indices or a boolean mask), range-checked."""
    if isinstance(num_units, bool) or not isinstance(num_units, int) or num_units < 1:
        raise ValueError(f"`num_units` must be a positive int, got {num_units!r}")
    t = torch.as_tensor(units)
    if t.dtype == torch.bool:
        if t.shape != (num_units,):
            raise ValueError(
                f"boolean `{name}` must have shape ({num_units},), got {tuple(t.shape)}"
            )
        return t.nonzero().flatten().cpu()
    t = t.reshape(-1)
    if t.numel() and (t.is_floating_point() or t.is_complex()):
        raise TypeError(f"`{name}` must hold integer unit indices, got dtype {t.dtype}")
    t = t.to(torch.long).cpu()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_units):
        raise ValueError(
            f"`{name}` must lie in [0, {num_units}), got values in [{int(t.min())}, {int(t.max())}]"
        )
    return torch.unique(t)


def _per_unit_values(
    value: float | Tensor | UnitStatistics, num_units: int, name: str, attribute: str
) -> float | Tensor:
    if isinstance(value, UnitStatistics):
        value = getattr(value, attribute)
    if isinstance(value, (int, float)):
        return float(value)
    t = torch.as_tensor(value)
    if t.ndim == 0:
        return float(t)
    if t.ndim != 1 or t.shape[0] != num_units:
        raise ValueError(f"`{name}` must be a scalar or ({num_units},), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t.float()).all()):
        raise ValueError(f"`{name}` contains NaN or infinite values")
    return t.detach().float()


def ablate(
    units: Units,
    num_units: int,
    mode: str = "zero",
    mean: Tensor | UnitStatistics | None = None,
) -> LayerEdit:
    """Build an edit that switches ``units`` off everywhere (``α = 1`` for them, 0 for others).

    Args:
        units: The units to ablate (indices or a ``(U,)`` boolean mask).
        num_units: Width ``U`` of the layer.
        mode: ``"zero"`` writes 0 (the paper); ``"mean"`` writes each unit's mean activation
            (``mean``), keeping its average contribution but removing its variation.
        mean: ``(U,)`` mean activations (or :class:`UnitStatistics`), for ``mode="mean"``.

    Returns:
        A :class:`~lightning_dissect.hooks.LayerEdit` for :func:`intervene`.

    Examples:
        >>> edit = ablate([1, 2], num_units=4)
        >>> edit.alpha.tolist(), edit.value
        ([0.0, 1.0, 1.0, 0.0], 0.0)
        >>> ablate([0], 2, mode="mean", mean=torch.tensor([0.5, 2.0])).value.tolist()
        [0.5, 2.0]

    """
    index = _unit_index(units, num_units)
    alpha = torch.zeros(num_units)
    alpha[index] = 1.0
    if mode == "zero":
        return LayerEdit(alpha=alpha, value=0.0)
    if mode == "mean":
        if mean is None:
            raise ValueError(
                "mode='mean' needs the units' mean activations: pass `mean=` (see "
                "unit_statistics())"
            )
        return LayerEdit(alpha=alpha, value=_per_unit_values(mean, num_units, "mean", "mean"))
    raise ValueError(f"`mode` must be 'zero' or 'mean', got {mode!r}")


def insert(
    units: Units,
    num_units: int,
    value: float | Tensor | UnitStatistics,
    mask: Tensor | None = None,
    *,
    alpha: float = 1.0,
) -> LayerEdit:
    """Build an edit that writes a high value into ``units`` (inside ``mask`` when given).

    Args:
        units: The units to switch on (indices or a ``(U,)`` boolean mask).
        num_units: Width ``U`` of the layer.
        value: The value written: a scalar, a ``(U,)`` tensor (only the entries of ``units``
            matter) or :class:`UnitStatistics` (its ``high`` quantile, GANPaint's choice).
        mask: Optional region in ``[0, 1]`` at any resolution, ``(H, W)``, ``(B, H, W)`` or
            ``(B, 1, H, W)``; it is area-pooled (or nearest-upsampled) to the layer's size.
        alpha: Strength in ``[0, 1]`` (1 replaces the activation, 0.5 blends half-way).

    Examples:
        >>> edit = insert([0], 2, torch.tensor([3.0, 9.0]), mask=torch.ones(8, 8))
        >>> r = torch.zeros(1, 2, 2, 2)
        >>> from lightning_dissect.hooks import apply_edit
        >>> apply_edit(r, edit)[0, :, 0, 0].tolist()
        [3.0, 0.0]

    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha}")
    index = _unit_index(units, num_units)
    strength = torch.zeros(num_units)
    strength[index] = float(alpha)
    if mask is not None and not isinstance(mask, Tensor):
        raise TypeError(f"`mask` must be a tensor or None, got {type(mask).__name__}")
    return LayerEdit(
        alpha=strength, value=_per_unit_values(value, num_units, "value", "high"), mask=mask
    )


@contextmanager
def intervene(
    generator: nn.Module,
    edits: Mapping[str, LayerEdit],
    selector: OutputSelector | Mapping[str, OutputSelector] = None,
) -> Iterator[nn.Module]:
    """Apply ``{layer: LayerEdit}`` to the generator's forward passes inside the block.

    A thin, validating wrapper over :func:`~lightning_dissect.hooks.edit_layers`: several layers
    at once, hooks removed on exit (also when the block raises).

    Args:
        generator: The generator (compiled / DDP-wrapped modules are unwrapped).
        edits: Layer name → edit (see :func:`ablate`, :func:`insert`).
        selector: An int/str picking the tensor of tuple/dict layer outputs (one for all layers,
            or a mapping layer → selector).

    Yields:
        The generator, for convenience.

    Examples:
        >>> net = nn.Sequential(nn.Conv2d(1, 3, 1), nn.ReLU(), nn.Conv2d(3, 1, 1))
        >>> with intervene(net, {"1": ablate([0, 1, 2], num_units=3)}):
        ...     out = net(torch.randn(2, 1, 4, 4))
        >>> torch.allclose(out, net[2].bias.view(1, 1, 1, 1).expand_as(out))  # only the bias left
        True

    """
    if not isinstance(edits, Mapping):
        raise TypeError(f"`edits` must map layer names to LayerEdit, got {type(edits).__name__}")
    for name, edit in edits.items():
        if not isinstance(edit, LayerEdit):
            raise TypeError(
                f"edit of layer {name!r} must be a LayerEdit, got {type(edit).__name__}"
            )
        alpha = torch.as_tensor(edit.alpha, dtype=torch.float32)
        if not bool(((alpha >= 0) & (alpha <= 1)).all()):
            raise ValueError(f"edit of layer {name!r}: `alpha` must lie in [0, 1]")
    with edit_layers(unwrap_model(generator), edits, selector):
        yield generator


# ---------------------------------------------------------------------------- statistics
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


def _as_tensor(latents: Latents) -> Tensor:
    if isinstance(latents, LatentBank):
        return latents.latents
    if not isinstance(latents, Tensor):
        raise TypeError(
            f"`latents` must be a Tensor or a LatentBank, got {type(latents).__name__}"
        )
    if latents.ndim < 1:
        raise ValueError("`latents` must have a batch dimension")
    return latents


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}")


def _layer_output(captured: Mapping[str, Tensor], layer: str) -> Tensor:
    if layer not in captured:
        raise RuntimeError(f"layer {layer!r} did not run during the generator's forward pass")
    out = captured[layer]
    if out.ndim < 2:
        raise ValueError(f"layer {layer!r} output has shape {tuple(out.shape)}; need (B, U, ...)")
    return out


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


# ---------------------------------------------------------------------------- measurement engine
@dataclass
class _Variant:
    edits: Mapping[str, LayerEdit] | None
    region: Tensor | None = None


@dataclass
class _Measured:
    fractions: dict[Hashable, Tensor]  # key -> (C,) over all pixels
    in_region: dict[Hashable, Tensor]  # key -> (C,) within the variant's region
    num_images: int  # per variant, over all processes
    region_share: float | None  # pixels inside the first region / all pixels


def _measure(
    generator: nn.Module,
    segmenter: Segmenter,
    latents: Tensor,
    variants: Mapping[Hashable, _Variant],
    *,
    batch_size: int,
    generate: Generate | None,
    selector: OutputSelector | Mapping[str, OutputSelector],
) -> _Measured:
    """Concept pixel fractions of the images of every variant (edited generator), synced.

    Each batch of latents is generated once per variant (``edits=None``: the unedited
    generator) and segmented; one :class:`ConceptPixelFraction` per variant (and one more per
    variant with a region, counting only the region's pixels). All metrics are synced at the end,
    in the same order on every rank.
    """
    model = unwrap_model(generator)
    device = _module_device(model)
    vocabulary = segmenter.vocabulary
    num_concepts = vocabulary.num_concepts
    ignore_index = vocabulary.unlabeled_index
    with torch.inference_mode(), eval_mode(model):

        def metric() -> ConceptPixelFraction:
            return ConceptPixelFraction(num_concepts, ignore_index, validate_args=False).to(device)

        overall = {key: metric() for key in variants}
        inside = {key: metric() for key, v in variants.items() if v.region is not None}
        first = True
        for batch in torch.split(latents, batch_size):
            z = batch.to(device)
            for key, variant in variants.items():
                if variant.edits:
                    with intervene(generator, variant.edits, selector):
                        images = generate_images(generator, z, generate)
                else:
                    images = generate_images(generator, z, generate)
                if first:
                    validate_images(images, segmenter.value_range, name="generator output")
                labels = segmenter(images)
                if first:
                    validate_segmentation(labels, vocabulary, batch_size=images.shape[0])
                    first = False
                overall[key].update(labels)
                if key in inside:
                    inside[key].update(labels, mask=variant.region)
        fractions = {key: m.compute().cpu() for key, m in overall.items()}
        in_region = {key: m.compute().cpu() for key, m in inside.items()}
        # compute() leaves the local states in place: sync the counts we report in one call
        head = next(iter(overall.values()))
        region_metric = next(iter(inside.values()), None)
        local = torch.stack(
            [
                head.num_images,
                head.total_pixels,
                region_metric.total_pixels if region_metric is not None else head.num_images * 0,
            ]
        ).to(torch.int64)
        num_images, total, total_inside = (int(v) for v in all_reduce_sum(local)[0])
    share = None
    if region_metric is not None and total > 0:
        share = total_inside / total
    return _Measured(fractions, in_region, num_images, share)


def _concept_index(concept: int | str, segmenter: Segmenter) -> int:
    vocabulary = segmenter.vocabulary
    if isinstance(concept, str):
        return vocabulary.index(concept)
    if isinstance(concept, bool) or not isinstance(concept, int):
        raise TypeError(f"`concept` must be a name or an index, got {concept!r}")
    if not 0 <= concept < vocabulary.num_concepts:
        raise ValueError(f"`concept` {concept} outside [0, {vocabulary.num_concepts})")
    return concept


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


def _control_seed(seed: int, salt: int) -> int:
    return (int(seed) * 1_000_003 + int(salt) * 7_919 + 12_345) % (2**63 - 1)


def random_units(
    num_units: int, size: int, exclude: Units = (), *, generator: torch.Generator
) -> Tensor | None:
    """``size`` distinct units drawn uniformly from those not in ``exclude`` (sorted), or ``None``.

    ``None`` when fewer than ``size`` units remain. Uses only the given private generator.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> units = random_units(10, 3, exclude=[0, 1], generator=g)
        >>> len(units), bool((units >= 2).all())
        (3, True)
        >>> random_units(4, 3, exclude=[0, 1], generator=g) is None
        True

    """
    excluded = torch.zeros(num_units, dtype=torch.bool)
    excluded[_unit_index(exclude, num_units, "exclude")] = True
    pool = (~excluded).nonzero().flatten()
    if size > pool.numel():
        return None
    order = torch.randperm(pool.numel(), generator=generator)[:size]
    return pool[order].sort().values


def _relative(drop: float, baseline: float) -> float:
    return drop / baseline if baseline > 0 else 0.0


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else _NAN


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


# ---------------------------------------------------------------------------- results
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


# ---------------------------------------------------------------------------- experiments
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

