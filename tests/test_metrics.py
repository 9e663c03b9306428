"""``UnitConceptIoU`` and ``UnitQuantiles`` against the independent reference."""

from __future__ import annotations

import numpy as np
import pytest

try:  # tests/ as a package or as a plain directory on sys.path
    from tests import reference as ref
except ImportError:  # pragma: no cover
    import reference as ref
import torch
import torch.nn.functional as F

from lightning_dissect.functional import LogHistogramSpec
from lightning_dissect.metrics import UnitConceptIoU, UnitQuantiles, all_reduce_sum


def dyadic_activations(gen, shape):
    return torch.randint(-3, 5, shape, generator=gen).float()


THRESHOLDS_1 = torch.tensor([0.0, 0.5, 1.25, -0.75])
THRESHOLDS_K = torch.tensor(
    [[0.0, 0.25, 0.25, 1.0], [0.5, 0.5, 1.0, 3.0], [-1.0, 0.0, 1.25, 2.0], [-0.75, 0.0, 0.5, 0.5]]
)


def batches(gen, sizes, units=4, concepts=5, layers=None, ignore=None):
    out = []
    for b in sizes:
        acts = dyadic_activations(gen, (b, units, 4, 4))
        shape = (b, 8, 8) if layers is None else (b, layers, 8, 8)
        seg = torch.randint(0, concepts, shape, generator=gen)
        if ignore is not None:
            seg[..., :1, :] = ignore
        out.append((acts, seg))
    return out


def reference_over(data, thresholds, concepts, ignore_index):
    acts = np.concatenate([a.numpy() for a, _ in data])
    seg = np.concatenate([s.numpy() for _, s in data])
    return ref.counts(acts, seg, thresholds.numpy(), concepts, ignore_index)


# --------------------------------------------------------------------------- UnitConceptIoU


@pytest.mark.parametrize("thresholds", [THRESHOLDS_1, THRESHOLDS_K], ids=["U", "UK"])
@pytest.mark.parametrize(
    ("layers", "ignore_index"), [(None, None), (None, 0), (None, 255), (2, 0), (3, 255)]
)
def test_iou_metric_accumulates_dataset_level(gen, thresholds, layers, ignore_index):
    data = batches(gen, [1, 3, 2], layers=layers, ignore=ignore_index)
    metric = UnitConceptIoU(4, 5, thresholds, ignore_index=ignore_index)
    for acts, seg in data:
        metric.update(acts, seg)
    expected = reference_over(data, thresholds, 5, ignore_index)
    counts = metric.counts()
    np.testing.assert_array_equal(counts.intersection.numpy(), expected["intersection"])
    np.testing.assert_array_equal(counts.unit_area.numpy(), expected["unit_area"])
    np.testing.assert_array_equal(counts.concept_area.numpy(), expected["concept_area"])
    assert int(counts.total) == int(expected["total"]) == 6 * 64

    iou = metric.compute()
    levels = () if thresholds.ndim == 1 else (thresholds.shape[1],)
    assert iou.shape == (4, *levels, 5) and iou.dtype == torch.float32
    want = ref.iou(expected["intersection"], expected["unit_area"], expected["concept_area"])
    np.testing.assert_allclose(iou.numpy(), want.astype(np.float32), rtol=0, atol=0)

    tables = ref.contingency(
        expected["intersection"], expected["unit_area"], expected["concept_area"],
        expected["total"],
    )
    np.testing.assert_array_equal(metric.contingency().numpy(), tables)
    np.testing.assert_allclose(
        metric.information_quality_ratio().numpy(), ref.iqr(tables), rtol=1e-9, atol=1e-15
    )
    np.testing.assert_allclose(
        metric.mutual_information().numpy(), ref.mutual_information(tables), rtol=1e-9,
        atol=1e-15,
    )

    # one update over everything gives the same states bit for bit
    single = UnitConceptIoU(4, 5, thresholds, ignore_index=ignore_index)
    single.update(torch.cat([a for a, _ in data]), torch.cat([s for _, s in data]))
    for name in ("intersection", "unit_area", "concept_area", "total"):
        assert torch.equal(getattr(single, name), getattr(metric, name)), name
    assert torch.equal(single.compute(), iou)


