"""Network Dissection: dissecting networks that read images, over real images.

Statistics are checked against the plain NumPy loops of ``tests/reference.py``; the painted
network's unit k fires exactly on concept k, so its IoU is 1 by construction.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from lightning_dissect import dissect_images
from lightning_dissect.engine.images import ImageSet
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
from lightning_dissect.vocabulary import ConceptVocabulary
from tests import reference

VOCAB = ConceptVocabulary(("unlabeled", "red", "green", "blue"), ("none", "colour", "colour", "colour"))


def painted_images(n: int = 10, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose every pixel is pure red, green or blue, and the colour index as segmentation."""
    gen = torch.Generator().manual_seed(seed)
    seg = torch.randint(1, 4, (n, size // 2, size // 2), generator=gen).repeat_interleave(2, 1).repeat_interleave(2, 2)
    images = torch.nn.functional.one_hot(seg - 1, 3).permute(0, 3, 1, 2).float()
    return images, seg


class Painted(nn.Module):
    """Unit k of ``units`` is the k-th colour channel (unit 0: nothing): it fires exactly on concept k."""

    def __init__(self) -> None:
        super().__init__()
        self.units = nn.Conv2d(3, 4, 1, bias=False)
        with torch.no_grad():
            self.units.weight.zero_()
            for k in range(1, 4):
                self.units.weight[k, k - 1] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.units(x).mean((2, 3))


def test_painted_network_gets_iou_one():
    images, seg = painted_images()
    result = dissect_images(Painted(), ["units"], TensorDataset(images, seg), vocabulary=VOCAB,
                            batch_size=3, quantile=0.5, progress=False)
    layer = result["units"]
    for k in range(1, 4):
        assert layer.units[k].label == VOCAB.names[k]
        assert layer.units[k].iou == pytest.approx(1.0)
    assert result.settings["num_samples"] == 10


class SmallReader(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))


def test_matches_numpy_reference_with_ground_truth():
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(7, 3, 8, 8, generator=gen)
    seg = torch.randint(0, 4, (7, 8, 8), generator=gen)
    net = SmallReader()
    result = dissect_images(net, ["conv"], TensorDataset(images, seg), vocabulary=VOCAB, batch_size=3,
                            quantile=0.9, progress=False)
    layer = result["conv"]
    with torch.no_grad():
        acts = net.conv(images).numpy()
    thresholds = np.array([u.level for u in layer.units])
    # the threshold is the unit's 0.9 quantile over every upsampled pixel (within the histogram's accuracy)
    upsampled = reference.upsample(acts, 8, 8)
    for u in range(5):
        exact = reference.order_statistic(upsampled[:, u], 0.9)
        assert thresholds[u] == pytest.approx(exact, rel=0.011, abs=1e-6)
    counted = reference.counts(acts, seg.numpy(), thresholds, 4, 0, upsampled=upsampled)
    expected = reference.iou(counted["intersection"], counted["unit_area"], counted["concept_area"])
    np.testing.assert_allclose(layer.iou.numpy(), expected, atol=1e-6, rtol=0)
    chance = reference.counts(acts, np.roll(seg.numpy(), 1, axis=0), thresholds, 4, 0, upsampled=upsampled)
    expected_chance = reference.iou(chance["intersection"], chance["unit_area"], chance["concept_area"])
    np.testing.assert_allclose(layer.chance_iou.numpy(), expected_chance, atol=1e-6, rtol=0)
    # top images: the indices of the set, by each unit's spatial max
    top = [int(t["index"]) for t in layer.units[0].top_images]
    assert top[0] == int(np.argmax(acts[:, 0].reshape(7, -1).max(1)))


def test_multilabel_ground_truth_and_half_size_segmentations():
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(6, 3, 8, 8, generator=gen)
    seg = torch.randint(0, 4, (6, 2, 4, 4), generator=gen)
    net = SmallReader()
    result = dissect_images(net, ["conv"], TensorDataset(images, seg), vocabulary=VOCAB, batch_size=4,
                            quantile=0.8, chance_baseline=False, interpretable="paper", progress=False)
    with torch.no_grad():
        acts = net.conv(images).numpy()
    thresholds = np.array([u.level for u in result["conv"].units])
    counted = reference.counts(acts, seg.numpy(), thresholds, 4, 0)
    expected = reference.iou(counted["intersection"], counted["unit_area"], counted["concept_area"])
    np.testing.assert_allclose(result["conv"].iou.numpy(), expected, atol=1e-6, rtol=0)


def test_segmenter_labels_the_images_and_transform_feeds_the_network_only():
    world = SceneWorld(16)
    images, _ = world.render(8, seed=0)
    segmenter = SyntheticSceneSegmenter(world)
    net = SmallReader()
    seen: list[torch.Tensor] = []

    def transform(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return x * 2.0

    # the images are in [0, 1] here; the segmenter expects [-1, 1]: they are mapped for it
    unit = (images + 1) / 2
    result = dissect_images(net, ["conv"], unit, segmenter, transform=transform, batch_size=8, quantile=0.9,
                            chance_baseline=False, interpretable="paper", progress=False)
    assert all(float(x.min()) >= 0 for x in seen)  # the transform saw the [0, 1] images
    with torch.no_grad():
        acts = net.conv(unit * 2.0).numpy()
    seg = segmenter(images).numpy()
    thresholds = np.array([u.level for u in result["conv"].units])
    counted = reference.counts(acts, seg, thresholds, segmenter.vocabulary.num_concepts, 0)
    expected = reference.iou(counted["intersection"], counted["unit_area"], counted["concept_area"])
    np.testing.assert_allclose(result["conv"].iou.numpy(), expected, atol=1e-6, rtol=0)


def test_dataloader_is_read_through_its_dataset_without_iterating_it():
    images, seg = painted_images(6)

    class Loader(DataLoader):
        def __iter__(self):
            raise AssertionError("the loader itself must not be iterated")

    loader = Loader(TensorDataset(images, seg), batch_size=4, shuffle=True)
    result = dissect_images(Painted(), ["units"], loader, vocabulary=VOCAB, batch_size=4, quantile=0.5,
                            progress=False)
    assert result["units"].units[1].iou == pytest.approx(1.0)


def test_unit_strips_show_the_sets_own_images():
    images, seg = painted_images(6, size=16)
    result = dissect_images(Painted(), ["units"], TensorDataset(images, seg), vocabulary=VOCAB, batch_size=4,
                            quantile=0.5, num_visualized_units=3, top_k=2, progress=False)
    strips = result.unit_images["units"]
    unit = result["units"].units[1]  # fires exactly where the image is red
    for tile, top in zip(strips[1], unit.top_images):
        image = images[int(top["index"])].numpy()
        mask = image[0] > unit.level
        pixels = tile.numpy().astype(int)
        for y in range(16):
            for x in range(16):
                around = mask[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2]
                if around.all():  # inside the mask, off its outline: the image's own pixel
                    assert (pixels[:, y, x] == np.round(image[:, y, x] * 255)).all()
                elif not around.any():  # away from the mask: dimmed to half
                    assert (pixels[:, y, x] == np.round(np.round(image[:, y, x] * 255) * 0.5)).all()


# ---------------------------------------------------------------------- bad input
def test_empty_dataset():
    with pytest.raises(ValueError, match="`images` is empty"):
        dissect_images(Painted(), ["units"], torch.zeros(0, 3, 8, 8), SyntheticSceneSegmenter(16), progress=False)


def test_iterable_dataset_is_refused():
    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.zeros(3, 8, 8)

    with pytest.raises(TypeError, match="`images` must be a map-style dataset"):
        dissect_images(Painted(), ["units"], Stream(), SyntheticSceneSegmenter(16), progress=False)


def test_items_that_are_not_images():
    class Words(Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return ("a", "b")

    with pytest.raises(TypeError, match="`images` item 0 is a str, not an image tensor"):
        dissect_images(Painted(), ["units"], Words(), SyntheticSceneSegmenter(16), progress=False)


def test_wrong_rank_and_dtype():
    with pytest.raises(ValueError, match=r"`images` as a tensor must be \(N, C, H, W\)"):
        dissect_images(Painted(), ["units"], torch.zeros(4, 8, 8), SyntheticSceneSegmenter(16), progress=False)
    with pytest.raises(TypeError, match="`images` yields images of dtype torch.uint8"):
        dissect_images(Painted(), ["units"], torch.zeros(4, 3, 8, 8, dtype=torch.uint8),
                       SyntheticSceneSegmenter(16), progress=False)


def test_values_outside_the_declared_range():
    with pytest.raises(ValueError, match=r"`images` has values in \[0, 255\] outside the declared `value_range`"):
        dissect_images(Painted(), ["units"], torch.full((4, 3, 8, 8), 255.0).index_fill_(0, torch.tensor([0]), 0),
                       SyntheticSceneSegmenter(16), progress=False)


def test_wrong_channels_for_the_network():
    with pytest.raises(ValueError, match=r"`network` failed on the first images of `images` \(shape \(2, 1, 8, 8\)"):
        dissect_images(Painted(), ["units"], torch.rand(4, 1, 8, 8), SyntheticSceneSegmenter(16), progress=False)


def test_wrong_channels_for_the_segmenter():
    net = nn.Sequential(nn.Conv2d(1, 2, 1))
    with pytest.raises(ValueError, match="`images` has 1 channel"):
        dissect_images(net, ["0"], torch.rand(4, 1, 16, 16), SyntheticSceneSegmenter(16), progress=False)


def test_segmentation_sizes_disagree():
    images, _ = painted_images(4)
    with pytest.raises(ValueError, match="the image is 8×8 but its segmentation is 3×3; the sizes disagree"):
        dissect_images(Painted(), ["units"], TensorDataset(images, torch.ones(4, 3, 3, dtype=torch.long)),
                       vocabulary=VOCAB, progress=False)


def test_segmentation_labels_outside_the_vocabulary():
    images, seg = painted_images(4)
    seg[3, 0, 0] = 9
    with pytest.raises(ValueError, match=r"`images` segmentation.*outside \[0, 4\)"):
        dissect_images(Painted(), ["units"], TensorDataset(images, seg), vocabulary=VOCAB, batch_size=2,
                       progress=False)


def test_pairs_without_segmentation():
    images, _ = painted_images(4)
    with pytest.raises(ValueError, match="with `vocabulary` every item must be an \\(image, segmentation\\) pair"):
        dissect_images(Painted(), ["units"], images, vocabulary=VOCAB, progress=False)


def test_layer_that_does_not_run():
    class Skips(Painted):
        def __init__(self):
            super().__init__()
            self.unused = nn.Conv2d(3, 3, 1)

    with pytest.raises(ValueError, match=r"`layers`: layers \['unused'\] did not run during the network's forward"):
        dissect_images(Skips(), ["unused"], painted_images(4, size=16)[0], SyntheticSceneSegmenter(16), progress=False)


def test_unknown_layer_and_missing_labels():
    with pytest.raises(ValueError, match="layers"):
        dissect_images(Painted(), ["nope"], painted_images(4, size=16)[0], SyntheticSceneSegmenter(16), progress=False)
    with pytest.raises(ValueError, match="pass a `segmenter`"):
        dissect_images(Painted(), ["units"], painted_images(4)[0], progress=False)


def test_training_state_untouched():
    images, seg = painted_images(4)
    net = SmallReader().train()
    rng = torch.get_rng_state()
    dissect_images(net, ["conv"], ImageSet(TensorDataset(images, seg), vocabulary=VOCAB), progress=False)
    assert net.training and torch.equal(rng, torch.get_rng_state())


# ---------------------------------------------------------------------- ablation for readers
class TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.features = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.features(x)).mean((2, 3)))


def _accuracy_by_hand(net, images, classes, units, present=None):
    """Accuracy with ``units`` of ``features`` set to zero, computed without hooks."""
    with torch.no_grad():
        maps = net.features(images)
        maps[:, list(units)] = 0.0
        correct = (net.head(torch.relu(maps).mean((2, 3))).argmax(1) == classes).double()
    if present is not None:
        correct = correct[present]
    return float(correct.mean()) if correct.numel() else float("nan")


def test_reader_ablation_matches_a_plain_loop():
    from lightning_dissect.interventions import ReaderAblationEffect, reader_ablation
    from lightning_dissect.result import LayerDissection, UnitDissection

    gen = torch.Generator().manual_seed(8)
    images = torch.rand(10, 3, 8, 8, generator=gen)
    seg = torch.randint(0, 4, (10, 8, 8), generator=gen)
    seg[:4] = seg[:4].clamp(max=2)  # concept 3 absent from the first four images
    classes = torch.randint(0, 3, (10,), generator=gen)
    net = TinyClassifier()
    units = [UnitDissection(u, VOCAB.names[1 + u % 3], 1 + u % 3, "colour", 0.3 - 0.01 * u, 0.0, 0.1, u < 5, 0.0)
             for u in range(6)]
    layer = LayerDissection("features", units, torch.zeros(6, 4))
    data = [(images[i], seg[i], int(classes[i])) for i in range(10)]
    records = reader_ablation(net, layer, data, vocabulary=VOCAB, top_n=2, batch_size=4, num_controls=2)
    assert [r.concept for r in records] == ["red", "green", "blue"]  # 2, 2 and 1 units
    for record in records:
        assert isinstance(record, ReaderAblationEffect) and record.metric == "accuracy"
        c = record.concept_index
        chosen = [u.unit for u in sorted((u for u in units if u.concept_index == c and u.interpretable),
                                         key=lambda u: -u.iou)][:2]
        assert record.units == sorted(chosen)
        present = (seg == c).flatten(1).any(1)
        assert record.num_present == int(present.sum()) and record.num_images == 10
        assert record.baseline == pytest.approx(_accuracy_by_hand(net, images, classes, []))
        assert record.ablated == pytest.approx(_accuracy_by_hand(net, images, classes, record.units))
        assert record.present_ablated == pytest.approx(_accuracy_by_hand(net, images, classes, record.units, present))
        assert len(record.control_units) == 2
        expected_control = np.mean([_accuracy_by_hand(net, images, classes, u) for u in record.control_units])
        assert record.control_ablated == pytest.approx(expected_control)
        for control in record.control_units:
            assert len(control) == len(record.units) and not set(control) & set(record.units)
        assert record.drop == pytest.approx(record.baseline - record.ablated)


def test_reader_ablation_discriminator_score():
    from lightning_dissect.interventions import reader_ablation
    from lightning_dissect.result import LayerDissection, UnitDissection

    images, seg = painted_images(6)
    net = Painted()
    units = [UnitDissection(u, VOCAB.names[max(u, 1)], max(u, 1), "colour", 1.0, 0.0, 0.5, u > 0, 0.0)
             for u in range(4)]
    records = reader_ablation(net, LayerDissection("units", units, torch.zeros(4, 4)), TensorDataset(images, seg),
                              vocabulary=VOCAB, metric="score", num_controls=0)
    with torch.no_grad():
        full = net(images).mean(1)
    for record in records:
        k = record.concept_index
        kept = net(images).detach().clone()
        kept[:, k] = 0.0
        assert record.baseline == pytest.approx(float(full.mean()))
        assert record.ablated == pytest.approx(float(kept.mean(1).mean()))
        assert record.control_units == [] and np.isnan(record.control_ablated)


def test_reader_ablation_bad_input():
    from lightning_dissect.interventions import reader_ablation
    from lightning_dissect.result import LayerDissection

    layer = LayerDissection("units", [], torch.zeros(0, 4))
    images, seg = painted_images(4)
    with pytest.raises(ValueError, match="`metric`"):
        reader_ablation(Painted(), layer, TensorDataset(images, seg), vocabulary=VOCAB, metric="loss")
    with pytest.raises(ValueError, match="`targets`: item 0"):
        reader_ablation(Painted(), layer, TensorDataset(images, seg), vocabulary=VOCAB)


def _dissect_scenes(net: nn.Module, images: torch.Tensor, segmenter: SyntheticSceneSegmenter):
    return dissect_images(net, ["1", "3"], images, segmenter, value_range=(-1, 1), batch_size=4, progress=False)


def test_maps_reused_by_the_counting_pass_give_the_same_result(monkeypatch):
    from lightning_dissect.dissection import passes
    from lightning_dissect.engine import reader as reader_module

    world = SceneWorld(16)
    scenes, _ = world.render(10, seed=4)
    segmenter = SyntheticSceneSegmenter(world)
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2), nn.ReLU())
    calls: list[int] = []
    net.register_forward_hook(lambda _m, inputs, _o: calls.append(inputs[0].shape[0]))
    kept = _dissect_scenes(net, scenes, segmenter)
    # the check reads 2 images; each batch then goes through the network once, not once per pass
    assert calls[1:] == [4, 4, 2]
    calls.clear()
    monkeypatch.setattr(reader_module, "IMAGE_CACHE_BYTES", 0)
    monkeypatch.setattr(passes, "METRIC_THREADS", None)
    again = _dissect_scenes(net, scenes, segmenter)
    assert calls[1:] == [4, 4, 2, 4, 4, 2]  # no cache: both passes run the network
    for name in ("1", "3"):
        assert torch.equal(torch.tensor([u.level for u in kept[name].units]),
                           torch.tensor([u.level for u in again[name].units]))
        assert torch.equal(kept[name].iou, again[name].iou)
        assert torch.equal(kept[name].chance_iou, again[name].chance_iou)


def test_kept_maps_do_not_outlive_the_session():
    from lightning_dissect.engine.reader import ImageRunner

    net = nn.Sequential(nn.Conv2d(3, 2, 1))
    runner = ImageRunner(net, batch_size=4)
    source = ImageSet(torch.rand(4, 3, 5, 5))
    with runner.session():
        first = next(iter(runner.batches(source, layers=["0"]))).activations["0"].clone()
        assert torch.equal(next(iter(runner.batches(source, layers=["0"]))).activations["0"], first)
    with torch.no_grad():
        net[0].bias += 1.0  # the network changed between sessions (e.g. training)
    with runner.session():
        second = next(iter(runner.batches(source, layers=["0"]))).activations["0"]
    torch.testing.assert_close(second, first + 1.0)
    assert runner._maps == {} and runner._maps_bytes == 0
