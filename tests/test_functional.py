"""The functional core against the independent reference in ``tests/reference.py``."""

from __future__ import annotations

import numpy as np
import pytest

try:  # tests/ as a package or as a plain directory on sys.path
    from tests import reference as ref
except ImportError:  # pragma: no cover
    import reference as ref
import torch
import torch.nn.functional as F

from lightning_dissect.functional import (
    bilinear_matrix,
    concept_labels,
    contingency_from_counts,
    iou_from_counts,
    iqr_from_counts,
    mutual_information_from_counts,
    unit_concept_counts,
    unit_concept_iou,
    upsample_bilinear,
    upsample_units_first,
)
from lightning_dissect.metrics import UnitConceptIoU

# --------------------------------------------------------------------------- upsampling


@pytest.mark.parametrize(
    ("in_size", "out_size"),
    [((4, 4), (8, 8)), ((3, 3), (7, 7)), ((5, 6), (3, 4)), ((1, 1), (4, 4)), ((4, 6), (9, 5)),
     ((8, 8), (64, 64)), ((2, 3), (2, 3))],
)
def test_upsample_matches_loop_reference_and_interpolate(gen, in_size, out_size):
    x = torch.randn(2, 3, *in_size, generator=gen)
    expected = ref.upsample(x.numpy(), *out_size)
    ours = upsample_bilinear(x, out_size)
    assert ours.shape == (2, 3, *out_size)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=2e-6)
    torch_ref = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
    np.testing.assert_allclose(torch_ref.numpy(), expected, rtol=0, atol=2e-6)
    # float64 input stays float64 and matches the loop reference to rounding
    ours64 = upsample_bilinear(x.double(), out_size)
    assert ours64.dtype == torch.float64
    np.testing.assert_allclose(ours64.numpy(), expected, rtol=0, atol=1e-12)


def test_bilinear_matrix_rows_are_reference_weights():
    for in_size, out_size in [(4, 8), (3, 7), (7, 3), (1, 5), (8, 64)]:
        matrix = bilinear_matrix(in_size, out_size, dtype=torch.float64).numpy()
        expected = np.zeros((out_size, in_size))
        for dst, (i0, i1, frac) in enumerate(ref.bilinear_axis(in_size, out_size)):
            expected[dst, i0] += 1 - frac
            expected[dst, i1] += frac
        np.testing.assert_allclose(matrix, expected, rtol=0, atol=1e-15)
        np.testing.assert_allclose(matrix.sum(1), 1.0, atol=1e-15)


def test_upsample_units_first_layout(gen):
    x = torch.randn(2, 3, 4, 4, generator=gen)
    flat = upsample_units_first(x, (8, 8))
    up = ref.upsample(x.numpy(), 8, 8)  # (B, U, H, W)
    expected = up.transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(flat.numpy(), expected, atol=2e-6)
    assert torch.equal(upsample_units_first(x, None), x.transpose(0, 1).reshape(3, -1))


# --------------------------------------------------------------------------- counts / IoU


def dyadic_activations(gen, shape):
    """Integer-valued activations: upsampling by 2 or 4 stays exact in float32 (ties are real)."""
    return torch.randint(-3, 5, shape, generator=gen).float()


def as_np(counts):
    return {
        "intersection": counts.intersection.numpy(),
        "unit_area": counts.unit_area.numpy(),
        "concept_area": counts.concept_area.numpy(),
        "total": counts.total.numpy(),
    }


def assert_counts_equal(ours, expected):
    got = as_np(ours)
    for key in ("intersection", "unit_area", "concept_area"):
        assert got[key].dtype == np.int64, key
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert int(got["total"]) == int(expected["total"])


def thresholds_with_ties(units, levels=None):
    # multiples of 1/8 hit upsampled values (k/16 grid) exactly; 0 hits ReLU zeros
    base = torch.tensor([0.0, 0.5, 1.25, -0.75, 2.0, 0.125])[:units]
    if levels is None:
        return base
    steps = torch.tensor([0.0, 0.25, 0.25, 1.0, 0.0])[:levels]  # a repeated level is allowed
    return base[:, None] + steps.cumsum(0)[None, :]


