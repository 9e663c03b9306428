"""The measurement engine: concept pixel fractions of the images of several edited generators."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_dissect.engine.generator import GeneratorRunner
from lightning_dissect.engine.hooks import LayerEdit
from lightning_dissect.engine.latents import LatentBank
from lightning_dissect.interventions._common import _sum_over_ranks
from lightning_dissect.metrics.concept_fraction import ConceptPixelFraction
from lightning_dissect.segmenters.base import Segmenter


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
    runner: GeneratorRunner,
    segmenter: Segmenter,
    bank: LatentBank,
    variants: Mapping[Hashable, _Variant],
) -> _Measured:
    """Concept pixel fractions of the images of every variant (edited generator), synced.

    Every latent of ``bank`` is generated once per variant (``edits=None``: the unedited
    generator) through :meth:`GeneratorRunner.batches`, so every variant of a batch gets the same
    generator noise. One :class:`ConceptPixelFraction` per variant (and one more per variant with
    a region, counting only the region's pixels); all are synced at the end, in the same order on
    every rank (none is synced by a local runner).
    """
    vocabulary = segmenter.vocabulary

    def metric() -> ConceptPixelFraction:
        return ConceptPixelFraction(
            vocabulary.num_concepts, vocabulary.unlabeled_index, validate_args=False, **runner.metric_options
        ).to(runner.device)

    overall = {key: metric() for key in variants}
    inside = {key: metric() for key, v in variants.items() if v.region is not None}
    indices = torch.arange(len(bank))
    with runner.session():
        with runner.collective("intervention measurement"):
            for key, variant in variants.items():
                if not len(indices):
                    break
                for batch in runner.batches(bank, indices, segmenter=segmenter, edits=variant.edits):
                    overall[key].update(batch.labels)
                    if key in inside:
                        inside[key].update(batch.labels, mask=variant.region)
        fractions = {key: m.compute().cpu() for key, m in overall.items()}
        in_region = {key: m.compute().cpu() for key, m in inside.items()}
        # compute() leaves the local states in place: sync the counts we report in one call
        head = next(iter(overall.values()))
        region_metric = next(iter(inside.values()), None)
        region_total = region_metric.total_pixels if region_metric is not None else head.num_images * 0
        local = torch.stack([head.num_images, head.total_pixels, region_total]).to(torch.int64)
        num_images, total, total_inside = (int(v) for v in _sum_over_ranks(local, runner))
    share = total_inside / total if region_metric is not None and total > 0 else None
    return _Measured(fractions, in_region, num_images, share)
