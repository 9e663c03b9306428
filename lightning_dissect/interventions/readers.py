"""Ablation for networks that read images: switch off a concept's top units, measure what is lost.

For a classifier the measure is the accuracy, over all images and over the images where the
concept is present; for a discriminator (or any network with one output per image) its mean
score. Everything else is the generator's ablation check: the same units per concept
(:meth:`~lightning_dissect.result.LayerDissection.units_for`), the same random-units controls
(shared by concepts with as many units), the same measurement engine and the same record
arithmetic; a :class:`ReaderAblationEffect` is an
:class:`~lightning_dissect.interventions.AblationEffect` with the measure in place of the pixel
fraction and the same fields for the concept-present images.

Images are read through an :class:`~lightning_dissect.engine.reader.ImageRunner`, under
``inference_mode`` and eval mode; under DDP each rank reads its own share and the sums are
all-reduced, so every rank returns the same records.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch  # noqa: F401 - the examples use it
from torch import Tensor, nn

from lightning_dissect._utils.checks import check_int
from lightning_dissect.engine.images import ImageSet
from lightning_dissect.interventions._engine import _Variant
from lightning_dissect.interventions._prepare import _ablations
from lightning_dissect.interventions._reader import ReaderOptions, _Reader, _reader, _ReaderMeasured
from lightning_dissect.interventions.check import _layer_results, _plan, _unit_sets
from lightning_dissect.interventions.records import ReaderAblationEffect, _ablation_numbers
from lightning_dissect.result import DissectionResult, LayerDissection
from lightning_dissect.segmenters.base import Segmenter

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["reader_ablation"]


def reader_ablation(
    network: nn.Module,
    layer_result: LayerDissection | DissectionResult | Mapping[str, LayerDissection],
    images: ImageSet | Any,
    segmenter: Segmenter | None = None,
    *,
    top_n: int = 20,
    concepts: Sequence[int | str] | None = None,
    num_controls: int = 1,
    control_seed: int = 0,
    **options: Unpack[ReaderOptions],
) -> list[ReaderAblationEffect] | dict[str, list[ReaderAblationEffect]]:
    """Switch off each concept's top units in a reading network and measure the metric's drop.

    Args:
        network: The network the result was computed on.
        layer_result: One layer's :class:`~lightning_dissect.result.LayerDissection`, or a whole
            :class:`~lightning_dissect.result.DissectionResult` / mapping ``layer -> LayerDissection``
            (every layer, in one pass next to one unedited run).
        images: The images (as for :func:`~lightning_dissect.dissect_images`).
        segmenter: Labels the images (which concepts are present); ``None`` with ``vocabulary``.
        top_n: Most units switched off per concept.
        concepts: Only these concepts (names or indices); default: all with interpretable units.
        num_controls: Random unit sets per concept (0: no control).
        control_seed: Seed of the private generator drawing the controls.
        **options: :class:`~lightning_dissect.interventions.ReaderOptions`: ``metric``
            (``"accuracy"``, the default, or ``"score"``), ``targets``, ``vocabulary``,
            ``value_range``, ``transform``, ``selector``, ``batch_size``, ``device``,
            ``distributed``.

    Returns:
        One :class:`ReaderAblationEffect` per concept (more units first): a list for a
        ``LayerDissection``, else ``layer -> list``.

    Examples:
        >>> from lightning_dissect.result import UnitDissection
        >>> from lightning_dissect.vocabulary import ConceptVocabulary
        >>> vocab = ConceptVocabulary(("unlabeled", "red", "blue"), ("none", "colour", "colour"))
        >>> images = torch.zeros(4, 3, 2, 2); images[:2, 0] = 1; images[2:, 2] = 1
        >>> seg = torch.tensor([1, 1, 2, 2])[:, None, None].expand(4, 2, 2)
        >>> # unit 0 sees red, unit 1 blue; with both off, the bias says "blue"
        >>> net = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]).view(2, 3, 1, 1))
        ...     _ = net[3].weight.copy_(torch.eye(2)), net[3].bias.copy_(torch.tensor([-0.3, -0.25]))
        >>> units = [UnitDissection(0, "red", 1, "colour", 1.0, 0.0, 0.5, True, 0.0),
        ...          UnitDissection(1, "blue", 2, "colour", 1.0, 0.0, 0.5, True, 0.0)]
        >>> layer = LayerDissection("0", units, torch.zeros(2, 3))
        >>> data = [(images[i], seg[i], i // 2) for i in range(4)]  # class 0: red, class 1: blue
        >>> records = reader_ablation(net, layer, data, vocabulary=vocab, batch_size=4)
        >>> [(r.concept, r.baseline, r.ablated, r.present_ablated) for r in records]
        [('red', 1.0, 0.5, 0.0), ('blue', 1.0, 1.0, 1.0)]
    """
    check_int(top_n, "top_n", minimum=1)
    check_int(num_controls, "num_controls", minimum=0)
    layers = _layer_results(layer_result, None)
    reader = _reader(network, list(layers), images, segmenter, options, "reader_ablation")
    wanted = None if concepts is None else {reader.concept_index(c) for c in concepts}
    plans = {name: _plan(result, top_n, wanted, num_controls, control_seed) for name, result in layers.items()}
    variants: dict[Hashable, _Variant] = {"baseline": _Variant(None)}
    for name, (chosen, controls) in plans.items():
        variants.update(_ablations(name, layers[name].num_units, _unit_sets(chosen, controls)))
    measured = reader.measure(variants) if len(variants) > 1 else None  # None: no concept has units
    out = {
        name: [_record(reader, measured, name, c, units, controls[c]) for c, units in chosen.items()]
        for name, (chosen, controls) in plans.items()
    }
    return out[next(iter(out))] if isinstance(layer_result, LayerDissection) else out


def _record(
    reader: _Reader, measured: _ReaderMeasured | None, layer: str, c: int, units: Tensor, controls: list[Tensor]
) -> ReaderAblationEffect:
    assert measured is not None
    numbers = _ablation_numbers(measured.value, layer, units, controls)
    present = _ablation_numbers(lambda key: measured.value(key, c), layer, units, controls)
    return ReaderAblationEffect(
        layer=layer, concept=reader.vocabulary.names[c], concept_index=c, units=units.tolist(), **numbers,
        control_units=[u.tolist() for u in controls], mode="zero", num_images=measured.num_images,
        metric=reader.metric, present_baseline=present["baseline"], present_ablated=present["ablated"],
        present_drop=present["drop"], present_control_drop=present["control_drop"],
        num_present=measured.num_present(c),
    )  # fmt: skip