@pytest.mark.parametrize("levels", [None, 1, 4])
@pytest.mark.parametrize("ignore_index", [None, 0, 255])
def test_counts_single_label_match_reference(gen, levels, ignore_index):
    acts = dyadic_activations(gen, (3, 4, 4, 4))
    seg = torch.randint(0, 5, (3, 8, 8), generator=gen)
    if ignore_index == 255:
        seg[:, :2] = 255
    thresholds = thresholds_with_ties(4, levels)
    ours = unit_concept_counts(acts, seg, thresholds, 5, ignore_index=ignore_index)
    expected = ref.counts(acts.numpy(), seg.numpy(), thresholds.numpy(), 5, ignore_index)
    assert_counts_equal(ours, expected)
    if ignore_index == 0:
        assert int(ours.concept_area[0]) == 0 and int(ours.intersection[..., 0].sum()) == 0
    # ignored pixels still count toward every unit's area
    assert int(ours.total) == 3 * 64


@pytest.mark.parametrize("levels", [None, 3])
@pytest.mark.parametrize("ignore_index", [None, 0, 255])
def test_counts_multi_label_match_reference(gen, levels, ignore_index):
    acts = dyadic_activations(gen, (2, 3, 2, 2))
    seg = torch.randint(0, 4, (2, 3, 8, 8), generator=gen)
    seg[:, 2, :3] = seg[:, 0, :3]  # the same concept twice in a pixel counts once
    seg[:, 1, 5:] = seg[:, 0, 5:]
    if ignore_index == 255:
        seg[:, 1, :, :4] = 255
    thresholds = thresholds_with_ties(3, levels)
    ours = unit_concept_counts(acts, seg, thresholds, 4, ignore_index=ignore_index)
    expected = ref.counts(acts.numpy(), seg.numpy(), thresholds.numpy(), 4, ignore_index)
    assert_counts_equal(ours, expected)
    got = iou_from_counts(ours.intersection, ours.unit_area, ours.concept_area)
    want = ref.iou(expected["intersection"], expected["unit_area"], expected["concept_area"])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-15, atol=0)


@pytest.mark.parametrize("levels", [None, 3])
@pytest.mark.parametrize("ignore_index", [None, 0, 255])
@pytest.mark.parametrize("on", ["few", "many"])
def test_counts_wide_label_space_match_reference(gen, levels, ignore_index, on):
    """A few of 300 concepts in the batch, own and paired labels: counted per label present."""
    from lightning_dissect.functional.counts import ConceptCounts, accumulate_unit_concept_counts

    concepts = 300
    acts = dyadic_activations(gen, (3, 4, 4, 4))
    if on == "few":  # most (unit, pixel) pairs off: the path that counts the on pixels alone
        acts = torch.where(acts > 3, acts, torch.zeros_like(acts))
    present = torch.tensor([0, 7, 150, 151, 299])
    seg = present[torch.randint(0, 5, (3, 2, 8, 8), generator=gen)]
    seg[:, 1, :2] = seg[:, 0, :2]  # the same concept twice in a pixel counts once
    other = present[torch.randint(0, 5, (3, 2, 8, 8), generator=gen)]
    if ignore_index == 255:
        seg[:, 1, :, :3] = 255
        other[:, 0, :, 5:] = 255
    thresholds = thresholds_with_ties(4, levels)
    levels_shape = () if levels is None else (levels,)

    def empty():
        return ConceptCounts(
            torch.zeros(4, *levels_shape, concepts, dtype=torch.int64),
            torch.zeros(4, *levels_shape, dtype=torch.int64),
            torch.zeros(concepts, dtype=torch.int64), torch.zeros((), dtype=torch.int64),
        )

    own, paired = empty(), empty()
    accumulate_unit_concept_counts(own, acts, seg, thresholds, concepts, ignore_index=ignore_index,
                                   paired=(paired, other))
    assert_counts_equal(own, ref.counts(acts.numpy(), seg.numpy(), thresholds.numpy(), concepts, ignore_index))
    expected = ref.counts(acts.numpy(), other.numpy(), thresholds.numpy(), concepts, ignore_index)
    np.testing.assert_array_equal(paired.intersection.numpy(), expected["intersection"])
    np.testing.assert_array_equal(paired.concept_area.numpy(), expected["concept_area"])


