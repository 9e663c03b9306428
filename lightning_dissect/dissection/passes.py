"""The passes of a dissection, each one loop over a sample source through its runner.

1. :func:`threshold_pass` — network + segmenter: per-unit histograms of the upsampled maps, the
   top-k samples per unit, and the segmentations, cached compactly so the segmenter runs once per
   sample (ground truth that comes with a dataset is read again in pass 2 instead: nothing grows
   with the number of images);
2. :func:`count_pass` — network only: exact unit–concept counts at the thresholds (at ``K``
   candidate levels in ``"iqr"`` mode), and the same counts with images paired to another image's
   segmentation (the chance baseline). On a held-out source it selects the ``"iqr"`` levels.

Every loop runs inside :meth:`ModuleRunner.collective`, so a failure on one rank raises on all.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor

from lightning_dissect._utils.checks import check_finite
from lightning_dissect._utils.distributed import all_gather_cat
from lightning_dissect._utils.parallel import (
    one_thread,
    release_freed_memory,
    run_side_by_side,
    statistics_threads,
    worker_count,
)
from lightning_dissect._utils.progress import Progress
from lightning_dissect.config import DissectionConfig
from lightning_dissect.dissection.strips import Frame, keep_frames
from lightning_dissect.dissection.topk import TopK
from lightning_dissect.engine.images import GroundTruth
from lightning_dissect.engine.runner import Batch, ModuleRunner, SourceT
from lightning_dissect.functional.category_area import concept_category_index
from lightning_dissect.functional.counts import ConceptCounts
from lightning_dissect.metrics import UnitConceptIoU, UnitQuantiles
from lightning_dissect.metrics.unit_concept_iou import GroupCounts
from lightning_dissect.segmenters.base import Segmenter
from lightning_dissect.vocabulary import ConceptVocabulary

__all__ = ["ThresholdPass", "threshold_pass", "thresholds_from", "count_pass", "CountPass", "METRIC_THREADS"]

#: Cap on the CPU threads of the statistics of every batch (upsampling, quantile histogram, counts);
#: ``None`` (the default) uses torch's thread count. The statistics never split one short
#: operation over threads (on a shared machine the barrier after each one cost more than the
#: second thread saved): each thread takes whole unit groups, with torch on one thread inside
#: (:mod:`lightning_dissect._utils.parallel`). Results are the same integers at any count.
METRIC_THREADS: int | None = None


def _compact_dtype(num_concepts: int) -> torch.dtype:
    if num_concepts <= 127:
        return torch.int8
    if num_concepts <= 32767:
        return torch.int16
    return torch.int32


@contextmanager
def metric_threads(device: torch.device | str) -> Iterator[None]:
    """Run the block's statistics on at most :data:`METRIC_THREADS` worker threads (``None``: torch's count).

    On the CPU, the operations between the workers' tasks run with torch on one thread.

    Examples:
        >>> from lightning_dissect._utils.parallel import worker_count
        >>> with metric_threads("cpu"):
        ...     workers = worker_count(torch.device("cpu"))
        >>> workers == min(torch.get_num_threads(), METRIC_THREADS or torch.get_num_threads())
        True
    """
    if torch.device(device).type != "cpu":
        with statistics_threads(None):
            yield
        return
    # the short operations between the parallel tasks on one thread (see _utils.parallel)
    with statistics_threads(METRIC_THREADS), one_thread():
        yield


@dataclass
class ThresholdPass:
    """What pass 1 found: per-layer quantile metrics and top-k, and the cached segmentations."""

    quantiles: dict[str, UnitQuantiles] = field(default_factory=dict)
    topk: dict[str, TopK] = field(default_factory=dict)
    segmentations: list[Tensor] = field(default_factory=list)
    #: The labels are the dataset's own (:class:`GroundTruth`): not cached, pass 2 reads them again.
    reread_labels: bool = False
    segmentation_size: tuple[int, int] = (0, 0)
    #: Bytes of one sample's image and captured maps as float32 (what keeping a frame costs).
    frame_bytes: int = 0


def threshold_pass(
    runner: ModuleRunner[SourceT],
    source: SourceT,
    layers: Sequence[str],
    segmenter: Segmenter,
    cfg: DissectionConfig,
    progress: Progress,
    *,
    refuse_unit_range: bool = False,
) -> ThresholdPass:
    """Pass 1 over this rank's shard of ``source`` (see the module docs).

    ``refuse_unit_range``: refuse ``[0, 1]`` images for a ``[-1, 1]`` segmenter on the first batch
    (see :meth:`ModuleRunner.segment`).
    """
    # a dataset's own labels are read again in pass 2 (as cheap as reading them here): memory stays
    # flat in the number of images; a segmenter's labels are kept, so that it runs once per sample
    out = ThresholdPass(reread_labels=isinstance(segmenter, GroundTruth))
    shard = runner.shard(source)
    task = progress.task("dissection pass 1/2: thresholds", len(shard))
    device = runner.device
    num_concepts = segmenter.vocabulary.num_concepts
    with runner.collective("dissection pass 1"):
        batches = runner.batches(
            source, shard, layers=layers, segmenter=segmenter, on_batch=progress.callback(task),
            refuse_unit_range=refuse_unit_range,
        )
        for batch in batches:
            labels = batch.labels
            assert labels is not None
            out.segmentation_size = (int(labels.shape[-2]), int(labels.shape[-1]))
            if not out.frame_bytes:
                out.frame_bytes = 4 * (batch.images[0].numel() + sum(batch.activations[n][0].numel() for n in layers))
            if not out.reread_labels:
                out.segmentations.append(labels.to("cpu", _compact_dtype(num_concepts)))
            with metric_threads(device):
                maps = {name: batch.activations[name].float() for name in layers}
                for name, a in maps.items():
                    # name the layer (the metric's own check would only say "activations")
                    check_finite(a, f"activations of layer {name!r}", "check the generator for diverged weights")
                    if name not in out.quantiles:
                        out.quantiles[name] = UnitQuantiles(  # values checked just above
                            a.shape[1], [cfg.quantile], relative_accuracy=cfg.relative_accuracy, validate_args=False,
                            **runner.metric_options,
                        ).to(device)
                        out.topk[name] = TopK(a.shape[1], cfg.top_k, device)
                # NetDissect takes the quantile of the raw maps, the PNAS code of the upsampled ones
                size = None if cfg.quantile_over == "raw" else out.segmentation_size

                def update(name: str, a: Tensor, size: tuple[int, int] | None, indices: Tensor) -> None:
                    out.quantiles[name].update(a, size=size)
                    out.topk[name].update(a.amax((2, 3)).T, indices)

                # the layers side by side, their unit groups on the same workers
                run_side_by_side(
                    [partial(update, name, maps[name], size, batch.indices) for name in layers],
                    worker_count(torch.device(device)),
                )
            release_freed_memory()  # memory flat in the number of batches (see _utils.parallel)
    return out


def iqr_levels(num_levels: int) -> Tensor:
    """Candidate quantile levels of ``"iqr"`` mode: ``1 - logspace(-3, 0, K)``, ascending.

    Examples:
        >>> iqr_levels(3).tolist()
        [0.0, 0.9683772233983162, 0.999]
    """
    fractions = torch.logspace(-3, 0, num_levels, dtype=torch.float64)
    return (1.0 - fractions).flip(0).clamp(min=0.0)


def thresholds_from(found: ThresholdPass, layers: Sequence[str], cfg: DissectionConfig) -> dict[str, Tensor]:
    """Per layer ``(U,)`` thresholds (quantile mode) or ``(U, K)`` candidate levels (iqr), synced."""
    if cfg.threshold_mode == "quantile":
        return {name: found.quantiles[name].compute()[:, 0] for name in layers}
    levels = iqr_levels(cfg.num_levels)
    return {name: found.quantiles[name].quantile(levels) for name in layers}


@dataclass
class CountPass:
    """Per-layer counts at the thresholds, and the chance-pairing counts when asked."""

    counts: dict[str, ConceptCounts]
    chance: dict[str, ConceptCounts] | None
    #: ``sample index -> (image, layer -> maps)`` of the samples asked for with ``keep`` (on CPU).
    frames: dict[int, Frame] = field(default_factory=dict)
    #: The counts split by sample group (``index mod chance_groups``), with the chance counts.
    groups: dict[str, GroupCounts] | None = None


def count_pass(
    runner: ModuleRunner[SourceT],
    source: SourceT,
    thresholds: dict[str, Tensor],
    segmenter: Segmenter,
    progress: Progress,
    *,
    cached: Sequence[Tensor] | None = None,
    chance: bool = False,
    chance_groups: int | None = None,
    keep: Collection[int] = (),
    what: str = "dissection pass 2/2: IoU",
    unit_area: str = "all",
) -> CountPass:
    """Count unit–concept co-occurrences at ``thresholds`` over this rank's shard of ``source``.

    Labels come from ``cached`` (pass 1's segmentations, in batch order) or, without it, from
    the segmenter (a :class:`GroundTruth`: the dataset's own labels, read again). With ``chance``,
    every image is also counted against the segmentation of the previous image of the source, the
    first image against the last one; with one sample there is no pair and no chance counts. The
    chance baseline needs ``cached`` labels or a :class:`GroundTruth` (labels read again). The
    image and maps of every sample in ``keep`` are kept (unit strips are drawn from them instead of
    generating the images again).
    ``unit_area="category"`` counts a unit's area per concept category (NetDissect-Lite's rule,
    see :mod:`lightning_dissect.functional.category_area`).
    With ``chance_groups`` the counts are also kept split into that many groups of samples
    (source index mod ``chance_groups``), for the p-values against chance.
    """
    vocabulary = segmenter.vocabulary
    layers = list(thresholds)
    if chance and cached is None and not isinstance(segmenter, GroundTruth):
        raise ValueError("the chance baseline pairs cached segmentations: pass `cached`")

    shard = runner.shard(source)
    chance = chance and len(source) > 1  # one sample: no other image to pair with
    # with the chance baseline, one paired metric per layer: each map is upsampled and
    # thresholded once for the real and the paired labels
    frames: dict[int, Frame] = {}
    keep = set(keep)
    metrics = _count_metrics(runner, thresholds, vocabulary, chance=chance, chance_groups=chance_groups,
                             unit_area=unit_area)
    task = progress.task(what, len(shard))
    labels_of: Callable[[int, Batch], Tensor]
    if cached is not None:
        labels_of = lambda i, _b: cached[i].to(device=runner.device, dtype=torch.int64)  # noqa: E731
    else:
        labels_of = lambda _i, b: _labels(b).to(runner.device)  # noqa: E731
    previous = None
    if chance:
        previous = (
            _last_label_of_previous_shard(runner, cached) if cached is not None
            else _label_before_shard(runner, source, shard, segmenter)
        )
    with runner.collective(what):
        batches = runner.batches(
            source, shard, layers=layers, segmenter=None if cached is not None else segmenter,
            on_batch=progress.callback(task),
        )
        for i, batch in enumerate(batches):
            labels = labels_of(i, batch)
            shifted = None
            if previous is not None:
                # image j is paired with the segmentation of image j - 1 of the whole source (image 0
                # with the last one): the pairing depends on neither the batch size nor the ranks
                shifted = torch.cat([previous, labels[:-1]])
                previous = labels[-1:]
            with metric_threads(runner.device):

                def update(name: str, labels: Tensor = labels, shifted: Tensor | None = shifted,
                           indices: Tensor = batch.indices, batch: Batch = batch) -> None:
                    a = batch.activations[name].float()
                    if chance and chance_groups:
                        metrics[name].update(a, labels, shifted, sample_index=indices)
                    else:
                        metrics[name].update(a, labels, shifted)

                # the layers side by side, their unit groups on the same workers
                run_side_by_side([partial(update, name) for name in layers], worker_count(torch.device(runner.device)))
            keep_frames(frames, batch, keep)
            release_freed_memory()
    if not chance:
        return CountPass({n: metrics[n].counts() for n in layers}, None, frames)
    both = {n: metrics[n].counts_and_paired_counts() for n in layers}  # one sync per layer
    groups = {n: metrics[n].group_counts() for n in layers} if chance_groups else None
    return CountPass({n: c for n, (c, _) in both.items()}, {n: p for n, (_, p) in both.items()}, frames, groups)


def _count_metrics(
    runner: ModuleRunner[SourceT],
    thresholds: dict[str, Tensor],
    vocabulary: ConceptVocabulary,
    *,
    chance: bool,
    chance_groups: int | None,
    unit_area: str,
) -> dict[str, UnitConceptIoU]:
    """One :class:`UnitConceptIoU` per layer of ``thresholds``, on the runner's device (see :func:`count_pass`)."""
    return {
        name: UnitConceptIoU(
            thresholds[name].shape[0],
            vocabulary.num_concepts,
            thresholds[name],
            ignore_index=vocabulary.unlabeled_index,
            validate_args=False,
            paired=chance,
            concept_categories=(
                concept_category_index(vocabulary.categories, vocabulary.category_names)
                if unit_area == "category" else None
            ),
            sample_groups=chance_groups if chance else None,
            **runner.metric_options,
        ).to(runner.device)
        for name in thresholds
    }


def _labels(batch: Batch) -> Tensor:
    """The labels of a batch read with a segmenter."""
    if batch.labels is None:
        raise RuntimeError("a batch read without a segmenter has no labels")
    return batch.labels


def _label_before_shard(
    runner: ModuleRunner[SourceT], source: SourceT, shard: Tensor, segmenter: Segmenter
) -> Tensor:
    """The dataset's own label of the source's image just before this rank's shard (cyclically), read again."""
    index = torch.tensor([(int(shard[0]) - 1) % len(source)], dtype=torch.long)
    return runner.labels_at(source, index, segmenter).to(runner.device)


def _last_label_of_previous_shard(runner: ModuleRunner[Any], cached: Sequence[Tensor]) -> Tensor:
    """The segmentation of the source's image just before this rank's shard (cyclically)."""
    last = cached[-1][-1:].to(device=runner.device, dtype=torch.int64)
    rank, size = runner.rank_world
    if size == 1:
        return last
    every = all_gather_cat(last) if runner.distributed else last
    return every[(rank - 1) % size : (rank - 1) % size + 1]