@pytest.mark.parametrize("thresholds", [THRESHOLDS_1, THRESHOLDS_K], ids=["U", "UK"])
@pytest.mark.parametrize(("layers", "ignore_index"), [(None, None), (2, 0), (3, 255)])
@pytest.mark.parametrize("budget", [None, 4096], ids=["one-step", "many-steps"])
def test_paired_metric_counts_both_segmentations_like_the_reference(gen, thresholds, layers, ignore_index, budget):
    data = batches(gen, [1, 3, 2], layers=layers, ignore=ignore_index)
    other = [seg[torch.randperm(seg.shape[0], generator=gen)].roll(1, -1) for _, seg in data]
    options = {} if budget is None else {"max_temporary_bytes": budget}
    metric = UnitConceptIoU(4, 5, thresholds, ignore_index=ignore_index, paired=True, **options)
    for (acts, seg), paired_seg in zip(data, other):
        metric.update(acts, seg, paired_seg)
    expected = reference_over(data, thresholds, 5, ignore_index)
    paired = reference_over([(a, o) for (a, _), o in zip(data, other)], thresholds, 5, ignore_index)
    for got, want in ((metric.counts(), expected), (metric.paired_counts(), paired)):
        np.testing.assert_array_equal(got.intersection.numpy(), want["intersection"])
        np.testing.assert_array_equal(got.unit_area.numpy(), want["unit_area"])
        np.testing.assert_array_equal(got.concept_area.numpy(), want["concept_area"])
        assert int(got.total) == int(want["total"]) == 6 * 64
    assert not np.array_equal(expected["intersection"], paired["intersection"])  # a real test
    real, chance = metric.counts_and_paired_counts()  # both from one synchronisation
    np.testing.assert_array_equal(real.intersection.numpy(), expected["intersection"])
    np.testing.assert_array_equal(chance.intersection.numpy(), paired["intersection"])
    np.testing.assert_array_equal(chance.concept_area.numpy(), paired["concept_area"])


def test_paired_metric_arguments_and_state_dict(gen):
    acts, seg = batches(gen, [2])[0]
    plain = UnitConceptIoU(4, 5, THRESHOLDS_1)
    with pytest.raises(ValueError, match="paired=True"):
        plain.update(acts, seg, seg)
    with pytest.raises(ValueError, match="paired=True"):
        plain.paired_counts()
    paired = UnitConceptIoU(4, 5, THRESHOLDS_1, paired=True)
    with pytest.raises(ValueError, match="pass `paired_segmentation`"):
        paired.update(acts, seg)
    with pytest.raises(ValueError, match="`paired_segmentation` has size"):
        paired.update(acts, seg, seg[..., :4])
    with pytest.raises(ValueError, match="`paired_segmentation` has labels outside"):
        paired.update(acts, seg, seg + 5)
    with pytest.raises(TypeError, match="`paired` must be a bool"):
        UnitConceptIoU(4, 5, THRESHOLDS_1, paired=1)
    paired.update(acts, seg, seg.flip(0))
    paired.persistent(True)
    plain.persistent(True)
    restored = UnitConceptIoU(4, 5, THRESHOLDS_1, paired=True)
    restored.load_state_dict(paired.state_dict())
    assert torch.equal(restored.paired_counts().intersection, paired.paired_counts().intersection)
    target = UnitConceptIoU(4, 5, THRESHOLDS_1, paired=True)
    target.persistent(True)
    with pytest.raises(RuntimeError, match="paired_intersection"):  # strict: missing paired states
        target.load_state_dict(plain.state_dict())


def test_iou_is_pooled_not_per_image_mean():
    metric = UnitConceptIoU(1, 2, torch.tensor([0.5]))
    # image 1: unit on 1 of 4 pixels, concept 1 on that pixel -> IoU 1
    acts1 = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    seg1 = torch.tensor([[[1, 0], [0, 0]]])
    # image 2: unit on everywhere, concept 1 on one pixel -> IoU 1/4
    acts2 = torch.ones(1, 1, 2, 2)
    seg2 = seg1.clone()
    metric.update(acts1, seg1)
    metric.update(acts2, seg2)
    # pooled: I = 2, A = 5, S = 2 -> 2 / 5 (the per-image mean would be 0.625)
    assert metric.compute()[0, 1].item() == pytest.approx(0.4)


