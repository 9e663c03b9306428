"""Interventions on a network that reads images: its inputs checked once, and its score per variant.

:class:`_Reader` is to a reading network what ``Prepared`` is to a generator; :class:`_ReaderScore`
is the engine's score for it (``interventions._engine``): per variant, the sum of the metric over
all images and over the images where each concept is present (the concepts of an image are read
once, on the unedited pass, which runs first).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

import torch
from torch import Tensor, nn

from lightning_dissect._utils.checks import check_int
from lightning_dissect.engine.hooks import OutputSelector, check_editable
from lightning_dissect.engine.images import ImageSet, Labeller, Transform, resolve_images
from lightning_dissect.engine.reader import ImageRunner
from lightning_dissect.engine.runner import Batch
from lightning_dissect.interventions._common import _NAN, _concept_index, _options, _sum_over_ranks
from lightning_dissect.interventions._engine import _run, _Variant
from lightning_dissect.vocabulary import ConceptVocabulary

SCORES = ("accuracy", "score")
"""``"accuracy"``: argmax of the output equals the image's class; ``"score"``: the mean output
(a discriminator's logit on real images)."""


@dataclass
class _Reader:
    """A reading network's intervention inputs, checked: runner, images, labels, metric, targets."""

    runner: ImageRunner
    source: ImageSet
    labeller: Labeller
    metric: str
    targets: Tensor | None

    @property
    def vocabulary(self) -> ConceptVocabulary:
        return self.labeller.vocabulary

    def concept_index(self, concept: int | str) -> int:
        """The vocabulary index of ``concept`` (a name or an index), checked."""
        return _concept_index(concept, self.labeller)

    def measure(self, variants: Mapping[Hashable, _Variant]) -> _ReaderMeasured:
        """The metric of every variant over this rank's share of the images, summed over ranks."""
        score = _ReaderScore(self, variants)
        return _run(self.runner, self.source, self.runner.shard(self.source), variants, score)


class ReaderOptions(TypedDict, total=False):
    """How a reader intervention reads the images and scores the network (keyword options).

    Shared by :func:`~lightning_dissect.interventions.reader_ablation` and
    :func:`~lightning_dissect.interventions.reader_curve`.

    Attributes:
        metric: ``"accuracy"`` (default: argmax of the output equals the image's class) or
            ``"score"`` (the mean output, e.g. a discriminator's logit on real images).
        targets: For ``"accuracy"``, the class of each image ``(N,)``; default: the last element of
            each dataset item (``(image, class)``, or ``(image, segmentation, class)`` with
            ``vocabulary``).
        vocabulary: The concepts of the dataset's own segmentations (in place of a segmenter).
        value_range: The images' value range (default ``(0, 1)``).
        transform: The network's own preprocessing (the segmenter sees the raw images).
        selector: Picks the tensor of tuple/dict layer outputs.
        batch_size: Images per network call (default 32).
        device: Where to run; default the network's device.
        distributed: ``False``: this process only, even inside a process group (default ``True``).
    """

    metric: str
    targets: Tensor | None
    vocabulary: ConceptVocabulary | None
    value_range: tuple[float, float] | None
    transform: Transform | None
    selector: OutputSelector | Mapping[str, OutputSelector]
    batch_size: int
    device: torch.device | str | None
    distributed: bool


_READER_DEFAULTS: dict[str, Any] = {
    "metric": "accuracy", "targets": None, "vocabulary": None, "value_range": None, "transform": None,
    "selector": None, "batch_size": 32, "device": None, "distributed": True,
}  # fmt: skip


def _reader(
    network: nn.Module, layers: list[str], images: Any, segmenter: Any, options: Mapping[str, Any], function: str
) -> _Reader:
    """Check and resolve what every reader intervention takes (the first two images are run once).

    ``options`` are the :class:`ReaderOptions` of ``function`` (any other keyword raises).
    """
    opts = _options(options, _READER_DEFAULTS, function)
    metric, targets, batch_size = opts["metric"], opts["targets"], opts["batch_size"]
    if metric not in SCORES:
        raise ValueError(f"`metric` must be one of {SCORES}, got {metric!r}")
    check_int(batch_size, "batch_size", minimum=1)
    source, labeller = resolve_images(images, segmenter, opts["vocabulary"], opts["value_range"])
    if targets is not None:
        targets = torch.as_tensor(targets).long().flatten()
        if targets.numel() != len(source):
            raise ValueError(f"`targets` has {targets.numel()} entries for {len(source)} images")
    runner = ImageRunner(
        network, transform=opts["transform"], selector=opts["selector"], batch_size=batch_size, device=opts["device"],
        distributed=opts["distributed"],
    )
    layers = runner.check_layers(layers)
    for name in layers:
        check_editable(runner.selector, name)
    runner.preflight(source, layers, labeller)
    reader = _Reader(runner, source, labeller, metric, targets)
    if metric == "accuracy":
        _targets(reader, torch.arange(min(2, len(source))))  # every item must carry its class: check two now
    return reader


@dataclass
class _ReaderMeasured:
    """Synced sums: per variant ``[metric over all images, per concept: over its present images]``."""

    sums: dict[Hashable, Tensor]
    count: Tensor  # [images, per concept: images where it is present]

    @property
    def num_images(self) -> int:
        return int(self.count[0])

    def num_present(self, concept: int) -> int:
        return int(self.count[1 + concept])

    def value(self, key: Hashable, concept: int | None = None) -> float:
        """The mean metric of variant ``key`` over all images, or over those where ``concept`` is present."""
        i = 0 if concept is None else 1 + concept
        return float(self.sums[key][i] / self.count[i]) if self.count[i] else _NAN


class _ReaderScore:
    """The engine's score of a reading network: the metric per image, split by the concepts present."""

    def __init__(self, reader: _Reader, variants: Mapping[Hashable, _Variant]) -> None:
        if next(iter(variants), None) != "baseline":
            raise AssertionError("the unedited variant must be measured first: it reads the concepts of the images")
        self.reader = reader
        size = 1 + reader.vocabulary.num_concepts
        self.sums = {key: torch.zeros(size, dtype=torch.float64) for key in variants}
        self.count = torch.zeros(size, dtype=torch.float64)
        self.present: dict[int, Tensor] = {}  # first index of a batch -> (B, C) concepts present

    def labeller(self, key: Hashable) -> Labeller | None:
        return self.reader.labeller if key == "baseline" else None

    def update(self, key: Hashable, variant: _Variant, batch: Batch) -> None:
        first = int(batch.indices[0])
        if key == "baseline":
            assert batch.labels is not None
            flat = batch.labels.reshape(batch.labels.shape[0], -1)
            present = torch.zeros(flat.shape[0], self.reader.vocabulary.num_concepts, dtype=torch.bool)
            self.present[first] = present.scatter_(1, flat.cpu(), True)
            self.count[0] += len(batch.indices)
            self.count[1:] += self.present[first].sum(0)
        values = _values(batch.output, self.reader, batch.indices).double().cpu()  # (B,)
        self.sums[key][0] += values.sum()
        self.sums[key][1:] += values @ self.present[first].double()

    def compute(self, runner: ImageRunner) -> _ReaderMeasured:
        keys = list(self.sums)
        stacked = _sum_over_ranks(torch.stack([self.sums[k] for k in keys] + [self.count]), runner)
        return _ReaderMeasured({k: stacked[i] for i, k in enumerate(keys)}, stacked[-1])


def _values(output: Any, reader: _Reader, indices: Tensor) -> Tensor:
    """``(B,)`` per image: 1/0 for a correct/wrong class (``accuracy``), or the mean output (``score``)."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, Tensor):
        raise TypeError(f"the network returned a {type(output).__name__}; a tensor of scores or logits is needed")
    if reader.metric == "score":
        return output.reshape(output.shape[0], -1).float().mean(1)
    if output.ndim != 2:
        raise ValueError(f"metric='accuracy' needs (B, classes) logits; the network returned {tuple(output.shape)}")
    return (output.argmax(1).cpu() == _targets(reader, indices)).float()


def _targets(reader: _Reader, indices: Tensor) -> Tensor:
    """The class of each image: ``targets`` given, else the last element of each dataset item."""
    if reader.targets is not None:
        return reader.targets[indices.cpu()]
    found = []
    for i in indices.tolist():
        item = reader.source.data[i]
        last = item[-1] if isinstance(item, (tuple, list)) and len(item) > 1 else None
        value = torch.as_tensor(last) if last is not None else None
        if value is None or value.numel() != 1 or value.is_floating_point():
            raise ValueError(
                f"`targets`: item {i} of the images carries no class index as its last element; pass `targets=` "
                "(one class per image) for metric='accuracy'"
            )
        found.append(int(value))
    return torch.tensor(found)
