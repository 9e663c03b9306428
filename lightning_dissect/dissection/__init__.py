"""The dissection engine: one code path for the offline command, the report and the callback.

:func:`dissect` runs the passes of :mod:`~lightning_dissect.dissection.passes` over a seeded latent
bank (split across ranks under DDP) through a :class:`~lightning_dissect.engine.generator.GeneratorRunner`,
labels every unit (:mod:`~lightning_dissect.dissection.summary`) and returns a
:class:`~lightning_dissect.result.DissectionResult`. All layers are dissected in the same passes.
Statistics are TorchMetrics metrics, so under ``torch.distributed`` they are all-reduced and every
rank gets the same result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

from torch import Tensor, nn

from lightning_dissect._utils.distributed import check_samples_per_rank, gather_dicts_to_zero
from lightning_dissect._utils.progress import Progress
from lightning_dissect._utils.seeds import derive_seed
from lightning_dissect.config import DissectionConfig, merge_settings
from lightning_dissect.dissection.passes import CountPass, ThresholdPass, count_pass, threshold_pass, thresholds_from
from lightning_dissect.dissection.strips import render_unit_images
from lightning_dissect.dissection.summary import chosen_thresholds, summarise_layer
from lightning_dissect.engine.generator import Generate, GeneratorRunner
from lightning_dissect.engine.hooks import OutputSelector
from lightning_dissect.engine.images import ImageSet, Transform, resolve_images
from lightning_dissect.engine.latents import LatentBank, LatentSampler
from lightning_dissect.engine.reader import ImageRunner
from lightning_dissect.engine.runner import ModuleRunner, SourceT
from lightning_dissect.functional.counts import ConceptCounts
from lightning_dissect.result import DissectionResult
from lightning_dissect.segmenters.base import Segmenter, check_segmenter
from lightning_dissect.vocabulary import ConceptVocabulary

__all__ = [ "dissect", "dissect_images", "resolve_config"]


def resolve_config(config: DissectionConfig | None, overrides: Mapping[str, Any]) -> DissectionConfig:
    """``config`` (default: :class:`DissectionConfig`) with keyword ``overrides``, validated.

    See :func:`~lightning_dissect.config.merge_settings` (an unknown key is a ``TypeError``).
    """
    return merge_settings(config, ("dissect()'s keyword arguments", overrides))


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
    distributed: bool = True,
    dry_run: bool = True,
    **overrides: Any,
) -> DissectionResult:
    """Dissect ``layers`` of ``generator`` against the concepts of ``segmenter``.

    Runs under ``torch.inference_mode()`` with the generator in eval mode (its previous mode is
    restored); never touches the global RNG. Under an initialised ``torch.distributed`` process
    group the latent bank is split across ranks and every rank returns the same, synced result
    (all ranks must call it), unless ``distributed=False``.

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
        distributed: ``False``: dissect on this process alone, even inside an initialised process
            group (e.g. rank 0 after ``fit()`` while the other ranks have returned).
        dry_run: Check the generator call and the layers first, naming ``latent_shape`` on
            failure (the callback dry-runs once before training instead). The check reads the
            first batch of pass 1, which pass 1 then takes as it is (under DDP: two latents).
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
    cfg = resolve_config(config, overrides)
    runner = GeneratorRunner(
        generator, generate=generate, selector=selector, batch_size=cfg.batch_size, device=cfg.device,
        distributed=distributed,
    )
    layers = runner.check_layers(layers)
    check_segmenter(segmenter)
    bank, selection_bank = _banks(cfg, latent_shape, latent_sampler, distributed)
    if dry_run:
        _dry_run(runner, layers, bank, latent_sampler is not None, latent_shape)
    return _run_passes(
        runner, bank, layers, segmenter, cfg, selection_source=selection_bank, value_range=segmenter.value_range,
        metadata=metadata, refuse_unit_range=dry_run,
    )


