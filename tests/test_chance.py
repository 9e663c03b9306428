"""The two ends of "interpretable", and the p-value against chance behind the default rule.

* the swap test's p-values equal a brute-force enumeration of swapped pairings computed from the
  pixels with plain NumPy, and one from the group counts in plain Python;
* units painted from the synthetic world's own labels, for eight concepts from 0.1 % to 44 % of
  the pixels, in a generator and in a reader, in both threshold modes: each concept's own mask is
  interpretable, another image's mask, a fixed map and noise never are;
* the group counts, p-values and badges do not depend on the batch size;
* results written before the p-values existed load and read as they were computed.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from lightning_dissect import dissect, dissect_images
from lightning_dissect.engine.images import ImageSet
from lightning_dissect.functional.chance import chance_excess, swap_test_p_values
from lightning_dissect.metrics import UnitConceptIoU
from lightning_dissect.report import write_report
from lightning_dissect.result import DissectionResult
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
from tests.helpers.painting import LABEL_CONCEPTS, LABEL_UNIT_KINDS, LabelPaintedGenerator, LabelPaintedReader

# ----------------------------------------------------------------------------- brute force


def _np_iou(i: float, a: float, s: float) -> float:
    union = a + s - i
    return i / union if union > 0 else 0.0


def brute_force_p_values(masks: np.ndarray, labels: np.ndarray, groups: int) -> np.ndarray:
    """p[u, c] by enumerating every subset of groups whose images swap their own and paired labels.

    ``masks`` (N, U, H, W) bool, ``labels`` (N, H, W) int; image j is paired with image j - 1
    (image 0 with the last); image j belongs to group j mod ``groups``.
    """
    n, units = masks.shape[:2]
    concepts = int(labels.max()) + 1
    paired = np.roll(labels, 1, axis=0)
    group = np.arange(n) % groups

    def statistic(swapped: set[int], u: int, c: int) -> float:
        own_i = own_s = other_i = other_s = 0
        for j in range(n):
            mine, theirs = (paired[j], labels[j]) if group[j] in swapped else (labels[j], paired[j])
            own_i += np.sum(masks[j, u] & (mine == c))
            own_s += np.sum(mine == c)
            other_i += np.sum(masks[j, u] & (theirs == c))
            other_s += np.sum(theirs == c)
        area = float(masks[:, u].sum())
        return _np_iou(own_i, area, own_s) - _np_iou(other_i, area, other_s)

    out = np.zeros((units, concepts))
    subsets = [set(s) for k in range(groups + 1) for s in itertools.combinations(range(groups), k)]
    for u in range(units):
        for c in range(concepts):
            observed = statistic(set(), u, c)
            values = np.array([statistic(s, u, c) for s in subsets])
            out[u, c] = np.mean(values >= observed - 1e-12 * max(1.0, abs(observed)))
    return out


@pytest.mark.parametrize("groups", [3, 5])
def test_swap_test_equals_brute_force_enumeration_over_pixels(groups):
    rng = np.random.default_rng(groups)
    n, units, size, concepts = 11, 3, 6, 3
    labels = rng.integers(0, concepts, (n, size, size))
    acts = rng.random((n, units, size, size))
    acts[:, 0] += 0.8 * (labels == 1)  # a unit that follows concept 1 in its own image
    acts[:, 1] += 0.8 * (np.roll(labels, -2, axis=0) == 2)  # one that follows another image's concept 2
    thresholds = np.array([0.9, 0.9, 0.7])
    metric = UnitConceptIoU(units, concepts, torch.tensor(thresholds), paired=True, sample_groups=groups)
    labels_t = torch.from_numpy(labels)
    paired_t = labels_t.roll(1, 0)
    for start in range(0, n, 4):  # batches that do not align with the groups
        part = slice(start, start + 4)
        metric.update(torch.from_numpy(acts[part]), labels_t[part], paired_t[part],
                      sample_index=torch.arange(n)[part])
    counts, grouped = metric.counts(), metric.group_counts()
    got = swap_test_p_values(
        grouped.intersection.permute(0, 2, 1),
        grouped.concept_area.T.unsqueeze(0).expand(units, -1, -1),
        grouped.paired_intersection.permute(0, 2, 1),
        grouped.paired_concept_area.T.unsqueeze(0).expand(units, -1, -1),
        counts.unit_area.unsqueeze(1).expand(-1, concepts),
    ).numpy()
    expected = brute_force_p_values(acts > thresholds[None, :, None, None], labels, groups)
    np.testing.assert_array_equal(got, expected)
    assert got[0, 1] == 2.0**-groups  # the unit that follows its own image: only the identity is as high


def brute_force_category_p_values(masks: np.ndarray, labels: np.ndarray, groups: int, category: np.ndarray):
    """p[u, c] by enumerating the swapped subsets, with NetDissect-Lite's per-category unit area.

    Under a pairing, the unit's area in image j counts toward concept c (of category k >= 0) only
    when its pixels there overlap a label of category k in that pairing's labels of image j; for a
    concept without a category all its pixels count. Label 0 is "unlabeled" (no concept).
    """
    n, units = masks.shape[:2]
    concepts = category.shape[0]
    paired = np.roll(labels, 1, axis=0)
    group = np.arange(n) % groups

    def area(j: int, u: int, mine: np.ndarray, c: int) -> int:
        pixels = int(masks[j, u].sum())
        if category[c] < 0:
            return pixels
        of_category = np.isin(mine, np.flatnonzero(category == category[c]))
        return pixels if bool((masks[j, u] & of_category).any()) else 0

    def statistic(swapped: set[int], u: int, c: int) -> float:
        own = [0, 0, 0]  # intersection, concept pixels, unit area
        other = [0, 0, 0]
        for j in range(n):
            mine, theirs = (paired[j], labels[j]) if group[j] in swapped else (labels[j], paired[j])
            for sums, seg in ((own, mine), (other, theirs)):
                sums[0] += int(np.sum(masks[j, u] & (seg == c)))
                sums[1] += int(np.sum(seg == c))
                sums[2] += area(j, u, seg, c)
        return _np_iou(own[0], own[2], own[1]) - _np_iou(other[0], other[2], other[1])

    out = np.zeros((units, concepts))
    subsets = [set(s) for k in range(groups + 1) for s in itertools.combinations(range(groups), k)]
    for u in range(units):
        for c in range(1, concepts):
            observed = statistic(set(), u, c)
            values = np.array([statistic(s, u, c) for s in subsets])
            out[u, c] = np.mean(values >= observed - 1e-12 * max(1.0, abs(observed)))
    return out


@pytest.mark.parametrize("path", ["on pixels", "whole maps"])
def test_swap_test_with_per_category_unit_areas_equals_brute_force(path, monkeypatch):
    """Per-category unit areas: a swapped group brings its paired area into the own IoU (exact, no shared area)."""
    from lightning_dissect.functional import counts as module

    if path == "on pixels":
        monkeypatch.setattr(module, "_SPARSE_ROW_FRACTION", 1)
        monkeypatch.setattr(module, "NATIVE_LABEL_WIDTH", -1)
    else:
        monkeypatch.setattr(module, "_on_pixel_plan", lambda *a: None)
    rng = np.random.default_rng(7)
    n, units, size, groups = 9, 3, 6, 3
    category = np.array([-1, 0, 0, 1, 1, -1])
    labels = rng.integers(0, 6, (n, size, size))
    labels[:, :3] = np.where(rng.random((n, 1, 1)) < 0.5, 0, labels[:, :3])  # images without category 0 / 1 on top
    acts = rng.random((n, units, size, size))
    acts[:, 0] += 0.6 * (labels == 3)  # a unit that follows concept 3 in its own image
    acts[:, 1] += 0.6 * np.isin(labels, [1, 2])  # one that follows category 0
    thresholds = np.array([0.9, 0.9, 0.8])
    metric = UnitConceptIoU(
        units, 6, torch.tensor(thresholds), ignore_index=0, paired=True,
        concept_categories=torch.from_numpy(category), sample_groups=groups,
    )
    labels_t = torch.from_numpy(labels)
    for start in range(0, n, 4):
        part = slice(start, start + 4)
        metric.update(torch.from_numpy(acts[part]), labels_t[part], labels_t.roll(1, 0)[part],
                      sample_index=torch.arange(n)[part])
    expected = brute_force_category_p_values(acts > thresholds[None, :, None, None], labels, groups, category)
    got = np.stack([metric.label_p_values(torch.full((units,), c)).numpy() for c in range(6)], 1)
    np.testing.assert_array_equal(got[:, 1:], expected[:, 1:])
    assert got[0, 3] == 2.0**-groups and got[1, 1] == 2.0**-groups  # only the identity is as high


def brute_force_p_values_from_counts(own_i, own_s, other_i, other_s, area) -> np.ndarray:
    """p per row by enumerating all ``2^G`` subsets of swapped groups from the ``(n, G)`` counts, in Python."""
    n, groups = own_i.shape
    out = np.zeros(n)
    for u in range(n):
        values = []
        for subset in range(1 << groups):
            swapped = [(subset >> g) & 1 for g in range(groups)]
            mine = [(other_i if s else own_i)[u, g] for g, s in enumerate(swapped)], \
                [(other_s if s else own_s)[u, g] for g, s in enumerate(swapped)]
            theirs = [(own_i if s else other_i)[u, g] for g, s in enumerate(swapped)], \
                [(own_s if s else other_s)[u, g] for g, s in enumerate(swapped)]
            a = float(area[u])
            values.append(_np_iou(float(sum(int(v) for v in mine[0])), a, float(sum(int(v) for v in mine[1])))
                          - _np_iou(float(sum(int(v) for v in theirs[0])), a, float(sum(int(v) for v in theirs[1]))))
        observed = values[0]
        out[u] = np.mean(np.array(values) >= observed - 1e-12 * max(1.0, abs(observed)))
    return out


@pytest.mark.parametrize("groups", [1, 2, 4, 7, 10])
def test_swap_test_equals_brute_force_enumeration_over_counts(groups):
    """Large counts, ties (groups whose two pairings agree, empty groups), dead units, odd and even G."""
    rng = np.random.default_rng(100 + groups)
    n = 24
    own_s = rng.integers(0, 10**9, (n, groups))
    other_s = rng.integers(0, 10**9, (n, groups))
    other_s[: n // 3, ::2] = own_s[: n // 3, ::2]  # pairings that agree in every other group
    own_s[:, 1::3] = other_s[:, 1::3] = 0  # groups without the concept
    area = rng.integers(0, 10**9, n) * groups
    own_i = np.minimum(own_s, rng.integers(0, 10**9, (n, groups)) % (area[:, None] // groups + 1))
    other_i = np.minimum(other_s, rng.integers(0, 10**9, (n, groups)) % (area[:, None] // groups + 1))
    other_i[: n // 3, ::2] = own_i[: n // 3, ::2]
    own_i[-2] = other_i[-2] = own_s[-2] = other_s[-2] = area[-2] = 0  # a dead unit without the concept
    own_i[-1] = own_s[-1]  # a unit whose intersection is the concept's whole area
    expected = brute_force_p_values_from_counts(own_i, own_s, other_i, other_s, area)
    tensors = [torch.from_numpy(x) for x in (own_i, own_s, other_i, other_s, area)]
    for chunk in (None, 1, 5):
        np.testing.assert_array_equal(swap_test_p_values(*tensors, chunk=chunk).numpy(), expected)
    assert expected[-2] == 1.0 and expected.min() >= 2.0**-groups


def test_excess_is_one_for_a_perfect_mask_and_zero_at_chance_for_any_size():
    chance = torch.tensor([0.003, 0.05, 0.3, 0.674, 0.95])
    assert chance_excess(torch.ones(5), chance).tolist() == [1.0] * 5
    assert chance_excess(chance, chance).tolist() == [0.0] * 5


# ----------------------------------------------------------------------------- painted units

MODES = {"quantile": {"threshold_mode": "quantile", "quantile": 0.5},
         "iqr": {"threshold_mode": "iqr", "num_levels": 24}}


@pytest.fixture(scope="module")
def world():
    return SceneWorld(32)


def _check_both_ends(layer, painter):
    for u in layer.units:
        concept, kind = LABEL_CONCEPTS[u.unit // 4], LABEL_UNIT_KINDS[u.unit % 4]
        what = f"{kind} unit of {concept}: IoU {u.iou:.3f}, chance {u.chance_iou:.3f}, p {u.p_value}"
        if kind == "own":
            assert u.interpretable and u.label == concept and u.iou == 1.0, what
        else:
            assert not u.interpretable, what


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_painted_generator_own_masks_count_other_fixed_and_noise_never(world, mode):
    painter = LabelPaintedGenerator(world)
    result = dissect(painter, ["units"], SyntheticSceneSegmenter(world), latent_shape=(2,), num_samples=120,
                     batch_size=60, progress=False, **MODES[mode])
    _check_both_ends(result["units"], painter)
    areas = [float(painter.frequency[k].mean()) for k in range(len(LABEL_CONCEPTS))]
    assert min(areas) < 0.01 and max(areas) > 0.4  # the concepts span under 1 % to over 40 % of the pixels
    # the papers' fixed cut counts units that know nothing of their image
    paper = [u for u in result["units"].units if u.unit % 4 and result.rule.__class__("paper")(u.iou, u.chance_iou)]
    assert paper


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_painted_reader_own_masks_count_other_fixed_and_noise_never(world, mode):
    images, _ = world.render(120, seed=3)
    reader = LabelPaintedReader(world)
    source = ImageSet(images, value_range=(-1.0, 1.0))
    result = dissect_images(reader, ["units"], source, SyntheticSceneSegmenter(world), batch_size=60, progress=False,
                            **MODES[mode])
    _check_both_ends(result["units"], reader)


def test_levels_chosen_on_a_held_out_bank_give_p_values_at_those_levels(world):
    painter = LabelPaintedGenerator(world, ("sky", "sun", "roof"))
    result = dissect(painter, ["units"], SyntheticSceneSegmenter(world), latent_shape=(2,), num_samples=96,
                     batch_size=48, progress=False, threshold_mode="iqr", num_levels=16, level_selection_samples=48)
    layer = result["units"]
    for u in layer.units:
        kind = LABEL_UNIT_KINDS[u.unit % 4]
        assert u.interpretable == (kind == "own"), (kind, u)
        assert (u.p_value == 2.0**-12) == (kind == "own")


def test_p_values_and_badges_do_not_depend_on_the_batch_size(world):
    painter = LabelPaintedGenerator(world, ("sky", "sun", "roof"))
    segmenter = SyntheticSceneSegmenter(world)
    found = [dissect(painter, ["units"], segmenter, latent_shape=(2,), num_samples=60, batch_size=b, progress=False,
                     quantile=0.5)["units"] for b in (7, 60)]
    for key in ("p_value", "chance_iou", "iou", "interpretable", "label"):
        assert [getattr(u, key) for u in found[0].units] == [getattr(u, key) for u in found[1].units], key
    assert all(u.p_value is not None and 2.0**-12 <= u.p_value <= 1.0 for u in found[0].units)


# ----------------------------------------------------------------------------- old files


def test_results_written_without_p_values_load_and_read_as_computed(world, tmp_path):
    painter = LabelPaintedGenerator(world, ("sky", "sun"))
    result = dissect(painter, ["units"], SyntheticSceneSegmenter(world), latent_shape=(2,), num_samples=48,
                     batch_size=48, progress=False, quantile=0.5)
    data = json.loads(result.to_json())
    for name, old_badge in (("chance_ratio", lambda u: u["iou"] > 0.04 and u["iou"] >= 2 * u["chance_iou"]),
                            (None, lambda u: u["iou"] > 0.04)):
        old = json.loads(json.dumps(data))
        for key in ("min_excess", "max_p_value", "chance_groups", "interpretable"):
            old["settings"].pop(key)
        if name:
            old["settings"]["interpretable"] = name
        for u in old["layers"]["units"]["units"]:
            u.pop("p_value"), u.pop("excess")
            u["interpretable"] = old_badge(u)
        loaded = DissectionResult.from_dict(old)
        assert loaded.rule.name == (name or "paper")
        written = [u["interpretable"] for u in old["layers"]["units"]["units"]]
        assert [u.interpretable for u in loaded["units"].units] == written
        assert all(u.p_value is None for u in loaded["units"].units)
        page = write_report(loaded, tmp_path / f"report-{name}").read_text()
        assert "p-value" in page and loaded.rule.describe().replace(">", "&gt;") in page
    # the sky unit with the sky's own mask: the ratio could not count it, the default rule does
    sky = result["units"].units[0]
    assert sky.interpretable and sky.iou == 1.0 and sky.chance_iou > 0.5


def test_metric_plot_writes_each_units_p_value():
    pytest.importorskip("matplotlib")
    metric = UnitConceptIoU(2, 3, torch.tensor([0.5, 0.5]), paired=True, sample_groups=4)
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (16, 4, 4), generator=gen)
    acts = torch.stack([(labels == 1).float(), torch.rand(16, 4, 4, generator=gen)], 1)  # unit 0 follows concept 1
    metric.update(acts, labels, labels.roll(1, 0), sample_index=torch.arange(16))
    _, ax = metric.plot()
    ticks = {t.get_text() for t in ax.get_yticklabels()}
    own = swap_test_p_values(*(x.unsqueeze(0) for x in (
        metric.group_counts().intersection[0, :, 1], metric.group_counts().concept_area[:, 1],
        metric.group_counts().paired_intersection[0, :, 1], metric.group_counts().paired_concept_area[:, 1])),
        metric.counts().unit_area[:1])
    assert float(own) == 2.0**-4 and "unit 0 (p 0.062)" in ticks