def test_iou_float_threshold_dtypes_are_exact(gen):
    """A float64 threshold is compared with float32 maps without rounding it to nearest."""
    t = 0.1
    x32 = float(torch.tensor(t, dtype=torch.float32))  # 0.10000000149... > 0.1
    acts = torch.full((1, 1, 2, 2), x32)
    seg = torch.zeros(1, 2, 2, dtype=torch.long)
    for thresholds in (
        torch.tensor([t], dtype=torch.float64),
        torch.tensor([[t, 0.2]], dtype=torch.float64),
    ):
        metric = UnitConceptIoU(1, 1, thresholds)
        metric.update(acts, seg)
        area = metric.unit_area.reshape(-1)
        assert int(area[0]) == 4, thresholds  # x32 > 0.1 in exact arithmetic
    # float64 maps are compared in float64 (not rounded to float32 first)
    x64 = torch.full((1, 1, 2, 2), x32, dtype=torch.float64) - 1e-12
    for thresholds in (torch.tensor([x32]), torch.tensor([[x32, 1.0]])):
        metric = UnitConceptIoU(1, 1, thresholds)
        metric.update(x64, seg)
        assert int(metric.unit_area.reshape(-1)[0]) == 0


def test_iou_metric_state_is_fixed_and_resettable(gen):
    metric = UnitConceptIoU(4, 5, THRESHOLDS_K)
    shapes = [tuple(v.shape) for v in metric.metric_state.values()]
    for acts, seg in batches(gen, [2, 2, 2]):
        metric.update(acts, seg)
    assert [tuple(v.shape) for v in metric.metric_state.values()] == shapes
    assert all(v.dtype == torch.int64 for v in metric.metric_state.values())
    assert metric.num_levels == 4
    metric.reset()
    assert int(metric.total) == 0 and int(metric.intersection.sum()) == 0


def test_iou_metric_validate_args_false(gen):
    data = batches(gen, [2])
    checked, unchecked = UnitConceptIoU(4, 5, THRESHOLDS_1), UnitConceptIoU(
        4, 5, THRESHOLDS_1, validate_args=False
    )
    checked.update(*data[0])
    unchecked.update(*data[0])
    assert torch.equal(checked.compute(), unchecked.compute())


def test_iou_metric_errors(gen):
    with pytest.raises(ValueError, match="`num_units`"):
        UnitConceptIoU(0, 5, torch.zeros(0))
    with pytest.raises(ValueError, match="`num_units`"):
        UnitConceptIoU(-1, 5, torch.zeros(1))
    with pytest.raises(ValueError, match="`num_concepts`"):
        UnitConceptIoU(4, 0, THRESHOLDS_1)
    with pytest.raises(TypeError, match="`ignore_index`"):
        UnitConceptIoU(4, 5, THRESHOLDS_1, ignore_index=0.5)
    with pytest.raises(ValueError, match="`thresholds` must have shape"):
        UnitConceptIoU(4, 5, torch.zeros(3))
    with pytest.raises(ValueError, match="`thresholds` must have shape"):
        UnitConceptIoU(4, 5, torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match="`thresholds` of shape .* ascending"):
        UnitConceptIoU(4, 5, THRESHOLDS_K.flip(1))
    with pytest.raises(ValueError, match="`thresholds` contains NaN"):
        UnitConceptIoU(4, 5, torch.tensor([0.0, 1.0, float("nan"), 2.0]))
    with pytest.raises(ValueError, match="`thresholds` contains NaN"):
        UnitConceptIoU(4, 5, torch.tensor([0.0, 1.0, float("inf"), 2.0]))

    metric = UnitConceptIoU(4, 5, THRESHOLDS_1, ignore_index=255)
    acts, seg = batches(gen, [2])[0]
    with pytest.raises(ValueError, match="`activations` has 3 units .* num_units=4"):
        metric.update(acts[:, :3], seg)
    with pytest.raises(ValueError, match="`activations` must be 4-D"):
        metric.update(acts[:, :, 0], seg)
    with pytest.raises(ValueError, match="`segmentation` has batch size 1"):
        metric.update(acts, seg[:1])
    with pytest.raises(ValueError, match=r"`segmentation` has labels outside \[0, 5\) or equal"):
        metric.update(acts, seg + 1)
    with pytest.raises(ValueError, match="`segmentation` has labels outside"):
        metric.update(acts, seg - 1)
    with pytest.raises(TypeError, match="`segmentation` must hold integer"):
        metric.update(acts, seg.float())
    with pytest.raises(TypeError, match="`segmentation` must hold integer"):
        metric.update(acts, seg.bool())
    with pytest.raises(ValueError, match="`segmentation` must be"):
        metric.update(acts, seg[:, 0])
    bad = acts.clone()
    bad[1, 2, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="`activations` contains 1 NaN"):
        metric.update(bad, seg)
    seg[:, :] = 255  # all ignored is valid
    metric.update(acts, seg)