def test_counts_relu_zeros_threshold_zero(gen):
    acts = torch.randn(2, 3, 4, 4, generator=gen).relu()
    acts[:, 0] = 0.0  # a dead unit: never on at threshold 0
    seg = torch.randint(0, 3, (2, 8, 8), generator=gen)
    thresholds = torch.zeros(3)
    ours = unit_concept_counts(acts, seg, thresholds, 3)
    expected = ref.counts(acts.numpy(), seg.numpy(), thresholds.numpy(), 3)
    assert_counts_equal(ours, expected)
    assert int(ours.unit_area[0]) == 0
    multi = unit_concept_counts(acts, seg, torch.zeros(3, 2), 3)
    assert torch.equal(multi.unit_area[:, 0], ours.unit_area)
    assert torch.equal(multi.intersection[:, 1], ours.intersection)


def test_counts_non_dyadic_sizes(gen):
    """Resolution 3x5 -> 7x9: thresholds placed away from every value (no rounding ambiguity)."""
    acts = torch.randn(2, 3, 3, 5, generator=gen)
    seg = torch.randint(0, 4, (2, 7, 9), generator=gen)
    up = ref.upsample(acts.numpy(), 7, 9)
    thresholds = []
    for u in range(3):
        values = np.unique(up[:, u])
        gaps = np.diff(values)
        picks = np.argsort(gaps)[-3:]  # widest gaps
        thresholds.append(np.sort((values[picks] + values[picks + 1]) / 2))
    thresholds = torch.tensor(np.array(thresholds), dtype=torch.float32)
    ours = unit_concept_counts(acts, seg, thresholds, 4)
    expected = ref.counts(acts.numpy(), seg.numpy(), thresholds.numpy(), 4)
    assert_counts_equal(ours, expected)
    single = unit_concept_counts(acts, seg, thresholds[:, 1], 4)
    expected1 = ref.counts(acts.numpy(), seg.numpy(), thresholds[:, 1].numpy(), 4)
    assert_counts_equal(single, expected1)


def test_counts_same_resolution_and_small_chunks(gen):
    acts = dyadic_activations(gen, (2, 5, 6, 6))
    seg = torch.randint(0, 3, (2, 6, 6), generator=gen)
    thresholds = thresholds_with_ties(5, 3)
    expected = ref.counts(acts.numpy(), seg.numpy(), thresholds.numpy(), 3)
    for chunk in (1, 50, 1 << 20):
        assert_counts_equal(
            unit_concept_counts(acts, seg, thresholds, 3, chunk_elements=chunk), expected
        )
        assert_counts_equal(
            unit_concept_counts(acts, seg, thresholds[:, 0], 3, chunk_elements=chunk),
            ref.counts(acts.numpy(), seg.numpy(), thresholds[:, 0].numpy(), 3),
        )


def test_concept_labels_sink():
    seg = torch.tensor([[[[1, 2, 0]], [[1, 0, 5]]]])  # (1, 2, 1, 3)
    assert concept_labels(seg, 3, ignore_index=None).tolist() == [[1, 2, 0], [3, 0, 5]]
    assert concept_labels(seg, 3, ignore_index=5).tolist() == [[1, 2, 0], [3, 0, 3]]


