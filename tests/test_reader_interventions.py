"""Interventions on networks that read images: relative drops, the shared control policy, the curves.

Every number is checked against a plain loop that zeroes units by hand (no hooks), and every rule
shared with the generator side against the generator's own function.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lightning_dissect import dissect_images
from lightning_dissect.engine.images import ImageSet
from lightning_dissect.interventions import (
    ablation_check,
    reader_ablation,
    reader_curve,
)
from lightning_dissect.result import LayerDissection, UnitDissection
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
from tests.test_network_dissection import VOCAB, Painted, TinyClassifier, painted_images


class Discriminator(nn.Module):
    """Score = the sum of the painted units' means plus ``bias``: exactly ``1 + bias`` on every painted image."""

    def __init__(self, bias: float) -> None:
        super().__init__()
        self.painted = Painted()
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.painted(x).sum(1, keepdim=True) + self.bias


def _score_by_hand(images: torch.Tensor, seg: torch.Tensor, bias: float, off: list[int]) -> float:
    """The mean score with units ``off`` zeroed: unit k's mean is the share of concept k's pixels."""
    shares = torch.stack([(seg == k).double().mean((1, 2)) for k in range(4)], 1)  # (N, 4); unit 0 is 0
    shares[:, 0] = 0.0
    shares[:, off] = 0.0
    return float((shares.sum(1) + bias).mean())


def _units(layer_units: list[tuple[int, int, float]], width: int = 4) -> LayerDissection:
    """A layer whose interpretable units are ``(unit, concept, iou)``; the other units are not interpretable."""
    records = {u: UnitDissection(u, VOCAB.names[c], c, "colour", iou, 0.0, 0.5, True, 0.0) for u, c, iou in layer_units}
    units = [records.get(u, UnitDissection(u, "red", 1, "colour", 0.01, 0.0, 0.5, False, 0.0)) for u in range(width)]
    return LayerDissection("painted.units", units, torch.zeros(width, 4))


@pytest.mark.parametrize("bias", [-3.0, -1.0, 2.0])
def test_relative_drop_is_the_share_of_the_baselines_magnitude(bias):
    images, seg = painted_images(8)
    layer = _units([(1, 1, 0.9), (2, 2, 0.8), (3, 3, 0.7)])
    records = reader_ablation(Discriminator(bias), layer, TensorDataset(images, seg), vocabulary=VOCAB,
                              metric="score", num_controls=1)
    base = _score_by_hand(images, seg, bias, [])
    for record in records:
        ablated = _score_by_hand(images, seg, bias, record.units)
        control = _score_by_hand(images, seg, bias, record.control_units[0])
        assert record.baseline == pytest.approx(base) and record.ablated == pytest.approx(ablated)
        if base == 0:  # the score is exactly 0 on every image: no share to take
            assert record.relative_drop == 0.0 and record.control_relative_drop == 0.0
        else:
            assert record.relative_drop == pytest.approx((base - ablated) / abs(base))
            assert record.control_relative_drop == pytest.approx((base - control) / abs(base))
            assert record.relative_drop > 0  # switching off a unit that adds to the score lowers it


