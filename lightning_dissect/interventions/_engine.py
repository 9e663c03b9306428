"""The measurement engine: run several edited variants of a network and score each.

:func:`_run` is the one loop; a score (:class:`_Score`) says what is measured per variant: concept
pixel fractions of a generator's images (:class:`_PixelFractions`, :func:`_measure`) or a reading
network's accuracy or score (``interventions._reader``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor

from lightning_dissect.engine.generator import GeneratorRunner
from lightning_dissect.engine.hooks import LayerEdit
from lightning_dissect.engine.latents import LatentBank
from lightning_dissect.engine.runner import Batch, ModuleRunner
from lightning_dissect.interventions._common import _sum_over_ranks
from lightning_dissect.metrics.concept_fraction import ConceptPixelFraction
from lightning_dissect.segmenters.base import Segmenter

_T = TypeVar("_T", covariant=True)


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


class _Score(Protocol[_T]):
    """What the engine measures: a per-variant score of the batches, synced across ranks at the end."""

    def labeller(self, key: Hashable) -> Segmenter | None:
        """The segmenter the batches of variant ``key`` are labelled with (``None``: no labels)."""

    def update(self, key: Hashable, variant: _Variant, batch: Batch) -> None:
        """Add one batch of variant ``key``."""

    def compute(self, runner: ModuleRunner[Any]) -> _T:
        """The synced result (every rank calls it, in the same order)."""


def _run(
    runner: ModuleRunner[Any], source: Any, indices: Tensor, variants: Mapping[Hashable, _Variant], score: _Score[_T]
) -> _T:
    """Run every variant (edited network) over ``source[indices]`` and return the synced ``score``.

    The one measurement loop of every intervention, generator or reader: each variant goes over
    the same indices through :meth:`batches` of the runner (for a generator the same noise per
    batch, for a reader the same images), under one session and one failure agreement; the score
    is synced once at the end, in the same order on every rank.
    """
    with runner.session():
        with runner.collective("intervention measurement"):
            for key, variant in variants.items():
                if not len(indices):
                    break
                for batch in runner.batches(source, indices, segmenter=score.labeller(key), edits=variant.edits):
                    score.update(key, variant, batch)
        return score.compute(runner)


class _PixelFractions:
    """The generators' score: concept pixel fractions of each variant's images (and within its region)."""

    def __init__(self, runner: GeneratorRunner, segmenter: Segmenter, variants: Mapping[Hashable, _Variant]) -> None:
        vocabulary = segmenter.vocabulary

        def metric() -> ConceptPixelFraction:
            return ConceptPixelFraction(
                vocabulary.num_concepts, vocabulary.unlabeled_index, validate_args=False, **runner.metric_options
            ).to(runner.device)

        self.segmenter = segmenter
        self.overall = {key: metric() for key in variants}
        self.inside = {key: metric() for key, v in variants.items() if v.region is not None}

    def labeller(self, key: Hashable) -> Segmenter:
        return self.segmenter

    def update(self, key: Hashable, variant: _Variant, batch: Batch) -> None:
        assert batch.labels is not None
        self.overall[key].update(batch.labels)
        if key in self.inside:
            self.inside[key].update(batch.labels, mask=variant.region)

    def compute(self, runner: GeneratorRunner) -> _Measured:
        fractions = {key: m.compute().cpu() for key, m in self.overall.items()}
        in_region = {key: m.compute().cpu() for key, m in self.inside.items()}
        # compute() leaves the local states in place: sync the counts we report in one call
        head = next(iter(self.overall.values()))
        region_metric = next(iter(self.inside.values()), None)
        region_total = region_metric.total_pixels if region_metric is not None else head.num_images * 0
        local = torch.stack([head.num_images, head.total_pixels, region_total]).to(torch.int64)
        num_images, total, total_inside = (int(v) for v in _sum_over_ranks(local, runner))
        share = total_inside / total if region_metric is not None and total > 0 else None
        return _Measured(fractions, in_region, num_images, share)


def _measure(
    runner: GeneratorRunner,
    segmenter: Segmenter,
    bank: LatentBank,
    variants: Mapping[Hashable, _Variant],
) -> _Measured:
    """Concept pixel fractions of the images of every variant (edited generator), synced.

    Every latent of ``bank`` is generated once per variant (``edits=None``: the unedited
    generator), so every variant of a batch gets the same generator noise. One
    :class:`ConceptPixelFraction` per variant (and one more per variant with a region, counting
    only the region's pixels); all are synced at the end, in the same order on every rank (none is
    synced by a local runner).
    """
    return _run(runner, bank, torch.arange(len(bank)), variants, _PixelFractions(runner, segmenter, variants))