def test_float64_activations(gen):
    acts = dyadic_activations(gen, (2, 3, 4, 4)).double()
    seg = torch.randint(0, 3, (2, 8, 8), generator=gen)
    thresholds = thresholds_with_ties(3, 2).double()
    expected = ref.counts(acts.numpy(), seg.numpy(), thresholds.numpy(), 3)
    assert_counts_equal(unit_concept_counts(acts, seg, thresholds, 3), expected)


# --------------------------------------------------------------------------- scores


def random_counts(nprng, units=4, levels=None, concepts=5, total=200):
    shape = (units,) if levels is None else (units, levels)
    area = nprng.integers(0, total + 1, size=shape)
    concept_area = nprng.integers(0, total + 1, size=concepts)
    concept_area[0] = 0  # an absent concept
    if levels is None:
        area[0] = 0
    inter = np.zeros((*shape, concepts), dtype=np.int64)
    for index in np.ndindex(*inter.shape):
        a, s = area[index[:-1]], concept_area[index[-1]]
        low, high = max(0, a + s - total), min(a, s)
        inter[index] = nprng.integers(low, high + 1)
    return inter, area, concept_area, total


@pytest.mark.parametrize("levels", [None, 3])
def test_scores_match_reference(nprng, levels):
    inter, area, concept_area, total = random_counts(nprng, levels=levels)
    # a perfectly dependent and a constant table
    inter.flat[0] = 0
    t_i, t_a, t_s = torch.tensor(inter), torch.tensor(area), torch.tensor(concept_area)
    tables = ref.contingency(inter, area, concept_area, total)
    got_table = contingency_from_counts(t_i, t_a, t_s, torch.tensor(total))
    assert got_table.dtype == torch.int64
    np.testing.assert_array_equal(got_table.numpy(), tables)
    assert (tables >= 0).all()
    np.testing.assert_allclose(
        iou_from_counts(t_i, t_a, t_s).numpy(), ref.iou(inter, area, concept_area), rtol=1e-15
    )
    np.testing.assert_allclose(
        mutual_information_from_counts(t_i, t_a, t_s, total).numpy(),
        ref.mutual_information(tables), rtol=1e-9, atol=1e-15,
    )
    np.testing.assert_allclose(
        iqr_from_counts(t_i, t_a, t_s, total).numpy(), ref.iqr(tables), rtol=1e-9, atol=1e-15
    )


def test_scores_special_tables():
    i, a, s = torch.tensor([[5, 0, 5]]), torch.tensor([5]), torch.tensor([5, 0, 10])
    iqr = iqr_from_counts(i, a, s, 10)
    assert iqr[0, 0] == pytest.approx(1.0)  # identical variables
    assert iqr[0, 1] == 0.0  # concept absent: no information
    assert iqr[0, 2] == 0.0  # concept everywhere: independent
    assert iou_from_counts(torch.tensor([[0]]), torch.tensor([0]), torch.tensor([0]))[0, 0] == 0


# --------------------------------------------------------------------------- unit_concept_iou


@pytest.mark.parametrize("levels", [None, 3])
def test_unit_concept_iou_equals_metric_after_one_update(gen, levels):
    acts = dyadic_activations(gen, (3, 4, 4, 4))
    seg = torch.randint(0, 6, (3, 2, 8, 8), generator=gen)
    thresholds = thresholds_with_ties(4, levels)
    func = unit_concept_iou(acts, seg, thresholds, 6, ignore_index=0)
    metric = UnitConceptIoU(4, 6, thresholds, ignore_index=0)
    metric.update(acts, seg)
    assert torch.equal(func.float(), metric.compute())
    expected = ref.counts(acts.numpy(), seg.numpy(), thresholds.numpy(), 6, 0)
    want = ref.iou(expected["intersection"], expected["unit_area"], expected["concept_area"])
    np.testing.assert_allclose(func.numpy(), want, rtol=1e-15)


