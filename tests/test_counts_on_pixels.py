"""Single-threshold counts from the on pixels of the few upsampled rows that can hold one.

Every state of a paired ``UnitConceptIoU`` with sample groups and per-category unit areas is
compared with a plain NumPy loop over the pixels of the upsampled maps (the values of
``upsample_bilinear``: thresholds that are upsampled values themselves tie with them exactly).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_dissect._utils.parallel import statistics_threads
from lightning_dissect.functional import counts as module
from lightning_dissect.functional import upsample_bilinear
from lightning_dissect.metrics import UnitConceptIoU

pytestmark = pytest.mark.usefixtures("statistics_path")  # the whole maps counted by the kernels, then by torch


@pytest.fixture(autouse=True)
def on_pixel_path_at_every_width(monkeypatch):
    """The on-pixel path even where the compiled kernel would count every pixel (narrow label spaces)."""
    monkeypatch.setattr(module, "NATIVE_LABEL_WIDTH", -1)


NAMES = (
    "intersection", "unit_area", "concept_area", "total", "paired_intersection", "paired_concept_area",
    "category_unit_area", "paired_category_unit_area", "group_intersection", "group_concept_area",
    "group_paired_intersection", "group_paired_concept_area", "group_category_unit_area",
    "group_paired_category_unit_area",
)


def reference_states(up, seg, other, thresholds, concepts, ignore, sample_index, groups, category):
    """Every state, pixel by pixel: up (B, U, H, W) values, seg / other (B, L, H, W) labels."""
    batch, units, height, width = up.shape
    categories = int(category.max()) + 1
    on = up > thresholds[None, :, None, None]
    out = {
        "intersection": np.zeros((units, concepts), np.int64),
        "unit_area": np.zeros(units, np.int64),
        "concept_area": np.zeros(concepts, np.int64),
        "total": np.int64(batch * height * width),
        "group_intersection": np.zeros((units, groups, concepts), np.int64),
        "group_concept_area": np.zeros((groups, concepts), np.int64),
    }
    for prefix in ("paired_", "group_paired_"):
        out[prefix + "intersection"] = np.zeros_like(out[prefix.replace("paired_", "") + "intersection"])
        out[prefix + "concept_area"] = np.zeros_like(out[prefix.replace("paired_", "") + "concept_area"])
    for name in ("category_unit_area", "paired_category_unit_area"):
        out[name] = np.zeros((units, categories), np.int64)
        out["group_" + name] = np.zeros((units, groups, categories), np.int64)
    for b in range(batch):
        g = int(sample_index[b]) % groups
        for u in range(units):
            out["unit_area"][u] += int(on[b, u].sum())
        for labels, prefix in ((seg, ""), (other, "paired_")):
            touched = np.zeros((units, categories), bool)
            for y in range(height):
                for x in range(width):
                    present = {int(c) for c in labels[b, :, y, x] if int(c) != ignore}
                    for c in present:
                        out[prefix + "concept_area"][c] += 1
                        out["group_" + prefix + "concept_area"][g, c] += 1
                        for u in np.flatnonzero(on[b, :, y, x]):
                            out[prefix + "intersection"][u, c] += 1
                            out["group_" + prefix + "intersection"][u, g, c] += 1
                            if category[c] >= 0:
                                touched[u, category[c]] = True
            # NetDissect-Lite: the unit's area in the image counts toward the categories it overlaps
            out[prefix + "category_unit_area"] += touched * on[b].sum((1, 2))[:, None]
            out["group_" + prefix + "category_unit_area"][:, g] += touched * on[b].sum((1, 2))[:, None]
    return out


def case(gen, kind, shape, size, layers, concepts):
    """Maps of one kind, thresholds that are upsampled values near each unit's top, labels with repeats."""
    batch, units = shape[:2]
    acts = torch.randn(shape, generator=gen)
    if kind == "relu":
        acts = acts.relu()
    elif kind == "special":
        flat = acts.view(-1)
        flat[torch.randint(0, flat.numel(), (3,), generator=gen)] = float("nan")
        flat[torch.randint(0, flat.numel(), (2,), generator=gen)] = float("inf")
    up = upsample_bilinear(acts, size)
    flat = up.transpose(0, 1).reshape(units, -1)
    finite = torch.where(flat.isfinite(), flat, torch.zeros(()))
    ranks = torch.randint(int(0.85 * flat.shape[1]), flat.shape[1], (units,), generator=gen)
    thresholds = finite.sort(1).values[torch.arange(units), ranks].contiguous()
    seg = torch.randint(0, concepts, (batch, layers, *size), generator=gen)
    other = torch.randint(0, concepts, (batch, layers, *size), generator=gen)
    return acts, up, thresholds, seg, other