def test_default_dist_sync_fn_is_all_reduce():
    assert UnitConceptIoU(1, 1, torch.zeros(1)).dist_sync_fn is all_reduce_sum
    assert UnitQuantiles(1).dist_sync_fn is all_reduce_sum
    # no process group: the tensor itself, as a one-element list for TorchMetrics' stack + sum
    out = all_reduce_sum(torch.tensor([1, 2]))
    assert len(out) == 1 and torch.equal(out[0], torch.tensor([1, 2]))


# --------------------------------------------------------------------------- UnitQuantiles

LEVELS = [0.0, 0.5, 0.9, 0.99, 0.995, 1.0]


def exact_quantiles(values_u_first: torch.Tensor, levels) -> torch.Tensor:
    """torch.kthvalue at rank max(1, ceil(q N)) per unit (row)."""
    n = values_u_first.shape[1]
    out = torch.empty(values_u_first.shape[0], len(levels), dtype=torch.float64)
    for j, q in enumerate(levels):
        k = ref.quantile_rank(q, n)
        out[:, j] = values_u_first.double().kthvalue(k, dim=1).values
        for u in range(0, values_u_first.shape[0], max(1, values_u_first.shape[0] // 2)):
            assert out[u, j] == ref.order_statistic(values_u_first[u].numpy(), q)
    return out


def assert_within(estimate, exact, accuracy, min_magnitude=1e-6):
    estimate = estimate.double()
    zero = exact == 0
    assert torch.equal(estimate[zero], exact[zero]), "exact zeros must be returned as 0"
    err = (estimate - exact).abs()
    bound = accuracy * exact.abs() + torch.where(exact.abs() < 2 * min_magnitude, 2e-6, 0.0)
    worst = float((err / exact.abs().clamp(min=1e-300))[~zero].max()) if (~zero).any() else 0.0
    assert bool((err <= bound).all()), f"relative error {worst} > {accuracy}"


def heavy_data(kind, gen, shape):
    n = torch.randn(shape, generator=gen)
    if kind == "lognormal":
        return torch.exp(2.0 * n)
    if kind == "cauchy":
        return n / torch.randn(shape, generator=gen)
    if kind == "negative":
        return -torch.exp(1.5 * n) - 0.5
    if kind == "relu":
        return (n - 1.5).relu() * 3.0  # ~93 % exact zeros
    raise ValueError(kind)


@pytest.mark.parametrize("accuracy", [0.005, 0.001])
@pytest.mark.parametrize("kind", ["lognormal", "cauchy", "negative", "relu"])
def test_quantiles_flat_accuracy(gen, kind, accuracy):
    x = heavy_data(kind, gen, (20000, 3))
    metric = UnitQuantiles(3, LEVELS, relative_accuracy=accuracy)
    for chunk in x.split(7000):
        metric.update(chunk)
    got = metric.compute()
    assert got.shape == (3, len(LEVELS)) and got.dtype == torch.float32
    exact = exact_quantiles(x.T, LEVELS)
    assert_within(got, exact, accuracy)
    assert_within(got, exact, metric.spec.achieved_accuracy * (1 + 1e-6))
    if kind == "relu":
        assert (got[:, 1] == 0).all()


@pytest.mark.parametrize("accuracy", [0.005, 0.001])
@pytest.mark.parametrize("kind", ["lognormal", "negative", "relu"])
def test_quantiles_upsampled_accuracy(gen, kind, accuracy):
    x = heavy_data(kind, gen, (24, 3, 4, 4))
    metric = UnitQuantiles(3, LEVELS, relative_accuracy=accuracy)
    metric.update(x[:10], size=(16, 16))
    metric.update(x[10:], size=(16, 16))
    got = metric.compute()
    up = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    exact = exact_quantiles(up.transpose(0, 1).reshape(3, -1), LEVELS)
    # the upsampled values differ from F.interpolate by float32 rounding (~1e-7 relative)
    assert_within(got, exact, accuracy)


def test_quantile_extremes_and_small_sets():
    x = torch.tensor([[3.0], [-2.0], [0.0], [7.5], [1e-3]])
    metric = UnitQuantiles(1, [0.0, 0.2, 0.4, 0.6, 1.0])
    metric.update(x)
    got = metric.compute()[0].double()
    want = torch.tensor([-2.0, -2.0, 0.0, 1e-3, 7.5], dtype=torch.float64)
    assert_within(got[None], want[None], 0.005)


def test_quantile_output_shapes(gen):
    x = torch.rand(50, 4, generator=gen)
    scalar = UnitQuantiles(4, 0.99)
    seq1 = UnitQuantiles(4, [0.99])
    seq2 = UnitQuantiles(4, (0.5, 0.99))
    for m in (scalar, seq1, seq2):
        m.update(x)
    assert scalar.compute().shape == (4,)
    assert seq1.compute().shape == (4, 1)
    assert seq2.compute().shape == (4, 2)
    assert torch.equal(scalar.compute(), seq2.compute()[:, 1])
    assert seq2.quantile(0.5).shape == (4,)
    assert seq2.quantile([0.5]).shape == (4, 1)
    assert torch.equal(seq2.quantile(torch.tensor([0.5, 0.99])), seq2.compute())
    assert UnitQuantiles(4).levels.tolist() == [0.99]  # default level


def test_quantiles_independent_of_batching(gen):
    x = torch.randn(30, 5, 3, 3, generator=gen) * 4
    whole = UnitQuantiles(5, LEVELS)
    whole.update(x, size=(8, 8))
    split = UnitQuantiles(5, LEVELS)
    for part in (x[:1], x[1:13], x[13:29], x[29:]):
        split.update(part, size=(8, 8))
    assert torch.equal(whole.histogram, split.histogram)
    assert torch.equal(whole.compute(), split.compute())
    flat_a, flat_b = UnitQuantiles(5, LEVELS), UnitQuantiles(5, LEVELS)
    values = x.permute(0, 2, 3, 1).reshape(-1, 5)
    flat_a.update(values)
    for part in values.split(37):
        flat_b.update(part)
    assert torch.equal(flat_a.compute(), flat_b.compute())


def test_quantiles_fixed_memory(gen):
    metric = UnitQuantiles(3, [0.5])
    # the anchored window: 2**-40 .. 1 of each unit's largest magnitude, 2**-8 relative buckets
    spec = LogHistogramSpec(0.005, 2.0**-40, 1.0)
    assert metric.histogram.shape == (3, spec.num_buckets)
    shapes = {k: tuple(v.shape) for k, v in metric.metric_state.items()}
    for _ in range(5):
        metric.update(torch.randn(4, 3, 2, 2, generator=gen), size=(8, 8))
        assert {k: tuple(v.shape) for k, v in metric.metric_state.items()} == shapes
    assert int(metric.histogram.sum()) == 5 * 4 * 64 * 3
    assert metric.histogram.dtype == torch.int64


def test_quantiles_overflow_warns():
    metric = UnitQuantiles(1, [0.5, 1.0], max_magnitude=10.0)
    metric.update(torch.tensor([[1.0], [2.0], [1e3]]))
    assert int(metric.overflow[0]) == 1
    with pytest.warns(UserWarning, match="max_magnitude"):
        metric.compute()


def test_quantiles_errors(gen):
    for bad in (0, -2):
        with pytest.raises(ValueError, match="`num_units`"):
            UnitQuantiles(bad)
    for bad in (1.5, "3", True):
        with pytest.raises(TypeError, match="`num_units`"):
            UnitQuantiles(bad)
    for bad in (-0.1, 1.01, [0.5, 2.0], [], float("nan"), [0.5, float("nan")]):
        with pytest.raises(ValueError, match="`quantiles`"):
            UnitQuantiles(2, bad)
    for bad in (0.0, 0.5, -1.0):
        with pytest.raises(ValueError, match="`relative_accuracy`"):
            UnitQuantiles(2, relative_accuracy=bad)
    with pytest.raises(ValueError, match="`min_magnitude`"):
        UnitQuantiles(2, min_magnitude=10.0, max_magnitude=1.0)
    metric = UnitQuantiles(2)
    with pytest.raises(RuntimeError, match="before any update"):
        metric.compute()
    with pytest.raises(ValueError, match="`activations` has 3 units"):
        metric.update(torch.randn(4, 3))
    with pytest.raises(ValueError, match="`activations` must be 4-D"):
        metric.update(torch.randn(4, 2), size=(8, 8))  # (N, U) cannot be upsampled
    with pytest.raises(ValueError, match="`activations` must be"):
        metric.update(torch.randn(4, 2, 3))
    with pytest.raises(TypeError, match="`activations` must be a floating"):
        metric.update(torch.ones(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="`activations` contains 1 NaN"):
        metric.update(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="`activations` contains 1 NaN or infinite"):
        metric.update(torch.tensor([[0.0, float("inf")]]))
    metric.update(torch.randn(4, 2, generator=gen))
    for bad in (1.5, [0.5, -0.1], float("nan")):
        with pytest.raises(ValueError, match="`levels`"):
            metric.quantile(bad)


# --------------------------------------------------------------------------- empty batches


def _empty_like_batch(acts, seg):
    return acts[:0], seg[:0]


@pytest.mark.parametrize("thresholds", [THRESHOLDS_1, THRESHOLDS_K], ids=["U", "UK"])
@pytest.mark.parametrize("layers", [None, 2])
def test_iou_metric_empty_batch_is_no_op(gen, thresholds, layers):
    data = batches(gen, [2, 3], layers=layers, ignore=0)
    empty = _empty_like_batch(*data[0])
    metric = UnitConceptIoU(4, 5, thresholds, ignore_index=0)
    metric.update(*empty)  # before any data
    for acts, seg in data:
        metric.update(acts, seg)
        metric.update(*empty)  # after real data
    metric.update(torch.zeros(0, 4, 3, 3), empty[1])  # other map size, still nothing
    expected = reference_over(data, thresholds, 5, 0)
    for name in ("intersection", "unit_area", "concept_area", "total"):
        np.testing.assert_array_equal(getattr(metric, name).numpy(), expected[name], err_msg=name)
    only_empty = UnitConceptIoU(4, 5, thresholds, ignore_index=0)
    only_empty.update(*empty)
    assert int(only_empty.total) == 0 and not only_empty.intersection.any()


@pytest.mark.parametrize("thresholds", [THRESHOLDS_1, THRESHOLDS_K], ids=["U", "UK"])
@pytest.mark.parametrize("budget", [1, 3000])
def test_iou_metric_small_temporary_budget_is_exact(gen, thresholds, budget):
    data = batches(gen, [3, 1], layers=2, ignore=255)
    metric = UnitConceptIoU(4, 5, thresholds, ignore_index=255, max_temporary_bytes=budget)
    for acts, seg in data:
        metric.update(acts, seg)
    expected = reference_over(data, thresholds, 5, 255)
    for name in ("intersection", "unit_area", "concept_area", "total"):
        np.testing.assert_array_equal(getattr(metric, name).numpy(), expected[name], err_msg=name)


def test_quantiles_empty_batch_is_no_op(gen):
    x = torch.randn(6, 3, 4, 4, generator=gen) * 3
    metric = UnitQuantiles(3, LEVELS)
    metric.update(x[:0], size=(8, 8))  # before any data
    metric.update(x[:4], size=(8, 8))
    metric.update(x[:0], size=(8, 8))  # after real data: the IndexError case
    metric.update(x[:0])
    metric.update(torch.zeros(0, 3))
    metric.update(x[4:], size=(8, 8))
    # independent reference: every unit saw the 6 * 64 upsampled values of the non-empty images
    assert metric.histogram.sum(1).tolist() == [6 * 64] * 3
    maps = torch.from_numpy(ref.upsample(x.numpy(), 8, 8)).float()  # (6, 3, 8, 8), plain loops
    exact = exact_quantiles(maps.transpose(0, 1).reshape(3, -1), LEVELS)
    assert_within(metric.compute(), exact, metric.spec.relative_accuracy)
    flat = UnitQuantiles(3, LEVELS)
    flat.update(torch.zeros(0, 3))
    with pytest.raises(RuntimeError, match="before any update"):
        flat.compute()


def test_concept_fraction_empty_batch_is_no_op(gen):
    from lightning_dissect.metrics import ConceptPixelFraction

    seg = torch.randint(0, 4, (5, 2, 6, 6), generator=gen)
    metric = ConceptPixelFraction(4, ignore_index=0)
    metric.update(seg[:0])
    metric.update(seg[:3])
    metric.update(seg[:0])
    metric.update(seg[:0], mask=torch.ones(0, 6, 6))
    metric.update(seg[3:])
    labels = seg.numpy()
    per_image = np.zeros((5, 4), dtype=np.int64)
    for b in range(5):
        for y in range(6):
            for x in range(6):
                for c in set(labels[b, :, y, x].tolist()) - {0}:
                    per_image[b, c] += 1
    np.testing.assert_array_equal(metric.concept_pixels.numpy(), per_image.sum(0))
    np.testing.assert_array_equal(metric.concept_pixels_sq.numpy(), (per_image**2).sum(0))
    assert int(metric.num_images) == 5 and int(metric.total_pixels) == 5 * 36