def test_unit_concept_iou_default_num_concepts(gen):
    acts = dyadic_activations(gen, (2, 2, 4, 4))
    seg = torch.randint(0, 4, (2, 8, 8), generator=gen)
    seg[0, 0, 0] = 3
    assert unit_concept_iou(acts, seg, torch.zeros(2)).shape == (2, 4)
    # an ignore_index outside the label range does not add columns
    seg[:, :2] = 255
    out = unit_concept_iou(acts, seg, torch.zeros(2), ignore_index=255)
    assert out.shape == (2, 4)


# --------------------------------------------------------------------------- errors


def test_functional_errors(gen):
    acts = torch.randn(2, 3, 4, 4, generator=gen)
    seg = torch.randint(0, 3, (2, 8, 8), generator=gen)
    thr = torch.zeros(3)
    with pytest.raises(ValueError, match="`activations` must be 4-D"):
        unit_concept_counts(acts[0], seg, thr, 3)
    with pytest.raises(TypeError, match="`activations` must be a floating"):
        unit_concept_counts(acts.long(), seg, thr, 3)
    bad = acts.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="`activations` contains 1 NaN"):
        unit_concept_counts(bad, seg, thr, 3)
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="`activations` contains 1 NaN or infinite"):
        unit_concept_counts(bad, seg, thr, 3)
    with pytest.raises(ValueError, match="`segmentation` must be"):
        unit_concept_counts(acts, seg[0], thr, 3)
    with pytest.raises(ValueError, match="`segmentation` must be"):
        unit_concept_counts(acts, seg[None, None], thr, 3)
    with pytest.raises(TypeError, match="`segmentation` must hold integer"):
        unit_concept_counts(acts, seg.float(), thr, 3)
    with pytest.raises(TypeError, match="`segmentation` must hold integer"):
        unit_concept_counts(acts, seg > 0, thr, 3)
    with pytest.raises(ValueError, match="`segmentation` has batch size 1"):
        unit_concept_counts(acts, seg[:1], thr, 3)
    with pytest.raises(ValueError, match=r"`segmentation` has labels outside \[0, 2\)"):
        unit_concept_counts(acts, seg, thr, 2)
    with pytest.raises(ValueError, match=r"`segmentation` has labels outside"):
        unit_concept_counts(acts, seg - 1, thr, 3)
    with pytest.raises(ValueError, match="`thresholds` must have shape"):
        unit_concept_counts(acts, seg, torch.zeros(4), 3)
    with pytest.raises(ValueError, match="`thresholds` must have shape"):
        unit_concept_counts(acts, seg, torch.zeros(3, 2, 1), 3)
    with pytest.raises(ValueError, match="`thresholds` of shape"):
        unit_concept_counts(acts, seg, torch.tensor([[0.0, 1.0]] * 2 + [[1.0, 0.0]]), 3)
    with pytest.raises(ValueError, match="`thresholds` contains NaN"):
        unit_concept_counts(acts, seg, torch.tensor([0.0, float("nan"), 0.0]), 3)
    with pytest.raises(ValueError, match="`size`"):
        upsample_bilinear(acts, (1, 2, 3))
    with pytest.raises(ValueError, match="`in_size` must be at least 1"):
        bilinear_matrix(0, 3)


@pytest.mark.parametrize("thresholds", [torch.zeros(3), torch.zeros(3, 2)], ids=["U", "UK"])
@pytest.mark.parametrize("seg_shape", [(0, 8, 8), (0, 2, 8, 8)], ids=["single", "multi"])
def test_counts_of_empty_batch_are_zero_tensors(thresholds, seg_shape):
    acts = torch.zeros(0, 3, 4, 4)
    seg = torch.zeros(seg_shape, dtype=torch.long)
    counts = unit_concept_counts(acts, seg, thresholds, 4, ignore_index=0)
    levels = tuple(thresholds.shape[1:])
    want = {"intersection": (3, *levels, 4), "unit_area": (3, *levels), "concept_area": (4,), "total": ()}
    for name, shape in want.items():
        got = getattr(counts, name)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.int64, name
        assert tuple(got.shape) == shape and not got.any(), name
    iou = unit_concept_iou(acts, seg, thresholds, 4, ignore_index=0)
    assert iou.shape == (3, *levels, 4) and iou.dtype == torch.float64 and not iou.any()
    assert unit_concept_iou(acts, seg, thresholds).shape == (3, *levels, 1)  # C defaults to 1


