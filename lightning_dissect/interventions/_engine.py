"""The measurement engine: concept pixel fractions of the images of several edited generators."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_dissect._distributed import agree_on_failure, seeded_rng
from lightning_dissect.hooks import LayerEdit, OutputSelector, unwrap_model
from lightning_dissect.interventions._common import Generate
from lightning_dissect.interventions.edits import intervene
from lightning_dissect.metrics._sync import all_reduce_sum
from lightning_dissect.metrics.concept_fraction import ConceptPixelFraction
from lightning_dissect.runner import _check_images_shape, eval_mode
from lightning_dissect.runner import module_device as _module_device
from lightning_dissect.segmenters.base import Segmenter, validate_images, validate_segmentation


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
        error: BaseException | None = None
        try:
            for start, batch in enumerate(torch.split(latents, batch_size)):
                z = batch.to(device)
                for key, variant in variants.items():
                    # every variant of a batch sees the same generator noise (if it draws any)
                    with seeded_rng(start, device):
                        if variant.edits:
                            with intervene(generator, variant.edits, selector):
                                images = _check_images_shape((generate or (lambda g, x: g(x)))(generator, z))
                        else:
                            images = _check_images_shape((generate or (lambda g, x: g(x)))(generator, z))
                    if first:
                        validate_images(images, segmenter.value_range, name="generator output")
                    labels = segmenter(images)
                    if first:
                        validate_segmentation(labels, vocabulary, batch_size=images.shape[0])
                        first = False
                    overall[key].update(labels)
                    if key in inside:
                        inside[key].update(labels, mask=variant.region)
        except Exception as err:  # noqa: BLE001 - re-raised below on every rank together
            error = err
        agree_on_failure(error, device, "intervention measurement")
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