def dissect_images(
    network: nn.Module,
    layers: Sequence[str],
    images: ImageSet | Any,
    segmenter: Segmenter | None = None,
    *,
    vocabulary: ConceptVocabulary | None = None,
    value_range: tuple[float, float] | None = None,
    transform: Transform | None = None,
    selector: OutputSelector | Mapping[str, OutputSelector] = None,
    config: DissectionConfig | None = None,
    metadata: Mapping[str, Any] | None = None,
    distributed: bool = True,
    dry_run: bool = True,
    **overrides: Any,
) -> DissectionResult:
    """Network Dissection: dissect ``layers`` of a network that reads images, over real images.

    The same passes, statistics and result as :func:`dissect`, with an image set in place of the
    latent bank: per-unit thresholds over every upsampled pixel of the set, IoU summed over the
    whole set, the chance baseline and each unit's top images (indices into the set). Concepts come
    from ``segmenter`` run on the images, or from the dataset's own segmentations when
    ``vocabulary`` is given (items ``(image, segmentation)``; ``(L, H, W)`` for several labels per
    pixel). Under an initialised process group each rank reads a contiguous, disjoint share of the
    images (never a ``DistributedSampler``'s padded one) and every rank returns the same result,
    bit-identical to a single process.

    Before any pass, the first two images are checked: the items, their dtype and value range, the
    network call, every layer, and the labels; each problem is reported naming its argument.

    Args:
        network: The ``nn.Module`` that reads images (classifier, encoder, discriminator).
        layers: Dotted names of its layers to dissect (see ``network.named_modules()``).
        images: An :class:`~lightning_dissect.engine.images.ImageSet`, or a map-style ``Dataset``, a
            ``DataLoader`` (read through its dataset), or a tensor ``(N, C, H, W)``.
        segmenter: Images → concept labels; ``None`` with ``vocabulary`` (ground truth).
        vocabulary: The concepts the dataset's segmentations index (items are
            ``(image, segmentation)`` pairs).
        value_range: The images' value range (default ``(0, 1)``, torchvision's convention);
            images are mapped from it to the segmenter's range.
        transform: The network's own preprocessing (e.g. normalisation), applied before the
            network only: the segmenter and the unit strips see the images as they are.
        selector: Picks the tensor from tuple/dict layer outputs (one for all or per layer).
        config: A :class:`DissectionConfig`; keyword ``overrides`` replace its fields.
            ``num_samples`` becomes the number of images; ``"iqr"`` levels are chosen on the set.
        metadata: Free-form context stored in the result.
        distributed: ``False``: dissect on this process alone, even inside a process group.
        dry_run: Check the first two images first (items, range, the network call, every layer,
            the labels), naming each argument on failure; ``False`` when the caller checked them
            (the command line does, naming its options).
        overrides: Any :class:`DissectionConfig` field, e.g. ``quantile="netdissect"`` (a named level) or
            ``threshold_mode="iqr"``.

    Returns:
        A :class:`~lightning_dissect.result.DissectionResult`; ``top_images`` index the set.

    Examples:
        >>> from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
        >>> world = SceneWorld(16)
        >>> images, _ = world.render(12, seed=0)
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, stride=2))
        >>> result = dissect_images(net, ["1"], images, SyntheticSceneSegmenter(world), value_range=(-1, 1),
        ...                         batch_size=4, progress=False)
        >>> result["1"].num_units, result.settings["num_samples"]
        (4, 12)
    """
    source, labeller = resolve_images(images, segmenter, vocabulary, value_range)
    cfg = resolve_config(config, overrides)
    cfg = replace(cfg, num_samples=len(source), level_selection_samples=None)
    runner = ImageRunner(
        network, transform=transform, selector=selector, batch_size=cfg.batch_size, device=cfg.device,
        distributed=distributed,
    )
    layers = runner.check_layers(layers)
    check_samples_per_rank(len(source), "images", distributed=distributed)
    if dry_run:
        runner.preflight(source, layers, labeller)
    return _run_passes(
        runner, source, layers, labeller, cfg, selection_source=None,
        value_range=source.value_range, metadata=metadata, refuse_unit_range=False,
    )


def _run_passes(
    runner: ModuleRunner[SourceT],
    source: SourceT,
    layers: list[str],
    segmenter: Segmenter,
    cfg: DissectionConfig,
    *,
    selection_source: SourceT | None,
    value_range: tuple[float, float],
    metadata: Mapping[str, Any] | None,
    refuse_unit_range: bool,
) -> DissectionResult:
    """The passes of every dissection, whatever the runner (generator or image reader) and its source."""
    rank, world_size = runner.rank_world
    with runner.session(), Progress(cfg.progress and rank == 0) as progress:
        # the dry run did not segment (each image is segmented once, in pass 1): pass 1 checks the range
        found = threshold_pass(runner, source, layers, segmenter, cfg, progress, refuse_unit_range=refuse_unit_range)
        thresholds = thresholds_from(found, layers, cfg)
        topk = {n: found.topk[n].gathered(world_size) for n in layers}
        selection = None
        if selection_source is not None:
            selection = count_pass(
                runner, selection_source, thresholds, segmenter, progress, what="dissection: level selection set",
                unit_area=cfg.unit_area,
            ).counts
        counting = thresholds
        if selection is not None:
            # the levels are chosen on the selection set: count the dissection set at them alone
            ignore = segmenter.vocabulary.unlabeled_index
            counting = {n: chosen_thresholds(cfg, thresholds[n], selection[n], ignore) for n in layers}
        counted = count_pass(
            runner, source, counting, segmenter, progress,
            cached=None if found.reread_labels else found.segmentations, chance=cfg.chance_baseline,
            chance_groups=cfg.chance_groups,
            keep=_strip_latents(cfg, found, topk), unit_area=cfg.unit_area,
        )
        frames = counted.frames
        if cfg.num_visualized_units and runner.distributed and world_size > 1:
            # every rank kept the frames of its shard: rank 0 draws the strips from all of them
            frames = gather_dicts_to_zero(frames, runner.device)
    result = _assemble(cfg, layers, segmenter, found, thresholds, topk, counted, selection, world_size, metadata)
    for name in layers:  # the layout each layer was read in, for the report and the JSON
        result.layers[name].layout = runner.layout_of(name).spec
    if cfg.num_visualized_units and rank == 0:
        result.unit_images = render_unit_images(
            runner, result, source, value_range, num_units=cfg.num_visualized_units, frames=frames,
        )
    return result


