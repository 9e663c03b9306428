"""The dissection engine: one code path for the offline command, the report and the callback.

Two passes over a seeded latent bank (split across ranks under DDP):

1. generator + segmenter: per-unit activation histograms of the upsampled maps (thresholds), the
   top-k images per unit, and the segmentations, cached compactly so the segmenter runs once per
   sample in total;
2. generator only: exact unit–concept counts at the thresholds (or at ``K`` candidate levels in
   ``"iqr"`` mode), plus the same counts with images paired to another image's segmentation (the
   chance baseline).

All layers are dissected in the same passes. Statistics are TorchMetrics metrics, so under
``torch.distributed`` they are all-reduced and every rank gets the same result.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from lightning_dissect._distributed import agree_on_failure, check_samples_per_rank, seeded_rng
from lightning_dissect.functional.scores import iou_from_counts, iqr_from_counts
from lightning_dissect.hooks import OutputSelector, capture_layers, resolve_layer, unwrap_model
from lightning_dissect.latents import LatentBank, LatentSampler, shard_indices
from lightning_dissect.metrics import UnitConceptIoU, UnitQuantiles
from lightning_dissect.result import (
    DissectionResult,
    LayerDissection,
    UnitDissection,
)
from lightning_dissect.segmenters.base import Segmenter, validate_images, validate_segmentation

__all__ = [
    "DissectionConfig",
    "Generate",
    "dissect",
    "generate_images",
    "eval_mode",
    "distributed_context",
]

Generate = Callable[[nn.Module, Tensor], Tensor]
"""``(generator, latents) -> images``; the default calls ``generator(latents)``."""


@dataclass
class DissectionConfig:
    """Settings of a dissection (all have the reference defaults noted).

    Attributes:
        num_samples: Latents in the dissection bank.
        batch_size: Latents per generator call.
        seed: Seed of the dissection bank (gandissect: 1).
        threshold_mode: ``"quantile"`` (per-unit level ``quantile``; NetDissect / PNAS) or
            ``"iqr"`` (GAN Dissection: per unit the candidate level of its best-IQR concept).
        quantile: Level for ``"quantile"`` mode (PNAS 0.99; NetDissect 0.995).
        num_levels: Candidate levels in ``"iqr"`` mode: top fractions ``logspace(-3, 0, K)``
            (gandissect uses 100).
        level_selection_samples: ``"iqr"`` mode: pick levels on a separate bank of this size
            seeded ``seed + 1`` (the paper's held-out set); ``None`` picks on the dissection bank.
        iou_threshold: A unit is interpretable when its label IoU exceeds this (0.04 NetDissect /
            PNAS; 0.05 gandissect).
        iqr_threshold: ``"iqr"`` mode also asks IQR above this (gandissect 0.01).
        min_concept_fraction: ``"iqr"`` mode ignores concepts covering less than this fraction of
            pixels when choosing levels (gandissect 1e-3).
        top_k: Top images kept per unit (by the unit's spatial max activation).
        num_visualized_units: Per layer, render image strips for this many top units (0: none).
        chance_baseline: Also count with images paired to the next image's segmentation.
        relative_accuracy: Quantile accuracy of the threshold histogram.
        progress: Show rich progress bars (rank 0 only).
        device: Where to run; ``None`` = the generator's device.
    """

    num_samples: int = 1000
    batch_size: int = 32
    seed: int = 1
    threshold_mode: str = "quantile"
    quantile: float = 0.99
    num_levels: int = 64
    level_selection_samples: int | None = None
    iou_threshold: float = 0.04
    iqr_threshold: float = 0.01
    min_concept_fraction: float = 1e-3
    top_k: int = 8
    num_visualized_units: int = 0
    chance_baseline: bool = True
    relative_accuracy: float = 0.005
    progress: bool = True
    device: str | None = field(default=None)

    def validate(self) -> DissectionConfig:
        """Raise ``ValueError`` naming the first bad setting; return ``self``."""
        positive = ("num_samples", "batch_size", "num_levels", "top_k")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        if self.threshold_mode not in ("quantile", "iqr"):
            raise ValueError(
                f"`threshold_mode` must be 'quantile' or 'iqr', got {self.threshold_mode!r}"
            )
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"`quantile` must be in (0, 1), got {self.quantile}")
        if not 0.0 <= self.iou_threshold < 1.0:
            raise ValueError(f"`iou_threshold` must be in [0, 1), got {self.iou_threshold}")
        if self.num_visualized_units < 0:
            raise ValueError("`num_visualized_units` must be >= 0")
        if self.level_selection_samples is not None and (
            not isinstance(self.level_selection_samples, int)
            or isinstance(self.level_selection_samples, bool)
            or self.level_selection_samples < 1
        ):
            raise ValueError("`level_selection_samples` must be a positive int or None")
        if not 0.0 < self.relative_accuracy < 1.0:
            raise ValueError(
                f"`relative_accuracy` must be in (0, 1), got {self.relative_accuracy}"
            )
        return self


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode, restoring every submodule's previous mode on exit."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes.items():
            m.training = mode


def distributed_context() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _default_generate(generator: nn.Module, latents: Tensor) -> Tensor:
    return generator(latents)


def generate_images(
    generator: nn.Module, latents: Tensor, generate: Generate | None = None
) -> Tensor:
    """Call the generator and check that it returned a ``(B, 3, H, W)`` image batch."""
    images = (generate or _default_generate)(generator, latents)
    if isinstance(images, (tuple, list)):
        images = images[0]
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(
            f"the generator must return images (B, 3, H, W); got {shape} — pass `generate=` to "
            "say how to call it"
        )
    return images


def _compact_dtype(num_concepts: int) -> torch.dtype:
    if num_concepts <= 127:
        return torch.int8
    if num_concepts <= 32767:
        return torch.int16
    return torch.int32


def _merge_topk(
    values: Tensor, indices: Tensor, new_values: Tensor, new_indices: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """Keep the ``k`` largest per row; ties go to the smaller latent index (deterministic)."""
    all_values = torch.cat([values, new_values], 1)
    all_indices = torch.cat([indices, new_indices], 1)
    order = torch.sort(all_indices, dim=1, stable=True).indices
    all_values = all_values.gather(1, order)
    all_indices = all_indices.gather(1, order)
    order = torch.sort(all_values, dim=1, descending=True, stable=True).indices[:, :k]
    return all_values.gather(1, order), all_indices.gather(1, order)


def _gather_topk(values: Tensor, indices: Tensor, k: int, world_size: int) -> tuple[Tensor, Tensor]:
    if world_size == 1:
        return values, indices
    # a rank with fewer than k latents holds fewer columns: pad to k so all_gather shapes agree
    missing = k - values.shape[1]
    if missing > 0:
        values = torch.cat([values, values.new_full((values.shape[0], missing), float("-inf"))], 1)
        indices = torch.cat([indices, indices.new_full((indices.shape[0], missing), -1)], 1)
    gathered_v = [torch.empty_like(values) for _ in range(world_size)]
    gathered_i = [torch.empty_like(indices) for _ in range(world_size)]
    torch.distributed.all_gather(gathered_v, values.contiguous())
    torch.distributed.all_gather(gathered_i, indices.contiguous())
    empty_v = values[:, :0]
    empty_i = indices[:, :0]
    merged_v, merged_i = _merge_topk(
        empty_v, empty_i, torch.cat(gathered_v, 1), torch.cat(gathered_i, 1), k
    )
    real = int((merged_i[0] >= 0).sum())  # padding sorts last (value -inf)
    return merged_v[:, :real], merged_i[:, :real]


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def task(self, description: str, total: int) -> Any:
        if self._progress is None:
            return None
        return self._progress.add_task(description, total=total)

    def advance(self, task: Any, amount: int) -> None:
        if self._progress is not None and task is not None:
            self._progress.advance(task, amount)


def dissect(
    generator: nn.Module,
    layers: Sequence[str],
    segmenter: Segmenter,
    *,
    latent_shape: Sequence[int] | None = None,
    latent_sampler: LatentSampler | None = None,
    generate: Generate | None = None,
    selector: OutputSelector | Mapping[str, OutputSelector] = None,
    config: DissectionConfig | None = None,
    metadata: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> DissectionResult:
    """Dissect ``layers`` of ``generator`` against the concepts of ``segmenter``.

    Runs under ``torch.inference_mode()`` with the generator in eval mode (its previous mode is
    restored); never touches the global RNG. Under an initialised ``torch.distributed`` process
    group the latent bank is split across ranks and every rank returns the same, synced result
    (all ranks must call it).

    Args:
        generator: The generator ``nn.Module``.
        layers: Dotted names of the layers to dissect (see ``generator.named_modules()``).
        segmenter: Images → concept labels (see :class:`~lightning_dissect.segmenters.Segmenter`).
        latent_shape: Shape of one latent, e.g. ``(128,)`` or ``(128, 1, 1)``.
        latent_sampler: Custom ``(n, torch.Generator) -> latents`` (instead of ``latent_shape``).
        generate: Custom ``(generator, latents) -> images``.
        selector: Picks the tensor from tuple/dict layer outputs (one for all or per layer).
        config: A :class:`DissectionConfig`; keyword ``overrides`` replace its fields.
        metadata: Free-form context stored in the result (step, checkpoint, ...).
        overrides: Any :class:`DissectionConfig` field, e.g. ``num_samples=2000``.

    Returns:
        A :class:`~lightning_dissect.result.DissectionResult`.

    Examples:
        >>> from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
        >>> world = SceneWorld(16)
        >>> gen = nn.Sequential(nn.Linear(8, 4 * 4 * 4), nn.Unflatten(1, (4, 4, 4)),
        ...                     nn.Upsample(scale_factor=4), nn.Conv2d(4, 3, 1), nn.Tanh())
        >>> result = dissect(gen, ["3"], SyntheticSceneSegmenter(world), latent_shape=(8,),
        ...                  num_samples=16, batch_size=8, progress=False)
        >>> result["3"].num_units
        3
    """
    unknown = sorted(set(overrides) - set(DissectionConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(
            f"dissect() got unknown settings {unknown}; valid ones are the fields of "
            f"DissectionConfig: {sorted(DissectionConfig.__dataclass_fields__)}"
        )
    cfg = DissectionConfig(**{**asdict(config or DissectionConfig()), **overrides}).validate()
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError("`layers` must name at least one layer")
    model = unwrap_model(generator)
    for name in layers:
        resolve_layer(model, name)
    vocabulary = segmenter.vocabulary
    num_concepts = vocabulary.num_concepts
    ignore_index = vocabulary.unlabeled_index
    rank, world_size = distributed_context()
    device = torch.device(cfg.device) if cfg.device else _module_device(model)

    bank = LatentBank(cfg.num_samples, latent_shape, cfg.seed, latent_sampler)
    check_samples_per_rank(cfg.num_samples, "num_samples")
    if cfg.threshold_mode == "iqr" and cfg.level_selection_samples:
        check_samples_per_rank(cfg.level_selection_samples, "level_selection_samples")
    shard = shard_indices(len(bank), rank, world_size)
    selection_bank = None
    if cfg.threshold_mode == "iqr" and cfg.level_selection_samples:
        selection_bank = LatentBank(
            cfg.level_selection_samples, latent_shape, cfg.seed + 1, latent_sampler
        )

    def forward(bank_: LatentBank, idx: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        # the same latents get the same generator noise in every pass (StyleGAN-style noise)
        with seeded_rng(bank_.seed * 1_000_003 + int(idx[0]), device):
            with capture_layers(model, layers, selector) as captured:
                images = generate_images(generator, bank_[idx].to(device), generate)
        missing = [n for n in layers if n not in captured]
        if missing:
            raise RuntimeError(
                f"layers {missing} did not run during the generator's forward pass"
            )
        for name in layers:
            if captured[name].ndim != 4:
                raise ValueError(
                    f"layer {name!r} output has shape {tuple(captured[name].shape)}; dissection "
                    "needs (B, U, h, w) feature maps"
                )
        return images, captured

    def segment(images: Tensor, first: bool) -> Tensor:
        if first:
            validate_images(images, segmenter.value_range, name="generator output")
        labels = segmenter(images)
        # every batch: a label outside the vocabulary would corrupt the counts (cheap min/max)
        validate_segmentation(labels, vocabulary, batch_size=images.shape[0])
        return labels

    def batches(indices: Tensor) -> list[Tensor]:
        return list(torch.split(indices, cfg.batch_size))

    show = cfg.progress and rank == 0
    with torch.inference_mode(), eval_mode(model), _Progress(show) as progress:
        # ---------------------------------------------------------------- pass 1
        quantiles: dict[str, UnitQuantiles] = {}
        topk: dict[str, tuple[Tensor, Tensor]] = {}
        seg_cache: list[Tensor] = []
        seg_size: tuple[int, int] | None = None
        task = progress.task("dissection pass 1/2: thresholds", len(shard))
        error: BaseException | None = None
        try:
            for i, idx in enumerate(batches(shard)):
                images, acts = forward(bank, idx)
                labels = segment(images, first=i == 0)
                seg_size = (int(labels.shape[-2]), int(labels.shape[-1]))
                seg_cache.append(labels.to("cpu", _compact_dtype(num_concepts)))
                for name in layers:
                    a = acts[name]
                    if name not in quantiles:
                        quantiles[name] = UnitQuantiles(
                            a.shape[1], [cfg.quantile], relative_accuracy=cfg.relative_accuracy
                        ).to(device)
                        empty = torch.empty(a.shape[1], 0, device=device)
                        topk[name] = (empty, empty.long())
                    quantiles[name].update(a.float(), size=seg_size)
                    maxact = a.float().amax((2, 3)).T  # (U, B)
                    topk[name] = _merge_topk(
                        *topk[name], maxact, idx.to(device).expand_as(maxact), cfg.top_k
                    )
                progress.advance(task, len(idx))
        except Exception as err:  # noqa: BLE001 - re-raised below on every rank together
            error = err
        agree_on_failure(error, device, "dissection pass 1")
        assert seg_size is not None
        # thresholds (synced)
        thresholds: dict[str, Tensor] = {}
        if cfg.threshold_mode == "quantile":
            for name in layers:
                thresholds[name] = quantiles[name].compute()[:, 0]
        else:
            fractions = torch.logspace(-3, 0, cfg.num_levels, dtype=torch.float64)
            levels = (1.0 - fractions).flip(0).clamp(min=0.0)
            for name in layers:
                thresholds[name] = quantiles[name].quantile(levels)
        topk = {n: _gather_topk(*topk[n], cfg.top_k, world_size) for n in layers}

        def make_metric(name: str) -> UnitConceptIoU:
            return UnitConceptIoU(
                thresholds[name].shape[0],
                num_concepts,
                thresholds[name],
                ignore_index=ignore_index,
                validate_args=False,
            ).to(device)

        # ---------------------------------------------------------- level selection (iqr)
        selection_counts = None
        if selection_bank is not None:
            sel_shard = shard_indices(len(selection_bank), rank, world_size)
            sel_metrics = {n: make_metric(n) for n in layers}
            task = progress.task("dissection: level selection set", len(sel_shard))
            error = None
            try:
                for i, idx in enumerate(batches(sel_shard)):
                    images, acts = forward(selection_bank, idx)
                    labels = segment(images, first=i == 0).to(device)
                    for name in layers:
                        sel_metrics[name].update(acts[name].float(), labels)
                    progress.advance(task, len(idx))
            except Exception as err:  # noqa: BLE001 - re-raised below on every rank together
                error = err
            agree_on_failure(error, device, "dissection level selection")
            selection_counts = {n: sel_metrics[n].counts() for n in layers}

        # ---------------------------------------------------------------- pass 2
        metrics = {n: make_metric(n) for n in layers}
        chance = {n: make_metric(n) for n in layers} if cfg.chance_baseline else {}
        task = progress.task("dissection pass 2/2: IoU", len(shard))
        error = None
        try:
            for idx, cached in zip(batches(shard), seg_cache):
                _, acts = forward(bank, idx)
                labels = cached.to(device=device, dtype=torch.int64)
                if cfg.chance_baseline:
                    # pair each image with the previous image's segmentation of the same batch;
                    # a batch of one has no partner and is left out of the chance counts (pairing
                    # within batches keeps a DDP run identical to one process)
                    rolled = labels.roll(1, 0) if labels.shape[0] > 1 else None
                for name in layers:
                    a = acts[name].float()
                    metrics[name].update(a, labels)
                    if cfg.chance_baseline and rolled is not None:
                        chance[name].update(a, rolled)
                progress.advance(task, len(idx))
        except Exception as err:  # noqa: BLE001 - re-raised below on every rank together
            error = err
        agree_on_failure(error, device, "dissection pass 2")
        counts = {n: metrics[n].counts() for n in layers}
        chance_counts = {n: chance[n].counts() for n in layers} if cfg.chance_baseline else {}

    layer_results = {}
    for name in layers:
        layer_results[name] = _summarise_layer(
            name,
            cfg,
            vocabulary,
            thresholds[name],
            counts[name],
            chance_counts.get(name),
            selection_counts[name] if selection_counts else None,
            topk[name],
            ignore_index,
        )
    settings = {
        **{k: v for k, v in asdict(cfg).items() if k not in ("progress", "device")},
        "layers": layers,
        "world_size": world_size,
        "segmentation_size": list(seg_size),
    }
    result = DissectionResult(
        layers=layer_results,
        vocabulary=vocabulary,
        settings=settings,
        metadata=dict(metadata or {}),
    )
    if cfg.num_visualized_units and rank == 0:
        from lightning_dissect.visualize import render_unit_images

        result.unit_images = render_unit_images(
            generator,
            result,
            bank,
            segmenter.value_range,
            num_units=cfg.num_visualized_units,
            generate=generate,
            selector=selector,
            device=device,
            batch_size=cfg.batch_size,
        )
    return result


def _module_device(module: nn.Module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _summarise_layer(
    name: str,
    cfg: DissectionConfig,
    vocabulary: Any,
    thresholds: Tensor,
    counts: Any,
    chance_counts: Any,
    selection_counts: Any,
    topk: tuple[Tensor, Tensor],
    ignore_index: int | None,
) -> LayerDissection:
    iou = iou_from_counts(counts.intersection, counts.unit_area, counts.concept_area)
    iqr = iqr_from_counts(counts.intersection, counts.unit_area, counts.concept_area, counts.total)
    chance_iou = None
    if chance_counts is not None:
        chance_iou = iou_from_counts(
            chance_counts.intersection, chance_counts.unit_area, chance_counts.concept_area
        )
    units = thresholds.shape[0]
    if cfg.threshold_mode == "iqr":
        source = selection_counts if selection_counts is not None else counts
        sel_iqr = iqr_from_counts(
            source.intersection, source.unit_area, source.concept_area, source.total
        )
        fraction = source.concept_area.double() / max(1, int(source.total))
        sel_iqr = sel_iqr.masked_fill((fraction < cfg.min_concept_fraction).view(1, 1, -1), 0.0)
        if ignore_index is not None and 0 <= ignore_index < sel_iqr.shape[-1]:
            # below every real concept: a dead unit (all IQRs 0) never gets the "no label" label
            sel_iqr[..., ignore_index] = -1.0
        flat = sel_iqr.reshape(units, -1).argmax(1)
        level = flat // sel_iqr.shape[-1]
        label = flat % sel_iqr.shape[-1]
        rows = torch.arange(units, device=level.device)
        unit_thresholds = thresholds[rows, level.to(thresholds.device)]
        iou = iou[rows, level]
        iqr = iqr[rows, level]
        if chance_iou is not None:
            chance_iou = chance_iou[rows, level]
    else:
        unit_thresholds = thresholds
        masked = iou.clone()
        if ignore_index is not None and 0 <= ignore_index < masked.shape[-1]:
            masked[:, ignore_index] = -1.0
        label = masked.argmax(1)
    records = []
    top_values, top_indices = topk
    for u in range(units):
        c = int(label[u])
        unit_iou = float(iou[u, c])
        unit_iqr = float(iqr[u, c])
        interpretable = unit_iou > cfg.iou_threshold and math.isfinite(unit_iou)
        if cfg.threshold_mode == "iqr":
            interpretable = interpretable and unit_iqr > cfg.iqr_threshold
        records.append(
            UnitDissection(
                unit=u,
                label=vocabulary.names[c],
                concept_index=c,
                category=vocabulary.categories[c],
                iou=unit_iou,
                iou_iqr=unit_iqr,
                level=float(unit_thresholds[u]),
                interpretable=bool(interpretable),
                chance_iou=float(chance_iou[u, c]) if chance_iou is not None else None,
                top_images=[
                    {"index": int(i), "maxact": float(v)}
                    for v, i in zip(top_values[u].tolist(), top_indices[u].tolist())
                ],
            )
        )
    return LayerDissection(
        name,
        records,
        iou.float().cpu(),
        chance_iou.float().cpu() if chance_iou is not None else None,
    )
