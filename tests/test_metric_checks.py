"""Argument checks, the exception-type rule and checked ``load_state_dict`` of the metrics.

Rule under test: a wrong Python type or tensor dtype raises ``TypeError``; a wrong shape, size or
value raises ``ValueError``; every message names the argument. Results are compared with plain
NumPy references.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lightning_dissect import ConceptVocabulary
from lightning_dissect.functional import unit_concept_counts, upsample_bilinear
from lightning_dissect.metrics import ConceptPixelFraction, UnitConceptIoU, UnitQuantiles
from lightning_dissect.metrics.concept_fraction import per_image_concept_fractions
from lightning_dissect.segmenters import validate_images, validate_segmentation

VOCAB = ConceptVocabulary(("unlabeled", "sky", "tree", "road"), ("none", "material", "object", "object"))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(7)


def np_order_statistic(values: np.ndarray, q: float) -> float:
    """``kthvalue(x, max(1, ceil(q N)))`` by sorting."""
    ordered = np.sort(values)
    return float(ordered[max(1, math.ceil(q * len(ordered))) - 1])


def np_iou(acts: np.ndarray, seg: np.ndarray, thresholds: np.ndarray, num_concepts: int) -> np.ndarray:
    """IoU per (unit, concept) with maps already at the segmentation size, by loops."""
    units = acts.shape[1]
    out = np.zeros((units, num_concepts))
    for u in range(units):
        on = acts[:, u] > thresholds[u]
        for c in range(num_concepts):
            present = seg == c
            union = (on | present).sum()
            out[u, c] = (on & present).sum() / union if union else 0.0
    return out


# ---------------------------------------------------------------- counts: bool is not an int
@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: UnitQuantiles(True), "num_units"),
        (lambda: UnitConceptIoU(True, 3, torch.zeros(1)), "num_units"),
        (lambda: UnitConceptIoU(1, True, torch.zeros(1)), "num_concepts"),
        (lambda: ConceptPixelFraction(True), "num_concepts"),
        (lambda: UnitConceptIoU(2, 3, torch.zeros(2), ignore_index=True), "ignore_index"),
        (lambda: ConceptPixelFraction(3, ignore_index=True), "ignore_index"),
        (lambda: UnitConceptIoU(2.0, 3, torch.zeros(2)), "num_units"),
        (lambda: UnitQuantiles(2, quantiles=True), "quantiles"),
        (lambda: UnitQuantiles(2, quantiles="0.5"), "quantiles"),
        (lambda: UnitConceptIoU(2, 3, torch.zeros(2), max_temporary_bytes=1.5), "max_temporary_bytes"),
    ],
)
def test_wrong_types_raise_type_error_naming_the_argument(build, name):
    with pytest.raises(TypeError, match=f"`{name}`"):
        build()


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: UnitQuantiles(0), "num_units"),
        (lambda: UnitConceptIoU(0, 3, torch.zeros(0)), "num_units"),
        (lambda: ConceptPixelFraction(0), "num_concepts"),
        (lambda: UnitConceptIoU(2, 3, torch.zeros(2, 0)), "thresholds"),
        (lambda: UnitQuantiles(2, quantiles=torch.tensor([[0.5]])), "quantiles"),
        (lambda: UnitQuantiles(2, quantiles=torch.tensor(1.5)), "quantiles"),
        (lambda: UnitQuantiles(2, quantiles=torch.tensor([])), "quantiles"),
        (lambda: UnitConceptIoU(2, 3, torch.zeros(2), max_temporary_bytes=0), "max_temporary_bytes"),
    ],
)
def test_wrong_values_raise_value_error_naming_the_argument(build, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        build()


def test_functional_rejects_bool_ignore_index_and_empty_levels(gen):
    acts = torch.rand(1, 2, 4, 4, generator=gen)
    seg = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(TypeError, match="`ignore_index`"):
        unit_concept_counts(acts, seg, torch.zeros(2), 3, ignore_index=True)
    with pytest.raises(ValueError, match=r"`thresholds` of shape \(U, K\) needs at least one level"):
        unit_concept_counts(acts, seg, torch.zeros(2, 0), 3)


# ---------------------------------------------------------------- 0-d tensor quantiles
def test_zero_dim_tensor_quantile_is_one_level(gen):
    acts = torch.randn(50, 3, generator=gen).abs() + 0.1
    metric = UnitQuantiles(3, quantiles=torch.tensor(0.5))
    metric.update(acts)
    got = metric.compute()
    assert got.shape == (3,)
    other = metric.quantile(torch.tensor(0.9))
    assert other.shape == (3,)
    assert metric.quantile(torch.tensor([0.5, 0.9])).shape == (3, 2)
    for u in range(3):
        column = acts[:, u].numpy()
        for value, q in ((got[u], 0.5), (other[u], 0.9)):
            ref = np_order_statistic(column, q)
            assert abs(float(value) - ref) <= metric.spec.achieved_accuracy * ref * (1 + 1e-6)
    with pytest.raises(ValueError, match="`levels`"):
        metric.quantile(torch.tensor(-0.5))
    with pytest.raises(TypeError, match="`levels`"):
        metric.quantile(torch.tensor(True))


# ---------------------------------------------------------------- size
@pytest.mark.parametrize("size", [0, (4, 0), (0, 4), -3])
def test_size_zero_is_rejected_naming_size(gen, size):
    acts = torch.rand(2, 3, 4, 4, generator=gen)
    with pytest.raises(ValueError, match="`size` must be positive"):
        upsample_bilinear(acts, size)
    metric = UnitQuantiles(3)
    with pytest.raises(ValueError, match="`size` must be positive"):
        metric.update(acts, size=size)
    assert int(metric.histogram.sum()) == 0  # nothing was counted


@pytest.mark.parametrize("size", [True, 2.5, (2.5, 3), "8"])
def test_size_of_wrong_type_is_rejected(gen, size):
    with pytest.raises(TypeError, match="`size`"):
        upsample_bilinear(torch.rand(1, 1, 2, 2, generator=gen), size)


def test_size_pair_still_works(gen):
    acts = torch.rand(1, 1, 2, 2, generator=gen)
    out = upsample_bilinear(acts, (4, 3))
    a = acts[0, 0].numpy().astype(np.float64)
    # reference: align_corners=False bilinear by the textbook formula
    ref = np.zeros((4, 3))
    for i in range(4):
        for j in range(3):
            y = min(max((i + 0.5) * 2 / 4 - 0.5, 0), 1)
            x = min(max((j + 0.5) * 2 / 3 - 0.5, 0), 1)
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1, x1 = min(y0 + 1, 1), min(x0 + 1, 1)
            fy, fx = y - y0, x - x0
            ref[i, j] = (
                a[y0, x0] * (1 - fy) * (1 - fx) + a[y0, x1] * (1 - fy) * fx
                + a[y1, x0] * fy * (1 - fx) + a[y1, x1] * fy * fx
            )
    np.testing.assert_allclose(out[0, 0].numpy(), ref, atol=1e-6)


# ---------------------------------------------------------------- NaN
def test_nan_activations_name_the_argument(gen):
    acts = torch.rand(2, 3, 4, 4, generator=gen)
    acts[1, 2, 0, 0] = float("nan")
    seg = torch.zeros(2, 8, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="`activations` contains 1 NaN"):
        UnitQuantiles(3).update(acts, size=8)
    with pytest.raises(ValueError, match="`activations` contains 1 NaN"):
        UnitConceptIoU(3, 2, torch.zeros(3)).update(acts, seg)
    with pytest.raises(ValueError, match="`activations` contains 1 NaN"):
        unit_concept_counts(acts, seg, torch.zeros(3), 2)


def test_nan_or_out_of_range_mask_is_rejected():
    seg = torch.zeros(2, 4, 4, dtype=torch.long)
    metric = ConceptPixelFraction(3)
    bad = torch.ones(4, 4)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="`mask` contains 1 NaN"):
        metric.update(seg, mask=bad)
    with pytest.raises(ValueError, match=r"`mask` must hold values in \[0, 1\]"):
        metric.update(seg, mask=torch.full((4, 4), 2.0))
    with pytest.raises(TypeError, match="`mask`"):
        metric.update(seg, mask=[[1.0]])
    with pytest.raises(ValueError, match="`mask` contains"):
        per_image_concept_fractions(seg, 3, mask=bad)
    assert int(metric.total_pixels) == 0  # nothing was counted
    metric.update(seg, mask=torch.ones(2, 2, dtype=torch.bool))
    assert int(metric.total_pixels) == 32


# ---------------------------------------------------------------- one validator family
def test_float_labels_are_a_type_error_everywhere(gen):
    acts = torch.rand(2, 3, 4, 4, generator=gen)
    labels = torch.zeros(2, 4, 4)
    with pytest.raises(TypeError, match="`segmentation` must hold integer"):
        unit_concept_counts(acts, labels, torch.zeros(3), 4)
    with pytest.raises(TypeError, match="`segmentation` must hold integer"):
        ConceptPixelFraction(4).update(labels)
    with pytest.raises(TypeError, match="`segmenter output` must hold integer"):
        validate_segmentation(labels, VOCAB, batch_size=2)
    with pytest.raises(TypeError, match="`segmenter output` must hold integer"):
        validate_segmentation(labels.bool(), VOCAB)


def test_segmenter_validators_follow_the_rule():
    with pytest.raises(ValueError, match=r"`segmenter output` has labels outside \[0, 4\)"):
        validate_segmentation(torch.full((1, 2, 2), 4), VOCAB)
    with pytest.raises(ValueError, match="`segmenter output` has batch size 1"):
        validate_segmentation(torch.zeros(1, 2, 2, dtype=torch.long), VOCAB, batch_size=2)
    with pytest.raises(TypeError, match="`generator output` must be a floating-point"):
        validate_images(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), name="generator output")
    with pytest.raises(ValueError, match="`generator output` contains NaN"):
        validate_images(torch.full((1, 3, 2, 2), float("nan")), name="generator output")
    with pytest.raises(ValueError, match="`value_range`"):
        validate_images(torch.zeros(1, 3, 2, 2), (1.0, 1.0))


# ---------------------------------------------------------------- load_state_dict
def _iou_state(gen, thresholds, num_concepts=4):
    acts = torch.rand(2, thresholds.shape[0], 4, 4, generator=gen)
    seg = torch.randint(0, num_concepts, (2, 4, 4), generator=gen)
    metric = UnitConceptIoU(thresholds.shape[0], num_concepts, thresholds)
    metric.persistent(True)
    metric.update(acts, seg)
    return metric.state_dict(), acts, seg


def test_iou_state_round_trip_matches_reference(gen):
    thresholds = torch.tensor([0.2, 0.5, 0.8])
    state, acts, seg = _iou_state(gen, thresholds)
    fresh = UnitConceptIoU(3, 4, thresholds.clone())
    fresh.load_state_dict(state)
    ref = np_iou(acts.numpy(), seg.numpy(), thresholds.numpy(), 4)
    np.testing.assert_allclose(fresh.compute().numpy(), ref, rtol=1e-6)
    # a state dict saved before the thresholds were part of it still loads (strictly)
    legacy = {k: v for k, v in state.items() if k != "thresholds"}
    older = UnitConceptIoU(3, 4, thresholds.clone())
    older.load_state_dict(legacy)
    np.testing.assert_allclose(older.compute().numpy(), ref, rtol=1e-6)


def test_iou_refuses_multi_level_state_in_single_level_metric(gen):
    state, _, _ = _iou_state(gen, torch.zeros(3, 2))
    target = UnitConceptIoU(3, 4, torch.zeros(3))
    with pytest.raises(RuntimeError, match=r"\(U, K\) multi-level `thresholds`"):
        target.load_state_dict(state)
    assert int(target.total) == 0 and target.intersection.shape == (3, 4)  # untouched


def test_iou_refuses_other_thresholds_and_sizes(gen):
    thresholds = torch.tensor([0.2, 0.5, 0.8])
    state, _, _ = _iou_state(gen, thresholds)
    with pytest.raises(RuntimeError, match="counted at other `thresholds`"):
        UnitConceptIoU(3, 4, thresholds + 0.1).load_state_dict(state)
    with pytest.raises(RuntimeError, match=r"`num_concepts` \(4 in the loaded state, 5 here\)"):
        UnitConceptIoU(3, 5, thresholds).load_state_dict(state)
    with pytest.raises(RuntimeError, match=r"`num_units` \(3 in the loaded state, 2 here\)"):
        UnitConceptIoU(2, 4, thresholds[:2]).load_state_dict(state)
    float_state = dict(state, total=state["total"].double())
    with pytest.raises(RuntimeError, match="state `total` must be an integer count tensor"):
        UnitConceptIoU(3, 4, thresholds).load_state_dict(float_state)


def _iou_metric(gen, thresholds, num_concepts=4):
    acts = torch.rand(2, thresholds.shape[0], 4, 4, generator=gen)
    seg = torch.randint(0, num_concepts, (2, 4, 4), generator=gen)
    metric = UnitConceptIoU(thresholds.shape[0], num_concepts, thresholds)
    metric.update(acts, seg)
    return metric, acts, seg


def test_merge_state_adds_counts_of_compatible_metrics(gen):
    thresholds = torch.tensor([0.2, 0.5, 0.8])
    a, acts_a, seg_a = _iou_metric(gen, thresholds)
    b, acts_b, seg_b = _iou_metric(gen, thresholds.clone())
    a.merge_state(b)
    ref = np_iou(torch.cat([acts_a, acts_b]).numpy(), torch.cat([seg_a, seg_b]).numpy(), thresholds.numpy(), 4)
    np.testing.assert_allclose(a.compute().numpy(), ref, rtol=1e-6)


def test_merge_state_refuses_what_loading_refuses_with_the_same_message(gen):
    thresholds = torch.tensor([0.2, 0.5, 0.8])
    other, _, _ = _iou_metric(gen, thresholds + 0.1)
    target, _, _ = _iou_metric(gen, thresholds)
    before = target.intersection.clone()
    with pytest.raises(ValueError, match="counted at other `thresholds`"):
        target.merge_state(other)
    wider, _, _ = _iou_metric(gen, thresholds, num_concepts=5)
    with pytest.raises(ValueError, match=r"`num_concepts` \(5 in the loaded state, 4 here\)"):
        target.merge_state(wider)
    with pytest.raises(ValueError, match=r"`num_units` \(2 in the loaded state, 3 here\)"):
        target.merge_state(_iou_metric(gen, thresholds[:2])[0])
    with pytest.raises(TypeError, match="needs a UnitConceptIoU"):
        target.merge_state(UnitQuantiles(3))
    assert torch.equal(target.intersection, before)  # nothing merged


def test_quantiles_refuse_other_histogram_layout(gen):
    source = UnitQuantiles(2)
    source.persistent(True)
    source.update(torch.rand(20, 2, generator=gen))
    state = source.state_dict()
    with pytest.raises(RuntimeError, match="`relative_accuracy`"):
        UnitQuantiles(2, relative_accuracy=0.01).load_state_dict(state)
    with pytest.raises(RuntimeError, match="`min_magnitude`"):
        UnitQuantiles(2, min_magnitude=1e-3).load_state_dict(state)
    with pytest.raises(RuntimeError, match="`max_magnitude`"):
        UnitQuantiles(2, max_magnitude=1e3).load_state_dict(state)
    with pytest.raises(RuntimeError, match=r"`num_units` \(2 in the loaded state, 3 here\)"):
        UnitQuantiles(3).load_state_dict(state)
    # same bucket count, other layout: only the layout buffer tells them apart
    shifted = dict(state, histogram_layout=state["histogram_layout"] + torch.tensor([0, 1, 1]))
    with pytest.raises(RuntimeError, match="`min_magnitude`.*`max_magnitude`"):
        UnitQuantiles(2).load_state_dict(shifted)


def test_quantiles_load_compatible_state_matches_reference(gen):
    values = torch.rand(40, 2, generator=gen) + 0.05
    source = UnitQuantiles(2, quantiles=0.5)
    source.persistent(True)
    source.update(values)
    target = UnitQuantiles(2, quantiles=[0.25, 0.75])  # other levels are fine: not part of the state
    target.load_state_dict(source.state_dict())
    got = target.quantile([0.25, 0.75])
    for u in range(2):
        for i, q in enumerate((0.25, 0.75)):
            ref = np_order_statistic(values[:, u].numpy(), q)
            assert abs(float(got[u, i]) - ref) <= target.spec.achieved_accuracy * ref * (1 + 1e-6)


def test_concept_fraction_refuses_other_num_concepts():
    source = ConceptPixelFraction(3)
    source.persistent(True)
    source.update(torch.tensor([[[0, 1], [2, 2]]]))
    with pytest.raises(RuntimeError, match=r"`num_concepts` \(3 in the loaded state, 4 here\)"):
        ConceptPixelFraction(4).load_state_dict(source.state_dict())
    target = ConceptPixelFraction(3)
    target.load_state_dict(source.state_dict())
    assert target.compute().tolist() == [0.25, 0.25, 0.5]


def test_nested_module_load_refuses_incompatible_metric(gen):
    class Holder(nn.Module):
        def __init__(self, thresholds):
            super().__init__()
            self.iou = UnitConceptIoU(3, 4, thresholds)

    state = Holder(torch.zeros(3, 2)).state_dict()
    with pytest.raises(RuntimeError, match=r"iou|multi-level|`thresholds`"):
        Holder(torch.zeros(3)).load_state_dict(state)
    Holder(torch.zeros(3, 2)).load_state_dict(state)  # the same settings load


def test_synced_states_outside_a_process_group_is_a_no_op(gen):
    metric = UnitConceptIoU(2, 3, torch.zeros(2))
    metric.update(torch.rand(1, 2, 2, 2, generator=gen), torch.zeros(1, 2, 2, dtype=torch.long))
    before = metric.intersection.clone()
    with metric.synced_states():
        assert torch.equal(metric.intersection, before)
    assert torch.equal(metric.intersection, before)
    assert metric.counts().total.item() == 4


def test_load_after_compute_drops_the_cached_result(gen):
    thresholds = torch.tensor([0.2, 0.5, 0.8])
    state, acts, seg = _iou_state(gen, thresholds)
    target = UnitConceptIoU(3, 4, thresholds.clone())
    target.update(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    assert float(target.compute().sum()) == 0.0  # all units off
    target.load_state_dict(state)
    ref = np_iou(acts.numpy(), seg.numpy(), thresholds.numpy(), 4)
    np.testing.assert_allclose(target.compute().numpy(), ref, rtol=1e-6)


def test_count_states_are_held_once_and_reset_to_zeros_of_their_shape(gen):
    metric = UnitQuantiles(16)
    state_bytes = sum(getattr(metric, k).nbytes for k in ("histogram", "overflow", "anchor"))
    # every tensor the metric holds (states, their reset defaults): the states once, plus 0-d zeros
    held = [v for v in vars(metric).values() if isinstance(v, torch.Tensor)]
    held += [v for v in metric._defaults.values() if isinstance(v, torch.Tensor)]
    assert sum(t.nbytes for t in held) <= state_bytes + 64
    metric.update(torch.randn(2, 16, 4, 4, generator=gen))
    assert int(metric.histogram.sum() + metric.overflow.sum()) == 2 * 16 * 4 * 4  # every value counted once
    metric.reset()
    assert metric.histogram.shape == (16, metric.spec.num_buckets) and metric.histogram.dtype == torch.int64
    assert int(metric.histogram.abs().sum()) == 0 and metric.overflow.shape == (16,)
    # after a reset the metric counts again from zero: the same as a fresh one
    acts = torch.randn(3, 16, 4, 4, generator=gen)
    metric.update(acts)
    fresh = UnitQuantiles(16)
    fresh.update(acts)
    assert torch.equal(metric.histogram, fresh.histogram)
    reference = np.array([np_order_statistic(acts[:, u].flatten().numpy(), 0.99) for u in range(16)])
    np.testing.assert_allclose(metric.compute().reshape(16).numpy(), reference, rtol=0.01)
