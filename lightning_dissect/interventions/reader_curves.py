"""Curves for networks that read images: the metric as a concept's top-``n`` units go (or stay alone).

:func:`reader_curve` is the reader counterpart of
:func:`~lightning_dissect.interventions.ablation_curve`. Units are ranked by IoU with the concept
(ties to the lower index), and for each ``n`` of the curve:

* the **ablation curve** switches the top ``n`` units off: the metric falls from the baseline as
  the units that match the concept go;
* the **insertion curve** keeps *only* the top ``n`` units, every other unit of the layer
  switched off: the metric rises from the all-off value (``n = 0``) as the units come back (the
  deletion/insertion pair of attribution methods, with units in place of pixels).

The control of ``n`` does the same with ``n`` random units outside the top ``n`` (the curve
control of the one control policy, see ``docs/interventions.md``). The network runs through the
engine of every intervention: once unedited, once per ``n`` and control, over the same images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_dissect._utils.checks import check_int
from lightning_dissect.engine.images import ImageSet
from lightning_dissect.interventions._common import _NAN
from lightning_dissect.interventions._controls import curve_controls
from lightning_dissect.interventions._engine import _Variant
from lightning_dissect.interventions._prepare import _ablated, _ablations
from lightning_dissect.interventions._reader import ReaderOptions, _reader
from lightning_dissect.interventions.curve import _concept_iou, _curve_points, _iou_ranking
from lightning_dissect.result import LayerDissection
from lightning_dissect.segmenters.base import Segmenter

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["ReaderCurve", "reader_curve", "CURVES"]

CURVES = ("ablation", "insertion")
"""The kinds of :func:`reader_curve`: the top ``n`` units switched off, or kept alone."""


@dataclass
class ReaderCurve:
    """A reading network's metric per ``n``: top-``n`` units off (ablation) or alone (insertion).

    Attributes:
        layer: The layer edited.
        concept: The concept's name.
        concept_index: Its index in the vocabulary.
        kind: ``"ablation"`` (the top ``n`` switched off) or ``"insertion"`` (only they kept).
        metric: ``"accuracy"`` or ``"score"``.
        num_units: ``(S,)`` long, the ``n`` of each point (ascending).
        value: ``(S,)`` float64, the metric over all images at each point.
        control_value: ``(S,)`` float64, the same for ``n`` random units outside the top ``n``
            (NaN where fewer than ``n`` remain).
        present_value: ``(S,)`` float64, the metric over the images where the concept is present
            (NaN when none).
        present_control_value: ``(S,)`` float64, the control over those images.
        ranking: ``(N,)`` long, the units in the order of the curve (best IoU first).
        control_units: Per point, the random units of the control.
        baseline: The unedited metric over all images.
        present_baseline: The unedited metric over the concept-present images.
        num_images: Images per variant, over all processes.
        num_present: Images where the concept is present.
    """

    layer: str
    concept: str
    concept_index: int
    kind: str
    metric: str
    num_units: Tensor
    value: Tensor
    control_value: Tensor
    present_value: Tensor
    present_control_value: Tensor
    ranking: Tensor
    control_units: list[list[int]]
    baseline: float
    present_baseline: float
    num_images: int = 0
    num_present: int = 0


def reader_curve(
    network: nn.Module,
    layer: str,
    concept: int | str,
    images: ImageSet | Any,
    iou: Tensor | LayerDissection,
    segmenter: Segmenter | None = None,
    *,
    kind: str = "ablation",
    max_units: int = 30,
    steps: Sequence[int] | None = None,
    control_seed: int = 0,
    **options: Unpack[ReaderOptions],
) -> ReaderCurve:
    """A reading network's metric with the top-``n`` units by IoU switched off, or kept alone, ``n = 0 … N``.

    ``kind="ablation"`` switches the top ``n`` units off (the first point is the baseline);
    ``kind="insertion"`` keeps only them, every other unit of the layer switched off (the first
    point is the layer with every unit off). See the module docs for the controls.

    Args:
        network: The network that reads the images.
        layer: Dotted name of the layer to edit.
        concept: Concept name or index.
        images: The images (as for :func:`~lightning_dissect.dissect_images`).
        iou: ``(U,)`` IoU of every unit with the concept, ``(U, C)``, or a
            :class:`~lightning_dissect.result.LayerDissection` (its ``iou`` matrix).
        segmenter: Labels the images; ``None`` with ``vocabulary`` (the dataset's segmentations).
        kind: ``"ablation"`` or ``"insertion"``.
        max_units: Largest ``n``, capped by the layer width.
        steps: The ``n`` values to evaluate (each in ``[0, N]``), default all.
        control_seed: Seed of the random order the control units are drawn from.
        **options: :class:`~lightning_dissect.interventions.ReaderOptions` (``metric``,
            ``vocabulary``, ``value_range``, ... as for
            :func:`~lightning_dissect.interventions.reader_ablation`).

    Returns:
        A :class:`ReaderCurve`.

    Examples:
        >>> from lightning_dissect.vocabulary import ConceptVocabulary
        >>> vocab = ConceptVocabulary(("unlabeled", "red", "blue"), ("none", "colour", "colour"))
        >>> images = torch.zeros(4, 3, 2, 2); images[:2, 0] = 1; images[2:, 2] = 1
        >>> seg = torch.tensor([1, 1, 2, 2])[:, None, None].expand(4, 2, 2)
        >>> # a discriminator: its score is unit 0 (red) plus unit 1 (blue)
        >>> net = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]).view(2, 3, 1, 1))
        ...     _ = net[3].weight.fill_(1.0), net[3].bias.zero_()
        >>> data, iou = list(zip(images, seg)), torch.tensor([0.9, 0.1])
        >>> removed = reader_curve(net, "0", "red", data, iou, vocabulary=vocab, metric="score")
        >>> removed.num_units.tolist(), removed.value.tolist(), removed.present_value.tolist()
        ([0, 1, 2], [1.0, 0.5, 0.0], [1.0, 0.0, 0.0])
        >>> kept = reader_curve(net, "0", "red", data, iou, vocabulary=vocab, metric="score", kind="insertion")
        >>> kept.value.tolist(), kept.present_value.tolist(), kept.baseline
        ([0.0, 0.5, 1.0], [0.0, 1.0, 1.0], 1.0)
    """
    if kind not in CURVES:
        raise ValueError(f"`kind` must be one of {CURVES}, got {kind!r}")
    reader = _reader(network, [layer], images, segmenter, options, "reader_curve")
    c = reader.concept_index(concept)
    iou = _concept_iou(iou, c)
    width = int(iou.shape[0])
    top = min(check_int(max_units, "max_units", minimum=0), width)
    points = _curve_points(steps, top)
    ranking = _iou_ranking(iou, top)
    controls = curve_controls(width, ranking, points, control_seed, c)
    # per point, the units switched off: the top n / n random units (ablation), or all others (insertion)
    edit = (lambda units: units) if kind == "ablation" else (lambda units: _others(units, width))
    main = {n: edit(ranking[:n].sort().values) for n in points}
    control = {n: edit(units) for n, units in {0: ranking[:0], **controls}.items() if n in points}
    unit_sets = [u for u in [*main.values(), *control.values()] if u.numel()]
    measured = reader.measure({"baseline": _Variant(None), **_ablations(layer, width, unit_sets)})

    def values(off: Mapping[int, Tensor], concept: int | None = None) -> Tensor:
        keys = {n: "baseline" if not u.numel() else _ablated(layer, u) for n, u in off.items()}
        found = [measured.value(keys[n], concept) if n in keys else _NAN for n in points]
        return torch.tensor(found, dtype=torch.float64)

    return ReaderCurve(
        layer=layer, concept=reader.vocabulary.names[c], concept_index=c, kind=kind, metric=reader.metric,
        num_units=torch.tensor(points, dtype=torch.long), value=values(main), control_value=values(control),
        present_value=values(main, c), present_control_value=values(control, c), ranking=ranking.clone(),
        control_units=[controls[n].tolist() if n in controls else [] for n in points],
        baseline=measured.value("baseline"), present_baseline=measured.value("baseline", c),
        num_images=measured.num_images, num_present=measured.num_present(c),
    )  # fmt: skip


def _others(units: Tensor, width: int) -> Tensor:
    """The units of the layer not in ``units`` (sorted)."""
    keep = torch.ones(width, dtype=torch.bool)
    keep[units] = False
    return keep.nonzero().flatten()