def test_reader_and_generator_checks_draw_the_same_controls():
    layer = _units([(0, 1, 0.9), (1, 1, 0.8), (2, 2, 0.9), (3, 2, 0.7), (4, 3, 0.6), (6, 1, 0.1)], width=9)
    images, seg = painted_images(4)
    reader = nn.Sequential(nn.Conv2d(3, 9, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(9, 1))
    records = reader_ablation(reader, LayerDissection("0", layer.units, layer.iou), TensorDataset(images, seg),
                              vocabulary=VOCAB, metric="score", top_n=2, num_controls=2, control_seed=5)
    world = SceneWorld(16)
    generator = nn.Sequential(nn.Unflatten(1, (9, 1, 1)), nn.Upsample(size=16), nn.Conv2d(9, 3, 1), nn.Tanh())
    checked = ablation_check(generator, LayerDissection("1", layer.units, layer.iou), SyntheticSceneSegmenter(world),
                             torch.randn(2, 9), top_n=2, num_controls=2, control_seed=5)
    assert [r.concept_index for r in records] == [r.concept_index for r in checked] == [1, 2, 3]
    assert [r.units for r in records] == [r.units for r in checked] == [[0, 1], [2, 3], [4]]
    assert [r.control_units for r in records] == [r.control_units for r in checked]
    # the policy: concepts switching off as many units share their sets, drawn outside all of their units
    assert records[0].control_units == records[1].control_units
    for record in records[:2]:
        for control in record.control_units:
            assert len(control) == 2 and not set(control) & {0, 1, 2, 3}
    assert all(len(c) == 1 and c != [4] for c in records[2].control_units)


def test_units_for_matches_a_plain_selection():
    gen = torch.Generator().manual_seed(4)
    concepts = torch.randint(1, 4, (30,), generator=gen).tolist()
    ious = torch.randint(0, 5, (30,), generator=gen).div(10).tolist()  # ties on purpose
    interpretable = (torch.rand(30, generator=gen) < 0.7).tolist()
    units = [UnitDissection(u, VOCAB.names[c], c, "colour", iou, 0.0, 0.5, ok, None)
             for u, (c, iou, ok) in enumerate(zip(concepts, ious, interpretable))]
    layer = LayerDissection("l", units, torch.zeros(30, 4))
    for c in range(4):
        mine = [u for u in range(30) if concepts[u] == c and interpretable[u]]
        best_first = sorted(mine, key=lambda u: (-ious[u], u))
        assert [u.unit for u in layer.units_for(c)] == best_first
        assert [u.unit for u in layer.units_for(VOCAB.names[c], top_n=3)] == best_first[:3]


def _accuracy(net: TinyClassifier, images, classes, off, present=None) -> float:
    with torch.no_grad():
        maps = net.features(images)
        maps[:, list(off)] = 0.0
        correct = (net.head(torch.relu(maps).mean((2, 3))).argmax(1) == classes).double()
    if present is not None:
        correct = correct[present]
    return float(correct.mean()) if correct.numel() else float("nan")


@pytest.mark.parametrize("kind", ["ablation", "insertion"])
def test_reader_curves_match_a_plain_loop(kind):
    gen = torch.Generator().manual_seed(9)
    images = torch.rand(12, 3, 8, 8, generator=gen)
    seg = torch.randint(0, 4, (12, 8, 8), generator=gen)
    seg[:5] = seg[:5].clamp(max=1)  # blue absent from the first five images
    classes = torch.randint(0, 3, (12,), generator=gen)
    iou = torch.tensor([0.1, 0.5, 0.3, 0.5, 0.0, 0.2])
    net = TinyClassifier()
    curve = reader_curve(net, "features", "blue", TensorDataset(images, seg, classes), iou, vocabulary=VOCAB,
                         kind=kind, max_units=4, batch_size=5, control_seed=3)
    ranking = np.argsort(-iou.numpy(), kind="stable")[:4]
    assert curve.kind == kind and curve.ranking.tolist() == ranking.tolist() == [1, 3, 2, 5]
    assert curve.num_units.tolist() == [0, 1, 2, 3, 4]
    present = (seg == 3).flatten(1).any(1)
    assert curve.num_images == 12 and curve.num_present == int(present.sum())

    def off(units):  # the units switched off for a point that removes (ablation) or keeps (insertion) ``units``
        return list(units) if kind == "ablation" else [u for u in range(6) if u not in set(units)]

    for i, n in enumerate(curve.num_units.tolist()):
        top = ranking[:n].tolist()
        assert curve.value[i] == pytest.approx(_accuracy(net, images, classes, off(top)))
        assert curve.present_value[i] == pytest.approx(_accuracy(net, images, classes, off(top), present))
        control = curve.control_units[i]
        if 6 - n < n:  # fewer than n units outside the top n: no honest control
            assert control == [] and np.isnan(curve.control_value[i]) and np.isnan(curve.present_control_value[i])
            continue
        assert len(control) == n and not set(control) & set(top)
        assert curve.control_value[i] == pytest.approx(_accuracy(net, images, classes, off(control)))
        assert curve.present_control_value[i] == pytest.approx(_accuracy(net, images, classes, off(control), present))
    assert curve.baseline == pytest.approx(_accuracy(net, images, classes, []))


def test_reader_curve_bad_input():
    images, seg = painted_images(4)
    data = TensorDataset(images, seg)
    with pytest.raises(ValueError, match="`steps`"):
        reader_curve(Painted(), "units", "red", data, torch.ones(4), vocabulary=VOCAB, metric="score", steps=[9])
    with pytest.raises(KeyError, match="`concept`"):
        reader_curve(Painted(), "units", "purple", data, torch.ones(4), vocabulary=VOCAB, metric="score")
    with pytest.raises(ValueError, match="`max_units`"):
        reader_curve(Painted(), "units", "red", data, torch.ones(4), vocabulary=VOCAB, metric="score", max_units=-1)
    with pytest.raises(TypeError, match="reader_curve\\(\\) got unexpected keyword arguments \\['top_n'\\]"):
        reader_curve(Painted(), "units", "red", data, torch.ones(4), vocabulary=VOCAB, top_n=3)
    with pytest.raises(ValueError, match="`kind`"):
        reader_curve(Painted(), "units", "red", data, torch.ones(4), vocabulary=VOCAB, metric="score", kind="deletion")


def _dissect(images, segmenter=None, **kwargs):
    return dissect_images(Painted(), ["units"], images, segmenter, progress=False, **kwargs)


def _ablate(images, segmenter=None, **kwargs):
    return reader_ablation(Painted(), _units([(1, 1, 0.9)]), images, segmenter, metric="score", **kwargs)


def _callback(images, segmenter=None, **kwargs):
    from lightning_dissect import ImageDissectionCallback

    return ImageDissectionCallback(["units"], segmenter, images=images, **kwargs)


@pytest.mark.parametrize("entry", [_dissect, _ablate, _callback], ids=["dissect_images", "reader_ablation", "callback"])
def test_images_and_their_labels_are_resolved_by_one_rule(entry):
    images, seg = painted_images(4)
    pairs = TensorDataset(images, seg)
    segmenter = SyntheticSceneSegmenter(SceneWorld(16))
    with pytest.raises(ValueError, match="either a `segmenter` or the dataset's segmentations"):
        entry(pairs, segmenter, vocabulary=VOCAB)
    with pytest.raises(ValueError, match="belong to the ImageSet"):
        entry(ImageSet(pairs, vocabulary=VOCAB), vocabulary=VOCAB)
    with pytest.raises(ValueError, match="belong to the ImageSet"):
        entry(ImageSet(pairs, vocabulary=VOCAB), value_range=(0, 1))
    if entry is not _callback:  # the callback labels unlabelled images with its default segmenter
        with pytest.raises(ValueError, match="pass a `segmenter`"):
            entry(images)
