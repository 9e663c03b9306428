"""The compiled statistics kernels: built here, switchable, and the same integers as the torch path.

The torch operations are themselves checked against plain NumPy loops elsewhere (and
``test_counts_lookup`` runs both paths against its loop); here both paths meet on adversarial
inputs: NaN and infinities at the start of a block, ``-0.0``, subnormal numbers, float64 maps,
ties with the thresholds, multi-labels, paired labels and wide label spaces.
"""

from __future__ import annotations

import pytest
import torch

from lightning_dissect._utils import native
from lightning_dissect._utils.native import native_library, use_native
from lightning_dissect.functional.counts import ConceptCounts, accumulate_unit_concept_counts
from lightning_dissect.functional.quantiles import (
    accumulate_anchored_histogram,
    anchored_spec,
    magnitude_exponents,
)
from lightning_dissect.metrics import UnitConceptIoU, UnitQuantiles

needs_compiler = pytest.mark.skipif(
    native._compiler() is None, reason="needs a C compiler on PATH (the statistics' kernels are built with it)"
)


@pytest.fixture
def fresh_loader(monkeypatch, tmp_path):
    """An empty kernel cache folder and a loader that has not tried yet."""
    monkeypatch.setenv("LIGHTNING_DISSECT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_loaded", [])
    return tmp_path / "cache"


@needs_compiler
def test_kernels_build_into_an_empty_cache_and_load(fresh_loader):
    library = native_library()
    assert library is not None, "a C compiler is on PATH: the kernels must build"
    built = list(fresh_loader.glob("stats-*.so"))
    assert len(built) == 1 and built[0].stat().st_size > 0
    assert not [p for p in fresh_loader.iterdir() if p not in built]  # no temporary left behind