#: Pass 2 keeps the frames of every unit's top latents for the unit strips when they fit in this
#: many bytes (float32 image and maps per latent, all ranks together); beyond it the strips
#: generate them again.
FRAME_BUDGET_BYTES = 64 << 20


def _strip_latents(cfg: DissectionConfig, found: ThresholdPass, topk: dict[str, tuple[Tensor, Tensor]]) -> set[int]:
    """Latents whose frames pass 2 keeps for the strips: any unit's top images, if they fit.

    Which units get strips is known only after pass 2, so every unit's top latents are kept: with
    many units (say 512 units × 12 top images of 64×64 maps) that exceeds the budget and the
    strips generate their images again. ``topk`` is the same on every rank, and so is the answer
    (each rank keeps those of its shard).
    """
    if not cfg.num_visualized_units:
        return set()
    wanted = {int(i) for _, indices in topk.values() for i in indices.reshape(-1).tolist()}
    return wanted if len(wanted) * found.frame_bytes <= FRAME_BUDGET_BYTES else set()


def _assemble(
    cfg: DissectionConfig,
    layers: list[str],
    segmenter: Segmenter,
    found: ThresholdPass,
    thresholds: dict[str, Tensor],
    topk: dict[str, tuple[Tensor, Tensor]],
    counted: CountPass,
    selection: dict[str, ConceptCounts] | None,
    world_size: int,
    metadata: Mapping[str, Any] | None,
) -> DissectionResult:
    """Label every layer's units and wrap them, with the settings, into a :class:`DissectionResult`."""
    layer_results = {
        name: summarise_layer(
            name, cfg, segmenter.vocabulary, thresholds[name], counted.counts[name],
            chance_counts=counted.chance[name] if counted.chance else None,
            group_counts=counted.groups[name] if counted.groups else None,
            selection_counts=selection[name] if selection else None,
            topk=topk[name],
        )
        for name in layers
    }
    settings = {
        **{k: v for k, v in asdict(cfg).items() if k not in ("progress", "device")},
        "layers": layers,
        "world_size": world_size,
        "segmentation_size": list(found.segmentation_size),
    }
    return DissectionResult(layer_results, segmenter.vocabulary, settings, dict(metadata or {}))


def _dry_run(
    runner: GeneratorRunner, layers: list[str], bank: LatentBank, sampled: bool, latent_shape: Sequence[int] | None
) -> None:
    """Check the generator call and the layers, naming the latent option on failure.

    On one process the check runs the first batch of pass 1, which pass 1 then takes as it is (no
    forward pass is spent on the check); under DDP every rank checks the same two latents. Images
    and labels are left to pass 1, so that the segmenter sees each sample once.
    """
    latents = "`latent_sampler`" if sampled else f"`latent_shape`={tuple(latent_shape or ())}"
    alone = runner.rank_world[1] == 1
    first = runner.split(runner.shard(bank))[0] if alone else None
    runner.preflight(bank, layers, describe=lambda _: latents, what=f"dry run with {latents}", indices=first,
                     keep=alone)


def _banks(
    cfg: DissectionConfig,
    latent_shape: Sequence[int] | None,
    latent_sampler: LatentSampler | None,
    distributed: bool,
) -> tuple[LatentBank, LatentBank | None]:
    """The dissection bank (seed ``cfg.seed``) and the ``"iqr"`` level-selection bank (``seed + 1``)."""
    check_samples_per_rank(cfg.num_samples, "num_samples", distributed=distributed)
    bank = LatentBank(cfg.num_samples, latent_shape, cfg.seed, latent_sampler)
    if cfg.threshold_mode != "iqr" or not cfg.level_selection_samples:
        return bank, None
    check_samples_per_rank(cfg.level_selection_samples, "level_selection_samples", distributed=distributed)
    return bank, LatentBank(
        cfg.level_selection_samples, latent_shape, derive_seed(cfg.seed, "level_selection"), latent_sampler
    )
