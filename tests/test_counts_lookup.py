"""Multi-level and single-threshold counts on adversarial values against a plain NumPy loop.

The activations have the segmentation's size, so no upsampling happens and every value (ties
with thresholds, ``-0.0``, infinities, neighbouring floats) reaches the counting code unchanged.
Every test runs with the compiled kernels and with the torch operations alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_dissect.functional import unit_concept_counts, upsample_bilinear
from lightning_dissect.functional.counts import _level_table, _order_keys

pytestmark = pytest.mark.usefixtures("statistics_path")


def loop_counts(acts, seg, thresholds, num_concepts, ignore_index=None):
    """Count pixel by pixel, unit by unit, level by level with the strict ``value > t``."""
    acts = np.asarray(acts)
    seg = np.asarray(seg)
    if seg.ndim == 3:
        seg = seg[:, None]
    thr = np.asarray(thresholds)
    single = thr.ndim == 1
    thr = thr[:, None] if single else thr
    batch, units, height, width = acts.shape
    levels = thr.shape[1]
    inter = np.zeros((units, levels, num_concepts), dtype=np.int64)
    area = np.zeros((units, levels), dtype=np.int64)
    concept_area = np.zeros(num_concepts, dtype=np.int64)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                concepts = {int(c) for c in seg[b, :, y, x] if ignore_index is None or c != ignore_index}
                for c in concepts:
                    concept_area[c] += 1
                for u in range(units):
                    value = acts[b, u, y, x]
                    for k in range(levels):
                        if value > thr[u, k]:
                            area[u, k] += 1
                            for c in concepts:
                                inter[u, k, c] += 1
    if single:
        inter, area = inter[:, 0], area[:, 0]
    return inter, area, concept_area, batch * height * width


def assert_matches_loop(acts, seg, thresholds, num_concepts, ignore_index=None, **kwargs):
    ours = unit_concept_counts(
        acts, seg, thresholds, num_concepts, ignore_index=ignore_index, validate_args=False, **kwargs
    )
    inter, area, concept_area, total = loop_counts(
        acts.numpy(), seg.numpy(), thresholds.numpy(), num_concepts, ignore_index
    )
    for got in ours[:3]:
        assert got.dtype == torch.int64
    np.testing.assert_array_equal(ours.intersection.numpy(), inter)
    np.testing.assert_array_equal(ours.unit_area.numpy(), area)
    np.testing.assert_array_equal(ours.concept_area.numpy(), concept_area)
    assert int(ours.total) == total


def neighbours(values: torch.Tensor) -> torch.Tensor:
    """The values and the float32 numbers just below and above each."""
    up = torch.nextafter(values, torch.full_like(values, float("inf")))
    down = torch.nextafter(values, torch.full_like(values, float("-inf")))
    return torch.cat([values, up, down])


SPECIAL = torch.tensor(
    [0.0, -0.0, 1.0, -1.0, 0.5, 3.0, -2.5, 1e-30, -1e-30, 1e-45, -1e-45, 1e-6, 7.25, 3e38, -3e38]
)


def adversarial_case(gen, units, levels, size=6, batch=2):
    """Thresholds with duplicates and ties; values drawn from the thresholds and their neighbours."""
    pool = neighbours(SPECIAL)
    thresholds = pool[torch.randint(0, len(pool), (units, levels), generator=gen)]
    thresholds[:, : levels // 4] = 0.0  # repeated zero levels (sparse ReLU units)
    thresholds = thresholds.sort(1).values
    candidates = torch.cat(
        [neighbours(thresholds.reshape(-1)), SPECIAL, torch.tensor([float("inf"), float("-inf")])]
    )
    acts = candidates[torch.randint(0, len(candidates), (batch, units, size, size), generator=gen)]
    return acts, thresholds


@pytest.mark.parametrize("levels", [1, 2, 16, 64])
@pytest.mark.parametrize("multilabel", [False, True])
def test_ties_zeros_infinities_match_loop(gen, levels, multilabel):
    acts, thresholds = adversarial_case(gen, units=5, levels=levels)
    shape = (2, 2, 6, 6) if multilabel else (2, 6, 6)
    seg = torch.randint(0, 4, shape, generator=gen)
    assert_matches_loop(acts, seg, thresholds, 4)
    assert_matches_loop(acts, seg, thresholds, 4, ignore_index=0, chunk_elements=40)
    assert_matches_loop(acts, seg, thresholds[:, levels // 2].contiguous(), 4)


def test_thresholds_are_values_across_many_buckets(gen):
    """Log-uniform magnitudes over ~70 octaves, both signs; thresholds are some of the values."""
    units, levels = 4, 32
    magnitude = torch.exp(torch.empty(2, units, 8, 8).uniform_(-25, 25, generator=gen))
    sign = torch.where(torch.rand(2, units, 8, 8, generator=gen) < 0.3, -1.0, 1.0)
    acts = (magnitude * sign).float()
    flat = acts.transpose(0, 1).reshape(units, -1)
    pick = torch.randint(0, flat.shape[1], (units, levels), generator=gen)
    thresholds = flat.gather(1, pick).sort(1).values
    seg = torch.randint(0, 6, (2, 8, 8), generator=gen)
    assert_matches_loop(acts, seg, thresholds, 6)
    assert_matches_loop(acts, seg, thresholds[:, 7].contiguous(), 6)


def test_many_distinct_thresholds_in_one_bucket(gen):
    """Consecutive floats as thresholds share table buckets: the exact per-value resolution runs."""
    units, levels = 3, 24
    start = torch.tensor([0.1, 1.0, -2.0])
    thresholds = torch.empty(units, levels)
    thresholds[:, 0] = start
    for k in range(1, levels):
        thresholds[:, k] = torch.nextafter(thresholds[:, k - 1], torch.full((units,), float("inf")))
    thresholds[:, -1] = start * 0 + 1e6  # a far level widens the buckets
    thresholds = thresholds.sort(1).values
    keys = _order_keys(thresholds, torch.empty(units, levels, dtype=torch.int32)).long()
    assert bool(_level_table(keys, levels + 1, 3, torch.int32).ambiguous.all())
    values = neighbours(thresholds.reshape(-1))
    acts = values[torch.randint(0, len(values), (2, units, 5, 5), generator=gen)]
    seg = torch.randint(0, 3, (2, 5, 5), generator=gen)
    assert_matches_loop(acts, seg, thresholds, 3)


def test_full_float_range_thresholds(gen):
    """Threshold keys spanning more than int32 (-3e38 .. 3e38) take the wide-integer path."""
    thresholds = torch.tensor([[-3e38, -1.0, 0.0, 1.0, 3e38]] * 3)
    pool = torch.cat([neighbours(thresholds[0]), torch.tensor([float("inf"), float("-inf"), -0.0])])
    acts = pool[torch.randint(0, len(pool), (2, 3, 4, 4), generator=gen)]
    seg = torch.randint(0, 2, (2, 4, 4), generator=gen)
    assert_matches_loop(acts, seg, thresholds, 2)


def test_random_units_levels_and_chunks(gen):
    for trial in range(6):
        units = int(torch.randint(1, 9, (), generator=gen))
        levels = int(torch.randint(1, 40, (), generator=gen))
        acts, thresholds = adversarial_case(gen, units, levels, size=4)
        seg = torch.randint(0, 5, (2, 3, 4, 4), generator=gen)
        chunk = int(torch.randint(1, 100, (), generator=gen))
        assert_matches_loop(acts, seg, thresholds, 5, ignore_index=trial % 2, chunk_elements=chunk)


def test_upsampled_relu_maps_and_float64_match_loop(gen):
    """Realistic sparse ReLU maps upsampled 4x, thresholds at quantiles that are map values."""
    acts = torch.randn(2, 6, 4, 4, generator=gen).relu()
    up = upsample_bilinear(acts, (16, 16))
    flat = up.transpose(0, 1).reshape(6, -1)
    ranks = torch.linspace(0, flat.shape[1] - 1, 17).long()
    thresholds = flat.sort(1).values[:, ranks].contiguous()  # ties with map values, repeated zeros
    seg = torch.randint(0, 5, (2, 16, 16), generator=gen)
    assert_matches_loop(up, seg, thresholds, 5)
    inside = unit_concept_counts(acts, seg, thresholds, 5)  # upsampled inside the call
    given = unit_concept_counts(up, seg, thresholds, 5)
    for a, b in zip(inside, given):
        assert torch.equal(a, b)
    assert_matches_loop(up.double(), seg, thresholds.double(), 5)  # the binary-search path


@pytest.mark.parametrize("zero_levels", [[-0.0], [-0.0, -0.0, 0.0], [0.0, -0.0], [-1e-45, -0.0, 0.0, 1e-45]])
def test_signed_zero_thresholds(gen, zero_levels):
    """``0.0 > -0.0`` and ``-0.0 > 0.0`` are both false, whatever the bit patterns."""
    thresholds = torch.tensor([zero_levels + [2.0]] * 3)
    pool = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 2.0, -2.0, 5.0])
    acts = pool[torch.randint(0, len(pool), (2, 3, 5, 5), generator=gen)]
    seg = torch.randint(0, 3, (2, 5, 5), generator=gen)
    assert_matches_loop(acts, seg, thresholds, 3)
    assert_matches_loop(acts, seg, thresholds[:, 0].contiguous(), 3)


@pytest.mark.parametrize("levels", [0, 1, 7])
@pytest.mark.parametrize("budget", [1, 4096, 50_000])
def test_temporary_budget_steps_match_loop(gen, levels, budget):
    """Counting a few images and units per step (any budget, down to 1 byte) stays exact."""
    acts, thresholds = adversarial_case(gen, 5, max(levels, 1), size=4, batch=3)
    if levels == 0:
        thresholds = thresholds[:, 0].contiguous()
    seg = torch.randint(0, 6, (3, 2, 4, 4), generator=gen)
    assert_matches_loop(acts, seg, thresholds, 6, ignore_index=1, max_temporary_bytes=budget)


@pytest.mark.parametrize("statistics_path", ["torch"], indirect=True)
@pytest.mark.parametrize("multilabel", [False, True])
def test_single_threshold_on_pixel_path_and_full_path_match_loop(gen, multilabel, monkeypatch):
    """Top-quantile thresholds (few pixels on) take the on-pixel path; low ones count every pixel.

    (Without the row bounds of the upsampling, which would skip most rows of the top-quantile units.)
    """
    from lightning_dissect.functional import counts as module

    plain = module._counts_single_level
    monkeypatch.setattr(module, "_on_pixel_plan", lambda *a: None)  # not the on-pixel path of few candidate rows
    monkeypatch.setattr(module, "_counts_single_level_rows", lambda values, _rows, _magnitude, *a: plain(values, *a))
    calls = []
    original = module._count_on_pixels
    monkeypatch.setattr(module, "_count_on_pixels", lambda *a: calls.append(1) or original(*a))
    units = 6
    acts = torch.randn(3, units, 8, 8, generator=gen)
    flat = acts.transpose(0, 1).reshape(units, -1)
    high, low = torch.quantile(flat, 0.97, dim=1), torch.quantile(flat, 0.2, dim=1)
    thresholds = torch.where(torch.arange(units) % 2 == 0, high, low)
    shape = (3, 2, 8, 8) if multilabel else (3, 8, 8)
    seg = torch.randint(0, 5, shape, generator=gen)
    assert_matches_loop(acts, seg, thresholds, 5, ignore_index=0, chunk_elements=64)  # a unit per chunk
    assert len(calls) == 3  # the three top-quantile units
    assert_matches_loop(acts, seg, high, 5, ignore_index=0)  # every unit sparse, one chunk
    assert len(calls) == 4
    assert_matches_loop(acts, seg, low, 5, ignore_index=0)  # dense: the full path
    assert len(calls) == 4


def row_path_case(gen, shape, size, kind):
    """Maps of one kind and top-quantile thresholds that are upsampled values (ties with the maps)."""
    batch, units, h, w = shape
    acts = torch.randn(shape, generator=gen)
    if kind == "relu":
        acts = acts.relu()
    elif kind == "negative":
        acts = -acts.abs() - 3.0
    elif kind == "tiny":
        acts = acts * 1e-39  # subnormal floats
    elif kind == "special":
        flat = acts.view(-1)
        flat[torch.randint(0, flat.numel(), (4,), generator=gen)] = float("nan")
        flat[torch.randint(0, flat.numel(), (3,), generator=gen)] = float("inf")
        flat[torch.randint(0, flat.numel(), (3,), generator=gen)] = float("-inf")
    up = upsample_bilinear(acts, size)
    flat = up.transpose(0, 1).reshape(units, -1)
    finite = torch.where(flat.isfinite(), flat, torch.zeros(()))
    ranks = torch.randint(int(0.9 * flat.shape[1]), flat.shape[1], (units,), generator=gen)
    thresholds = finite.sort(1).values[torch.arange(units), ranks].contiguous()
    return acts, up, thresholds


@pytest.mark.parametrize("kind", ["randn", "relu", "negative", "tiny", "special"])
@pytest.mark.parametrize(
    ("shape", "size"),
    [((3, 5, 4, 4), (16, 16)), ((2, 4, 3, 5), (7, 13)), ((2, 3, 6, 6), (6, 17)), ((2, 3, 5, 4), (11, 4)),
     ((2, 3, 8, 8), (8, 8))],
)
@pytest.mark.parametrize("on_pixels", [True, False])
def test_single_threshold_row_bounds_match_loop_on_the_upsampled_maps(gen, kind, shape, size, on_pixels, monkeypatch):
    """Rows whose bound is below the threshold are skipped: the counts equal a loop over every value.

    The thresholds are upsampled values themselves (ties), near the top of each unit. Counted from
    the on pixels of the candidate rows alone (whatever their number), or from the whole upsampled maps.
    """
    from lightning_dissect.functional import counts as module

    if on_pixels:
        monkeypatch.setattr(module, "_SPARSE_ROW_FRACTION", 1)
        monkeypatch.setattr(module, "NATIVE_LABEL_WIDTH", -1)
    else:
        monkeypatch.setattr(module, "_on_pixel_plan", lambda *a: None)

    acts, up, thresholds = row_path_case(gen, shape, size, kind)
    seg = torch.randint(0, 5, (shape[0], 2, *size), generator=gen)
    ours = unit_concept_counts(acts, seg, thresholds, 5, ignore_index=0, validate_args=False)
    inter, area, concept_area, total = loop_counts(up.numpy(), seg.numpy(), thresholds.numpy(), 5, 0)
    np.testing.assert_array_equal(ours.intersection.numpy(), inter)
    np.testing.assert_array_equal(ours.unit_area.numpy(), area)
    np.testing.assert_array_equal(ours.concept_area.numpy(), concept_area)
    assert int(ours.total) == total
    # the bounds hold: no upsampled value of a row lies above its row's bound
    values, rows, magnitude = module._upsampled_with_rows(acts, size)
    bounds = module._row_upper_bounds(rows, magnitude)
    per_row = values.view(shape[1], bounds.shape[1], -1)
    assert not bool((per_row > bounds.unsqueeze(2)).any())


@pytest.mark.parametrize("statistics_path", ["torch"], indirect=True)
def test_single_threshold_row_path_dense_and_sparse_branches_match_loop(gen, monkeypatch):
    """Few candidate rows with many or few on values: both counting branches of the row path."""
    from lightning_dissect.functional import counts as module

    full = []
    plain = module._counts_single_level
    monkeypatch.setattr(module, "_counts_single_level", lambda *a: full.append(1) or plain(*a))
    acts = torch.zeros(2, 4, 4, 4)
    acts[:, :, 1, 1] = torch.rand(2, 4, generator=gen) + 1.0  # one bright spot per map
    up = upsample_bilinear(acts, (16, 16))
    seg = torch.randint(0, 4, (2, 16, 16), generator=gen)
    for thresholds in (torch.full((4,), 0.01), torch.full((4,), 0.9)):  # most / few values of a candidate row on
        ours = unit_concept_counts(acts, seg, thresholds, 4, validate_args=False)
        inter, area, _, _ = loop_counts(up.numpy(), seg.numpy(), thresholds.numpy(), 4)
        np.testing.assert_array_equal(ours.intersection.numpy(), inter)
        np.testing.assert_array_equal(ours.unit_area.numpy(), area)
    assert not full  # the row path counted both


@pytest.mark.parametrize("zero_levels", [[0.0], [-0.0, 0.0], [-0.0, -0.0, 1e-45]])
@pytest.mark.parametrize("size", [(5, 5), (12, 9)])
@pytest.mark.parametrize("infinite", [False, True])
def test_non_negative_maps_with_signed_zeros_match_loop(gen, zero_levels, size, infinite):
    """Non-negative maps (``-0.0`` included) are looked up by their float bits: same counts."""
    pool = torch.tensor([0.0, -0.0, 1e-45, 2e-45, 0.5, 1.0, 2.0, 3e38])
    acts = pool[torch.randint(0, len(pool), (2, 3, 5, 5), generator=gen)]
    if infinite:
        acts.view(-1)[:3] = float("inf")
    up = upsample_bilinear(acts, size)
    thresholds = torch.tensor([zero_levels + [0.5, 1.0, 2.0]] * 3)
    seg = torch.randint(0, 4, (2, *size), generator=gen)
    ours = unit_concept_counts(acts, seg, thresholds, 4, validate_args=False)
    inter, area, _, _ = loop_counts(up.numpy(), seg.numpy(), thresholds.numpy(), 4)
    np.testing.assert_array_equal(ours.intersection.numpy(), inter)
    np.testing.assert_array_equal(ours.unit_area.numpy(), area)


def test_huge_maps_upsampled_match_loop(gen):
    """Finite maps near the float32 maximum, upsampled: still exact."""
    acts = torch.full((2, 2, 3, 3), 3.4e38)
    acts[:, 1] = -3.4e38
    acts[0, 0, 1, 1] = 1.0
    up = upsample_bilinear(acts, (8, 8))
    thresholds = torch.tensor([[0.0, 1.0, 3e38], [-3.4e38, 0.0, 1.0]])
    seg = torch.randint(0, 3, (2, 8, 8), generator=gen)
    for t in (thresholds, thresholds[:, 1].contiguous()):
        ours = unit_concept_counts(acts, seg, t, 3, validate_args=False)
        inter, area, _, _ = loop_counts(up.numpy(), seg.numpy(), t.numpy(), 3)
        np.testing.assert_array_equal(ours.intersection.numpy(), inter)
        np.testing.assert_array_equal(ours.unit_area.numpy(), area)


@pytest.mark.parametrize("statistics_path", ["torch"], indirect=True)  # the tuples of the torch path
@pytest.mark.parametrize("levels", [0, 5])
def test_few_label_tuples_of_a_wide_label_space_match_loop(gen, levels, monkeypatch):
    """Own and paired labels of a few of 300 concepts, mostly the same: counted once per pixel by
    their tuple of renumbered values."""
    from lightning_dissect.functional import counts as module
    from lightning_dissect.functional.counts import ConceptCounts, accumulate_unit_concept_counts

    seen = []
    original = module._label_tuples
    monkeypatch.setattr(module, "_label_tuples", lambda *a: seen.append(original(*a)) or seen[-1])
    acts, thresholds = adversarial_case(gen, 4, max(levels, 1), size=6, batch=3)
    if levels == 0:
        thresholds = thresholds[:, 0].contiguous()
    present = torch.tensor([0, 7, 150, 299])
    seg = present[torch.randint(0, 4, (3, 6, 6), generator=gen)]
    other = seg.clone()  # the same labels but a corner: few (own, paired) tuples
    other[:, 0, 0] = 150
    shape = (4, levels, 300) if levels else (4, 300)

    def empty():
        return ConceptCounts(torch.zeros(shape, dtype=torch.int64), torch.zeros(shape[:-1], dtype=torch.int64),
                             torch.zeros(300, dtype=torch.int64), torch.zeros((), dtype=torch.int64))

    own, paired = empty(), empty()
    accumulate_unit_concept_counts(own, acts, seg, thresholds, 300, ignore_index=7, paired=(paired, other))
    assert any(found is not None for found in seen)  # the tuple path ran
    for counts, labels in ((own, seg), (paired, other)):
        inter, area, concept_area, _ = loop_counts(acts.numpy(), labels.numpy(), thresholds.numpy(), 300, 7)
        np.testing.assert_array_equal(counts.intersection.numpy(), inter)
        np.testing.assert_array_equal(counts.concept_area.numpy(), concept_area)
    np.testing.assert_array_equal(own.unit_area.numpy(), area)