def count_with_metric(acts, seg, other, thresholds, concepts, category, sample_index, groups, **options):
    metric = UnitConceptIoU(
        acts.shape[1], concepts, thresholds, ignore_index=0, paired=True, concept_categories=category,
        sample_groups=groups, validate_args=False, **options,
    )
    for part in (slice(0, 3), slice(3, None)):  # two batches
        metric.update(acts[part], seg[part], other[part], sample_index=sample_index[part])
    return {name: getattr(metric, name) for name in NAMES}


@pytest.mark.parametrize("kind", ["randn", "relu", "special"])
@pytest.mark.parametrize(
    ("shape", "size"),
    [((6, 4, 4, 4), (12, 12)), ((5, 3, 3, 5), (7, 13)), ((5, 3, 5, 4), (5, 9)), ((5, 3, 6, 6), (6, 6))],
)
@pytest.mark.parametrize("budget", [1, 1 << 26])
def test_on_pixel_counts_of_every_state_match_loop(gen, monkeypatch, kind, shape, size, budget):
    """Own, paired, per-group and per-category counts equal the loop; a 1-byte budget counts a row at a time."""
    monkeypatch.setattr(module, "_SPARSE_ROW_FRACTION", 1)  # the on-pixel path whatever the candidate rows
    ran = []
    original = module._on_pixels
    monkeypatch.setattr(module, "_on_pixels", lambda *a: ran.append(1) or original(*a))
    concepts, groups = 7, 3
    acts, up, thresholds, seg, other = case(gen, kind, shape, size, 2, concepts)
    category = torch.tensor([-1, 0, 0, 1, 2, -1, 1])
    sample_index = torch.arange(shape[0]) + 4
    with statistics_threads(2):
        ours = count_with_metric(
            acts, seg, other, thresholds, concepts, category, sample_index, groups, max_temporary_bytes=budget
        )
    assert ran
    expected = reference_states(
        up.numpy(), seg.numpy(), other.numpy(), thresholds.numpy(), concepts, 0, sample_index.numpy(), groups,
        category.numpy(),
    )
    assert expected["group_paired_intersection"].any() and expected["category_unit_area"].any()
    for name in NAMES:
        np.testing.assert_array_equal(ours[name].numpy(), expected[name], err_msg=name)


def test_few_candidate_rows_take_the_on_pixel_path_and_many_the_whole_maps(gen, monkeypatch):
    """Top-quantile thresholds: the on-pixel path; low thresholds: every value (same counts as the loop)."""
    plans = []
    original = module._on_pixel_plan
    monkeypatch.setattr(module, "_on_pixel_plan", lambda *a: plans.append(original(*a)) or plans[-1])
    concepts, groups = 5, 2
    acts = torch.zeros(6, 3, 16, 16)
    acts[:, :, 2, 5] = torch.rand(6, 3, generator=gen) + 1.0  # one bright spot per map
    acts += 1e-3 * torch.rand(acts.shape, generator=gen)
    up = upsample_bilinear(acts, (32, 32))
    seg = torch.randint(0, concepts, (6, 1, 32, 32), generator=gen)
    other = torch.randint(0, concepts, (6, 1, 32, 32), generator=gen)
    category = torch.tensor([-1, 0, 1, 1, 0])
    index = torch.arange(6)
    for level, sparse in ((1.2, True), (1e-4, False)):
        thresholds = torch.full((3,), level)
        ours = count_with_metric(acts, seg, other, thresholds, concepts, category, index, groups)
        assert (plans[-1] is not None) == sparse
        expected = reference_states(
            up.numpy(), seg.numpy(), other.numpy(), thresholds.numpy(), concepts, 0, index.numpy(), groups,
            category.numpy(),
        )
        for name in NAMES:
            np.testing.assert_array_equal(ours[name].numpy(), expected[name], err_msg=name)


