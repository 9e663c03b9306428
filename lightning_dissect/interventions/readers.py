"""Ablation for networks that read images: switch off a concept's top units, measure what is lost.

For a classifier the measure is the accuracy, over all images and over the images where the
concept is present; for a discriminator (or any network with one output per image) its mean
score. The units of a concept are the layer's interpretable units labelled with it, best IoU first
(at most ``top_n``), as in :func:`~lightning_dissect.interventions.ablation_check`; the random-units
control switches off as many other units of the same layer, drawn with a private generator seeded
from ``control_seed`` and the concept. Records are :class:`ReaderAblationEffect`, an
:class:`~lightning_dissect.interventions.AblationEffect` with the measure in place of the pixel
fraction and the same fields for the concept-present images.

Images are read through an :class:`~lightning_dissect.engine.reader.ImageRunner`: per batch the network
runs once unedited and once per variant, under ``inference_mode`` and eval mode; under DDP each
rank reads its own share and the sums are all-reduced, so every rank returns the same records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_dissect._utils.checks import check_int
from lightning_dissect.engine.hooks import LayerEdit, OutputSelector
from lightning_dissect.engine.images import GroundTruth, ImageSet, Transform
from lightning_dissect.engine.reader import ImageRunner
from lightning_dissect.interventions._common import _NAN, _control_rng, _sum_over_ranks
from lightning_dissect.interventions.edits import random_units
from lightning_dissect.interventions.records import AblationEffect, _relative
from lightning_dissect.result import DissectionResult, LayerDissection
from lightning_dissect.segmenters.base import Segmenter
from lightning_dissect.vocabulary import ConceptVocabulary

__all__ = ["ReaderAblationEffect", "reader_ablation", "SCORES"]

SCORES = ("accuracy", "score")
"""``"accuracy"``: argmax of the output equals the image's class; ``"score"``: the mean output
(a discriminator's logit on real images)."""


@dataclass
class ReaderAblationEffect(AblationEffect):
    """What a reading network loses when a concept's units are switched off, next to a random control.

    ``baseline``, ``ablated``, ``drop`` and the ``control_*`` fields are those of
    :class:`~lightning_dissect.interventions.AblationEffect` with the ``metric`` (accuracy or mean
    score over all images) in place of the concept's pixel fraction. The ``present_*`` fields are the
    same over the images where the concept is present (``num_present`` of them; NaN when none).

    Attributes:
        metric: ``"accuracy"`` or ``"score"``.
        present_baseline: The metric on the concept-present images, unedited.
        present_ablated: ... with ``units`` switched off.
        present_drop: ``present_baseline − present_ablated``.
        present_control_drop: The same drop for the random units (averaged over the controls).
        num_present: Images where the concept is present (all processes).
    """

    metric: str = "accuracy"
    present_baseline: float = _NAN
    present_ablated: float = _NAN
    present_drop: float = _NAN
    present_control_drop: float = _NAN
    num_present: int = 0


def reader_ablation(
    network: nn.Module,
    layer_result: LayerDissection | DissectionResult,
    images: ImageSet | Any,
    segmenter: Segmenter | None = None,
    *,
    metric: str = "accuracy",
    targets: Tensor | None = None,
    vocabulary: ConceptVocabulary | None = None,
    value_range: tuple[float, float] | None = None,
    top_n: int = 20,
    concepts: Sequence[int | str] | None = None,
    num_controls: int = 1,
    control_seed: int = 0,
    transform: Transform | None = None,
    selector: OutputSelector | Mapping[str, OutputSelector] = None,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    distributed: bool = True,
) -> list[ReaderAblationEffect] | dict[str, list[ReaderAblationEffect]]:
    """Switch off each concept's top units in a reading network and measure the metric's drop.

    Args:
        network: The network the result was computed on.
        layer_result: One layer's :class:`~lightning_dissect.result.LayerDissection` or a whole
            :class:`~lightning_dissect.result.DissectionResult` (every layer, each on its own).
        images: The images (as for :func:`~lightning_dissect.dissect_images`).
        segmenter: Labels the images (which concepts are present); ``None`` with ``vocabulary``.
        metric: One of :data:`SCORES`.
        targets: ``"accuracy"``: the class of each image ``(N,)``; default: the last element of
            each dataset item (``(image, class)``, or ``(image, segmentation, class)`` with
            ``vocabulary``).
        vocabulary: The concepts of the dataset's own segmentations.
        value_range: The images' value range (default ``(0, 1)``).
        top_n: Most units switched off per concept.
        concepts: Only these concepts (names or indices); default: all with interpretable units.
        num_controls: Random unit sets per concept (0: no control).
        control_seed: Seed of the private generator drawing the controls.
        transform: The network's own preprocessing.
        selector: Picks the tensor of tuple/dict layer outputs.
        batch_size: Images per network call.
        device: Where to run; default the network's device.
        distributed: ``False``: this process only, even inside a process group.

    Returns:
        One :class:`ReaderAblationEffect` per concept (more units first): a list for a
        ``LayerDissection``, else ``layer -> list``.

    Examples:
        >>> from lightning_dissect.result import UnitDissection
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
    if metric not in SCORES:
        raise ValueError(f"`metric` must be one of {SCORES}, got {metric!r}")
    for name, value, minimum in (("top_n", top_n, 1), ("num_controls", num_controls, 0), ("batch_size", batch_size, 1)):
        check_int(value, name, minimum=minimum)
    if isinstance(images, ImageSet):
        source = images
    else:
        source = ImageSet(images, vocabulary=vocabulary, value_range=value_range or (0.0, 1.0))
    labeller: Any = segmenter if segmenter is not None else (
        GroundTruth(source.vocabulary, source.value_range) if source.vocabulary is not None else None
    )
    if labeller is None:
        raise ValueError("pass a `segmenter` (or the dataset's segmentations with `vocabulary`) to find the concepts")
    if targets is not None:
        targets = torch.as_tensor(targets).long().flatten()
        if targets.numel() != len(source):
            raise ValueError(f"`targets` has {targets.numel()} entries for {len(source)} images")
    single = isinstance(layer_result, LayerDissection)
    layers = {layer_result.name: layer_result} if single else dict(layer_result.layers)  # type: ignore[union-attr]
    vocab = labeller.vocabulary
    wanted = None if concepts is None else {c if isinstance(c, int) else vocab.index(c) for c in concepts}
    plans = {name: _plan(result, top_n, wanted, num_controls, control_seed) for name, result in layers.items()}
    runner = ImageRunner(network, transform=transform, selector=selector, batch_size=batch_size, device=device,
                         distributed=distributed)
    runner.check_layers(list(layers))
    runner.preflight(source, list(layers), labeller)
    widths = {name: result.num_units for name, result in layers.items()}
    sums = _measure(runner, source, labeller, plans, widths, metric, targets)
    out = {name: _records(name, plans[name], sums, vocab, metric) for name in layers}
    return out[next(iter(out))] if isinstance(layer_result, LayerDissection) else out


def _plan(
    result: LayerDissection, top_n: int, wanted: set[int] | None, num_controls: int, seed: int
) -> dict[int, tuple[Tensor, list[Tensor]]]:
    """``concept -> (units, control unit sets)``: best IoU first, more units first."""
    by_concept: dict[int, list[tuple[float, int]]] = {}
    for unit in result.units:
        if unit.interpretable and (wanted is None or unit.concept_index in wanted):
            by_concept.setdefault(unit.concept_index, []).append((-unit.iou, unit.unit))
    width = result.num_units
    plan = {}
    for c in sorted(by_concept, key=lambda c: (-min(len(by_concept[c]), top_n), c)):
        units = torch.tensor(sorted(u for _, u in sorted(by_concept[c])[:top_n]))
        rng = _control_rng(seed, c)
        drawn = [random_units(width, units.numel(), units, generator=rng) for _ in range(num_controls)]
        plan[c] = (units, [d for d in drawn if d is not None])
    return plan


def _variant_key(layer: str, units: Tensor) -> tuple[str, tuple[int, ...]]:
    return layer, tuple(units.tolist())


def _measure(
    runner: ImageRunner,
    source: ImageSet,
    labeller: Any,
    plans: Mapping[str, Mapping[int, tuple[Tensor, list[Tensor]]]],
    widths: Mapping[str, int],
    metric: str,
    targets: Tensor | None,
) -> dict[Any, Tensor]:
    """Per variant ``[metric sum over all images, per concept: metric sum on present images]`` and counts."""
    num_concepts = labeller.vocabulary.num_concepts
    variants: dict[Any, tuple[str, Tensor] | None] = {"baseline": None}
    for layer, plan in plans.items():
        for units, controls in plan.values():
            for u in [units, *controls]:
                variants.setdefault(_variant_key(layer, u), (layer, u))
    sums = {key: torch.zeros(1 + num_concepts, dtype=torch.float64) for key in variants}
    present_count = torch.zeros(1 + num_concepts, dtype=torch.float64)
    with runner.session(), runner.collective("reader ablation"):
        for idx in runner.split(runner.shard(source)):
            images, segmentation = runner.load(source, idx)
            labels = runner.labels(source, images, segmentation, labeller, first=False)
            present = _present(labels, num_concepts).double().cpu()  # (B, C)
            wanted = _targets(source, idx, targets) if metric == "accuracy" else None
            present_count[0] += len(idx)
            present_count[1:] += present.sum(0)
            for key, variant in variants.items():
                edits = None
                if variant is not None:
                    layer, units = variant
                    edits = {layer: LayerEdit(alpha=_alpha(units, widths[layer]))}
                output, _ = runner.forward(images, (), edits=edits)
                values = _values(output, metric, wanted).double().cpu()  # (B,)
                sums[key][0] += values.sum()
                sums[key][1:] += values @ present
    names = list(sums)
    stacked = _sum_over_ranks(torch.stack([sums[k] for k in names] + [present_count]), runner)
    result = {k: stacked[i] for i, k in enumerate(names)}
    result["count"] = stacked[-1]
    return result


def _alpha(units: Tensor, width: int) -> Tensor:
    return torch.zeros(width).index_fill_(0, units, 1.0)


def _present(labels: Tensor, num_concepts: int) -> Tensor:
    """``(B, C)``: whether each concept labels any pixel of each image."""
    flat = labels.reshape(labels.shape[0], -1)
    present = torch.zeros(labels.shape[0], num_concepts, dtype=torch.bool, device=labels.device)
    present.scatter_(1, flat, True)
    return present


def _targets(source: ImageSet, idx: Tensor, targets: Tensor | None) -> Tensor:
    if targets is not None:
        return targets[idx]
    found = []
    for i in idx.tolist():
        item = source.data[i]
        last = item[-1] if isinstance(item, (tuple, list)) and len(item) > 1 else None
        value = torch.as_tensor(last) if last is not None else None
        if value is None or value.numel() != 1 or value.is_floating_point():
            raise ValueError(
                f"`targets`: item {i} of the images carries no class index as its last element; pass `targets=` "
                "(one class per image) for metric='accuracy'"
            )
        found.append(int(value))
    return torch.tensor(found)


def _values(output: Any, metric: str, targets: Tensor | None) -> Tensor:
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, Tensor):
        raise TypeError(f"the network returned a {type(output).__name__}; a tensor of scores or logits is needed")
    if metric == "score":
        return output.reshape(output.shape[0], -1).float().mean(1)
    if output.ndim != 2:
        raise ValueError(f"metric='accuracy' needs (B, classes) logits; the network returned {tuple(output.shape)}")
    assert targets is not None
    return (output.argmax(1).cpu() == targets).float()


def _records(
    layer: str,
    plan: Mapping[int, tuple[Tensor, list[Tensor]]],
    sums: Mapping[Any, Tensor],
    vocabulary: ConceptVocabulary,
    metric: str,
) -> list[ReaderAblationEffect]:
    count = sums["count"]
    total = float(count[0])
    out = []
    for c, (units, controls) in plan.items():
        n_present = float(count[1 + c])

        def mean(key: Any, present: bool, c: int = c, n_present: float = n_present) -> float:
            s = sums[key]
            if present:
                return float(s[1 + c]) / n_present if n_present else _NAN
            return float(s[0]) / total

        base, abl = mean("baseline", False), mean(_variant_key(layer, units), False)
        pbase, pabl = mean("baseline", True), mean(_variant_key(layer, units), True)
        ctrl = [mean(_variant_key(layer, u), False) for u in controls]
        pctrl = [mean(_variant_key(layer, u), True) for u in controls]
        control = sum(ctrl) / len(ctrl) if ctrl else _NAN
        pcontrol = sum(pctrl) / len(pctrl) if pctrl else _NAN
        out.append(ReaderAblationEffect(
            layer=layer, concept=vocabulary.names[c], concept_index=c, units=units.tolist(), baseline=base,
            ablated=abl, drop=base - abl, relative_drop=_relative(base - abl, base), control_ablated=control,
            control_drop=base - control, control_relative_drop=_relative(base - control, base) if ctrl else _NAN,
            control_units=[u.tolist() for u in controls], mode="zero", num_images=int(total), metric=metric,
            present_baseline=pbase, present_ablated=pabl, present_drop=pbase - pabl,
            present_control_drop=pbase - pcontrol, num_present=int(n_present),
        ))
    return out