def test_counts_empty_batch_add_nothing_to_real_ones(gen):
    acts = torch.randint(-2, 3, (2, 3, 4, 4), generator=gen).float()
    seg = torch.randint(0, 4, (2, 4, 4), generator=gen)
    thresholds = torch.tensor([[-1.0, 0.0], [0.0, 0.5], [0.5, 1.0]])
    whole = unit_concept_counts(acts, seg, thresholds, 4)
    empty = unit_concept_counts(acts[:0], seg[:0], thresholds, 4)
    ref_counts = ref.counts(acts.numpy(), seg.numpy(), thresholds.numpy(), 4, None)
    for name in ("intersection", "unit_area", "concept_area", "total"):
        summed = getattr(whole, name) + getattr(empty, name)
        np.testing.assert_array_equal(summed.numpy(), ref_counts[name], err_msg=name)


def test_upsampling_empty_batch():
    assert upsample_bilinear(torch.zeros(0, 3, 4, 4), (8, 8)).shape == (0, 3, 8, 8)
    assert upsample_units_first(torch.zeros(0, 3, 4, 4), (8, 8)).shape == (3, 0)
    assert upsample_units_first(torch.zeros(0, 3, 4, 4), None).shape == (3, 0)
    assert concept_labels(torch.zeros(0, 2, 8, 8, dtype=torch.long), 4, 0).shape == (2, 0)


def test_counts_rejects_bad_temporary_budget(gen):
    acts = torch.randn(1, 2, 4, 4, generator=gen)
    seg = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="`max_temporary_bytes` must be at least 1"):
        unit_concept_counts(acts, seg, torch.zeros(2), 3, max_temporary_bytes=0)
    with pytest.raises(TypeError, match="`max_temporary_bytes` must be an int"):
        unit_concept_counts(acts, seg, torch.zeros(2), 3, max_temporary_bytes=1.5)


def test_reported_iqr_is_an_exact_function_of_the_integer_counts():
    """``iqr_of_table``: plain-Python arithmetic in a fixed order, against a NumPy loop of the formula."""
    import math as _math

    import numpy as np

    from lightning_dissect.functional.scores import iqr_from_counts, iqr_of_table

    def reference(i, a, s, n):
        table = np.array([[i, a - i], [s - i, n - a - s + i]], dtype=np.float64) / n
        rows, cols = table.sum(1), table.sum(0)
        mi = sum(table[r, c] * _math.log(table[r, c] / (rows[r] * cols[c]))
                 for r in range(2) for c in range(2) if table[r, c] > 0)
        h = -sum(table[r, c] * _math.log(table[r, c]) for r in range(2) for c in range(2) if table[r, c] > 0)
        return mi / h if h > 0 else 0.0

    g = torch.Generator().manual_seed(3)
    for _ in range(200):
        n = int(torch.randint(1, 10**9, (), generator=g))
        a, s = (int(torch.randint(0, n + 1, (), generator=g)) for _ in range(2))
        i = int(torch.randint(max(0, a + s - n), min(a, s) + 1, (), generator=g))
        value = iqr_of_table(i, a, s, n)
        assert value == pytest.approx(reference(i, a, s, n), rel=1e-12, abs=1e-15)
        assert value == iqr_of_table(i, a, s, n)  # the same digits every call
        tensor = iqr_from_counts(torch.tensor([[i]]), torch.tensor([a]), torch.tensor([s]), n)
        assert float(tensor) == pytest.approx(value, rel=1e-12, abs=1e-15)
    assert iqr_of_table(0, 0, 0, 0) == 0.0 and iqr_of_table(5, 5, 5, 5) == 0.0  # no entropy: 0