def test_bounds_of_the_candidate_rows_hold(gen):
    """No upsampled value outside the candidate rows is above its unit's threshold, for any threshold."""
    for shape, size in (((3, 4, 5, 7), (13, 9)), ((2, 3, 14, 14), (112, 112)), ((2, 3, 4, 4), (4, 4))):
        acts = torch.randn(shape, generator=gen) * 5
        up = upsample_bilinear(acts, size).transpose(0, 1).reshape(shape[1], -1, size[1])
        for quantile in (0.5, 0.9, 0.999):
            thresholds = torch.quantile(up.reshape(shape[1], -1), quantile, dim=1)
            plan = module._on_pixel_plan(acts, thresholds, size)
            if plan is None:
                continue
            outside = torch.ones(up.shape[:2], dtype=torch.bool).view(-1)
            outside[plan.rows] = False
            above = (up > thresholds.view(-1, 1, 1)).any(2).view(-1)
            assert not bool((above & outside).any())


def test_candidate_levels_split_by_group_and_category_match_loop(gen):
    """``(U, K)`` thresholds (whole maps, every level): each level's states equal the loop at that level."""
    concepts, groups = 6, 2
    acts, up, low, seg, other = case(gen, "randn", (5, 3, 4, 4), (8, 8), 2, concepts)
    thresholds = torch.stack([low - 1.0, low], 1)
    category = torch.tensor([-1, 0, 1, 1, 0, 2])
    index = torch.arange(5) * 3
    ours = count_with_metric(acts, seg, other, thresholds, concepts, category, index, groups)
    for k in range(2):
        expected = reference_states(
            up.numpy(), seg.numpy(), other.numpy(), thresholds[:, k].numpy(), concepts, 0, index.numpy(), groups,
            category.numpy(),
        )
        for name in NAMES:
            got = ours[name] if "concept_area" in name or name == "total" else ours[name][:, k]
            np.testing.assert_array_equal(got.numpy(), expected[name], err_msg=f"{name}, level {k}")


def test_after_many_candidate_rows_the_metric_counts_whole_maps_for_a_while(gen, monkeypatch):
    """A batch with many candidate rows sends the next 7 to the whole maps; the counts stay those of the loop."""
    from lightning_dissect.metrics import unit_concept_iou

    looks = []
    original = module._on_pixel_plan
    monkeypatch.setattr(module, "_on_pixel_plan", lambda *a: looks.append(original(*a) is not None) or original(*a))
    streak = unit_concept_iou._WHOLE_MAPS_STREAK
    batches = streak + 3
    acts = torch.zeros(batches, 3, 16, 16)
    acts[:, :, 2, 5] = 2.0  # one bright spot per map: few candidate rows
    acts[0] = 3.0  # the first batch is bright everywhere: many
    acts += 1e-3 * torch.rand(acts.shape, generator=gen)
    up = upsample_bilinear(acts, (32, 32))
    seg = torch.randint(0, 5, (batches, 1, 32, 32), generator=gen)
    other = torch.randint(0, 5, (batches, 1, 32, 32), generator=gen)
    category = torch.tensor([-1, 0, 1, 1, 0])
    thresholds = torch.full((3,), 1.5)
    metric = UnitConceptIoU(3, 5, thresholds, ignore_index=0, paired=True, concept_categories=category,
                            sample_groups=2)
    for b in range(batches):
        metric.update(acts[b : b + 1], seg[b : b + 1], other[b : b + 1], sample_index=torch.tensor([b]))
    assert looks == [False, True, True]  # batch 0, then batches 8 and 9
    expected = reference_states(
        up.numpy(), seg.numpy(), other.numpy(), thresholds.numpy(), 5, 0, np.arange(batches), 2, category.numpy()
    )
    for name in NAMES:
        np.testing.assert_array_equal(getattr(metric, name).numpy(), expected[name], err_msg=name)


def test_narrow_label_spaces_counted_pixel_by_pixel_match_loop(gen, monkeypatch):
    """Where the kernel counts narrow label spaces pixel by pixel (the default), the states are the loop's too."""
    monkeypatch.undo()
    concepts, groups = 7, 3
    acts, up, thresholds, seg, other = case(gen, "relu", (6, 4, 4, 4), (12, 12), 2, concepts)
    category = torch.tensor([-1, 0, 0, 1, 2, -1, 1])
    index = torch.arange(6)
    ours = count_with_metric(acts, seg, other, thresholds, concepts, category, index, groups)
    expected = reference_states(
        up.numpy(), seg.numpy(), other.numpy(), thresholds.numpy(), concepts, 0, index.numpy(), groups,
        category.numpy(),
    )
    for name in NAMES:
        np.testing.assert_array_equal(ours[name].numpy(), expected[name], err_msg=name)