def test_without_a_compiler_the_statistics_fall_back_to_torch(fresh_loader, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-anywhere")
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    assert native_library() is None
    metric = UnitQuantiles(2, [0.5])
    acts = torch.arange(1.0, 17.0).reshape(2, 2, 2, 2)
    metric.update(acts)
    median = metric.compute()
    for unit in range(2):  # between the two middle values of the unit's eight
        ordered = acts[:, unit].flatten().sort().values
        assert ordered[3] * 0.99 <= median[unit] <= ordered[4] * 1.01


def test_a_failing_compiler_falls_back_to_torch(fresh_loader, monkeypatch, tmp_path):
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'no, not today' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    assert native_library() is None
    assert not list(fresh_loader.glob("*.so"))


@needs_compiler
def test_a_compiler_without_the_avx2_variants_builds_the_baseline(fresh_loader, monkeypatch, tmp_path):
    import shutil

    real = shutil.which("cc") or shutil.which("gcc")
    picky = tmp_path / "picky-cc"
    calls = tmp_path / "calls"
    picky.write_text(
        "#!/bin/sh\n"
        f"echo \"$*\" >> {calls}\n"
        'case "$*" in *-DLD_NO_DISPATCH*) ;; *) echo "no target attribute here" >&2; exit 1;; esac\n'
        f'exec {real} "$@"\n'
    )
    picky.chmod(0o755)
    monkeypatch.setenv("CC", str(picky))
    library = native_library()
    assert library is not None
    assert len(calls.read_text().splitlines()) == 2  # the full build, then the baseline
    values = torch.tensor([[0.5, 2.0, float("nan")]])
    counts = ConceptCounts(*(torch.zeros(s, dtype=torch.int64) for s in [(1, 2), (1,), (2,), ()]))
    accumulate_unit_concept_counts(counts, values.view(1, 1, 1, 3), torch.tensor([[[0, 1, 1]]]), torch.tensor([1.0]), 2)
    assert counts.intersection.tolist() == [[0, 1]] and counts.unit_area.tolist() == [1]


@needs_compiler
def test_the_environment_switch_turns_the_kernels_off(monkeypatch):
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    assert native_library() is None
    monkeypatch.setenv(native.ENV_SWITCH, "1")
    assert native_library() is not None
    with use_native(False):
        assert native_library() is None


def adversarial_values(gen: torch.Generator, units: int, per_unit: int, relu: bool) -> torch.Tensor:
    scale = 10.0 ** torch.randint(-12, 12, (units, 1), generator=gen).float()
    values = torch.randn(units, per_unit, generator=gen) * scale
    if relu:
        values = values.relu()
    values[0, :6] = torch.tensor([float("nan"), 0.0, -0.0, float("inf"), float("-inf"), 1e-45])
    values[1, 256:259] = torch.tensor([float("nan"), 3e38, -1e-40])  # a block starting with NaN
    return values


@needs_compiler
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("per_unit", [1, 300, 1031])
def test_anchored_histogram_native_equals_torch(gen, relu, per_unit):
    spec = anchored_spec()
    units = 6
    values = adversarial_values(gen, units, max(per_unit, 260), relu)[:, :per_unit]
    finite = values.nan_to_num(0.0, 0.0, 0.0)
    exponents = magnitude_exponents(finite)
    exponents[-1] = -200  # a window in the subnormal numbers: the torch path counts that row
    results = []
    for use in (True, False):
        histogram = torch.zeros(units, spec.num_buckets, dtype=torch.int64)
        overflow = torch.zeros(units, dtype=torch.int64)
        with use_native(use):
            accumulate_anchored_histogram(values, exponents, spec, histogram, overflow)
            accumulate_anchored_histogram(values[:, ::1], exponents, spec, histogram, overflow)
        results.append((histogram, overflow))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
    assert int(results[0][0].sum()) == 2 * values.numel()


def counts_both_ways(acts, seg, thresholds, concepts, *, paired=None, ignore_index=None):
    outs = []
    levels = tuple(thresholds.shape[1:])
    for use in (True, False):
        def fresh():
            return ConceptCounts(
                torch.zeros(acts.shape[1], *levels, concepts, dtype=torch.int64),
                torch.zeros(acts.shape[1], *levels, dtype=torch.int64),
                torch.zeros(concepts, dtype=torch.int64),
                torch.zeros((), dtype=torch.int64),
            )
        out, other = fresh(), fresh()
        with use_native(use):
            accumulate_unit_concept_counts(
                out, acts, seg, thresholds, concepts, ignore_index=ignore_index,
                paired=None if paired is None else (other, paired),
            )
        outs.append((out, other))
    return outs


@needs_compiler
@pytest.mark.parametrize("levels", [None, 1, 6])
@pytest.mark.parametrize("case", ["relu", "signed", "float64", "special", "wide", "multilabel-paired"])
def test_unit_concept_counts_native_equal_torch(gen, levels, case):
    batch, units, concepts = 3, 7, 5
    acts = torch.randn(batch, units, 5, 6, generator=gen)
    size = (16, 18)
    if case == "relu":
        acts = acts.relu()
    elif case == "float64":
        acts = acts.double()
    elif case == "special":
        acts.view(-1)[torch.randint(0, acts.numel(), (5,), generator=gen)] = float("nan")
        acts[0, 0, 0, 0] = float("nan")  # the first value of the first block
        acts[1, 2] = -0.0
        acts.view(-1)[torch.randint(0, acts.numel(), (3,), generator=gen)] = float("inf")
    elif case == "wide":
        concepts = 3000
    seg_shape = (batch, 2, *size) if case == "multilabel-paired" else (batch, *size)
    seg = torch.randint(-1, concepts, seg_shape, generator=gen)
    paired = torch.randint(-1, concepts, seg_shape, generator=gen) if case == "multilabel-paired" else None
    flat = acts.transpose(0, 1).reshape(units, -1).double().nan_to_num(0.0, 0.0, 0.0)
    if levels is None:
        thresholds = torch.quantile(flat, 0.9, dim=1)
    else:
        qs = torch.linspace(0.0, 0.995, levels, dtype=torch.float64)
        thresholds = torch.quantile(flat, qs, dim=1).T.contiguous()
        thresholds[0] = torch.sort(torch.tensor([-0.0, 0.0, 0.5, 0.5, float("inf"), 1.0])[:levels]).values
    thresholds = thresholds.to(acts.dtype)
    native_out, torch_out = counts_both_ways(acts, seg, thresholds, concepts, paired=paired, ignore_index=-1)
    for mine, theirs in zip(native_out, torch_out):
        for a, b in zip(mine, theirs):
            assert torch.equal(a, b)
    assert int(native_out[0].unit_area.sum()) > 0


@needs_compiler
def test_unsorted_thresholds_are_left_to_the_torch_path(gen):
    acts = torch.randn(2, 3, 4, 4, generator=gen)
    seg = torch.randint(0, 4, (2, 8, 8), generator=gen)
    thresholds = torch.tensor([[0.5, -0.5, 1.0], [0.0, 0.1, 0.2], [1.0, 0.0, 0.0]])
    native_out, torch_out = counts_both_ways(acts, seg, thresholds, 4)
    for a, b in zip(native_out[0], torch_out[0]):
        assert torch.equal(a, b)


@needs_compiler
@pytest.mark.parametrize("threads", [1, 2, 4])
def test_metrics_native_equal_torch_at_every_thread_count(gen, threads):
    acts = torch.randn(8, 40, 6, 6, generator=gen).relu()
    seg = torch.randint(0, 9, (8, 24, 24), generator=gen)
    paired = seg.roll(1, 0)
    states = []
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for use in (True, False):
            with use_native(use):
                quantiles = UnitQuantiles(40, [0.9, 0.995])
                quantiles.update(acts, size=(24, 24))
                thresholds = quantiles.compute()
                iou = UnitConceptIoU(40, 9, thresholds[:, 1], paired=True, sample_groups=3)
                iou.update(acts, seg, paired, sample_index=torch.arange(8))
                levels = UnitConceptIoU(40, 9, thresholds)
                levels.update(acts, seg)
            states.append((quantiles.histogram.clone(), thresholds, *(v.clone() for v in iou.metric_state.values()),
                           *(v.clone() for v in levels.metric_state.values())))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*states):
        assert torch.equal(a, b)


@needs_compiler
def test_the_baseline_build_counts_as_the_torch_path(fresh_loader, monkeypatch, tmp_path, gen):
    """The kernels built without the AVX2 variants (what a processor without AVX2 runs)."""
    import shutil

    real = shutil.which("cc") or shutil.which("gcc")
    baseline = tmp_path / "baseline-cc"
    baseline.write_text(f'#!/bin/sh\nexec {real} -DLD_NO_DISPATCH "$@"\n')
    baseline.chmod(0o755)
    monkeypatch.setenv("CC", str(baseline))
    assert native_library() is not None
    for relu in (False, True):
        test_anchored_histogram_native_equals_torch(gen, relu, 1031)
    for levels in (None, 6):
        for case in ("signed", "special", "multilabel-paired"):
            test_unit_concept_counts_native_equal_torch(gen, levels, case)
