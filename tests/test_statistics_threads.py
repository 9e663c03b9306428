"""The statistics at 1, 2 and 4 threads: the same integers, equal to the pixel-loop reference."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import tests.reference as ref
from lightning_dissect._utils.parallel import run_tasks, statistics_threads, worker_count
from lightning_dissect.functional.counts import ConceptCounts, accumulate_unit_concept_counts
from lightning_dissect.metrics import UnitConceptIoU, UnitQuantiles
from lightning_dissect.metrics import unit_quantiles as unit_quantiles_module

THREADS = [1, 2, 4]


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _zeros(units, levels, concepts):
    return ConceptCounts(
        torch.zeros(units, *levels, concepts, dtype=torch.int64),
        torch.zeros(units, *levels, dtype=torch.int64),
        torch.zeros(concepts, dtype=torch.int64),
        torch.zeros((), dtype=torch.int64),
    )


def _thresholds(units, levels):
    # multiples of 1/8 land exactly on upsampled integer maps (ties are real); one repeated level
    base = torch.arange(units, dtype=torch.float32) % 5 * 0.5 - 1.0
    if levels is None:
        return base
    steps = torch.tensor([0.0, 0.25, 0.0, 1.0, 0.375, 2.0])[:levels]
    return base[:, None] + steps.cumsum(0)[None, :]


@pytest.mark.parametrize("levels", [None, 6], ids=["U", "UK"])
@pytest.mark.parametrize("num_threads", THREADS)
def test_counts_equal_the_reference_at_every_thread_count(gen, threads, levels, num_threads):
    threads(num_threads)
    units, concepts = 7, 5
    acts = torch.randint(-3, 5, (3, units, 4, 4), generator=gen).float()
    seg = torch.randint(0, concepts, (3, 2, 8, 8), generator=gen)
    other = torch.randint(0, concepts, (3, 8, 8), generator=gen)
    thresholds = _thresholds(units, levels)
    shape = () if levels is None else (levels,)
    out, paired = _zeros(units, shape, concepts), _zeros(units, shape, concepts)
    # a tiny budget: one image and one unit per step, so every step is a task of its own
    accumulate_unit_concept_counts(
        out, acts, seg, thresholds, concepts, ignore_index=0, max_temporary_bytes=1, paired=(paired, other)
    )
    assert worker_count(acts.device) == num_threads
    expected = ref.counts(acts.numpy(), seg.numpy(), thresholds.numpy(), concepts, 0)
    expected_paired = ref.counts(acts.numpy(), other.numpy(), thresholds.numpy(), concepts, 0)
    for name in ("intersection", "unit_area", "concept_area", "total"):
        np.testing.assert_array_equal(getattr(out, name).numpy(), expected[name], err_msg=name)
    np.testing.assert_array_equal(paired.intersection.numpy(), expected_paired["intersection"])
    np.testing.assert_array_equal(paired.concept_area.numpy(), expected_paired["concept_area"])


@pytest.mark.parametrize("num_threads", THREADS)
def test_iou_metric_equals_the_reference_at_every_thread_count(gen, threads, num_threads):
    threads(num_threads)
    thresholds = _thresholds(6, 4)
    metric = UnitConceptIoU(6, 4, thresholds, max_temporary_bytes=1)
    data = [(torch.randint(-3, 5, (b, 6, 2, 2), generator=gen).float(), torch.randint(0, 4, (b, 8, 8), generator=gen))
            for b in (2, 1, 3)]
    for acts, seg in data:
        metric.update(acts, seg)
    acts = np.concatenate([a.numpy() for a, _ in data])
    seg = np.concatenate([s.numpy() for _, s in data])
    expected = ref.counts(acts, seg, thresholds.numpy(), 4)
    counts = metric.counts()
    np.testing.assert_array_equal(counts.intersection.numpy(), expected["intersection"])
    np.testing.assert_array_equal(counts.unit_area.numpy(), expected["unit_area"])


def test_quantile_histogram_is_bit_identical_at_every_thread_count(gen, threads, monkeypatch):
    monkeypatch.setattr(unit_quantiles_module, "_CHUNK_VALUES", 64)  # many unit groups per update
    acts = torch.randn(4, 9, 4, 4, generator=gen)
    histograms = []
    for num_threads in THREADS:
        threads(num_threads)
        metric = UnitQuantiles(9, [0.1, 0.5, 0.99])
        metric.update(acts, size=(12, 12))
        metric.update(acts[:1] * 3.0, size=(12, 12))
        histograms.append(metric.histogram.clone())
        # every value against the exact order statistic of the float64 reference upsampling
        values = np.concatenate(
            [ref.upsample(acts.numpy(), 12, 12), ref.upsample(acts[:1].numpy() * 3.0, 12, 12)]
        )
        got = metric.compute().double().numpy()
        for unit in range(9):
            for j, q in enumerate([0.1, 0.5, 0.99]):
                exact = ref.order_statistic(values[:, unit].reshape(-1), q)
                assert abs(got[unit, j] - exact) <= metric.spec.achieved_accuracy * abs(exact) + 1e-5
    for other in histograms[1:]:
        assert torch.equal(other, histograms[0])


def test_quantile_histogram_updates_under_inference_mode_on_several_threads(gen, threads, monkeypatch):
    """A metric made under torch.inference_mode() (as every pass runs) is updated by the worker threads too."""
    monkeypatch.setattr(unit_quantiles_module, "_CHUNK_VALUES", 64)  # many unit groups per update
    threads(2)
    acts = torch.randn(4, 9, 4, 4, generator=gen)
    with torch.inference_mode():
        metric = UnitQuantiles(9, [0.5])
        metric.update(acts, size=(12, 12))
        got = metric.compute().double().numpy()
    values = ref.upsample(acts.numpy(), 12, 12)
    for unit in range(9):
        exact = ref.order_statistic(values[:, unit].reshape(-1), 0.5)
        assert abs(got[unit, 0] - exact) <= metric.spec.achieved_accuracy * abs(exact) + 1e-5


def test_tasks_run_on_several_threads_with_torch_on_one():
    seen: dict[int, int] = {}
    barrier = threading.Barrier(2, timeout=10)

    def task() -> None:
        seen[threading.get_ident()] = torch.get_num_threads()
        barrier.wait()  # both workers hold a task at once: they really run side by side

    before = torch.get_num_threads()
    run_tasks([task, task], workers=2)
    assert len(seen) == 2 and set(seen.values()) == {1}
    assert torch.get_num_threads() == before


def test_a_failing_task_raises_and_restores_the_thread_count():
    before = torch.get_num_threads()

    def bad() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_tasks([lambda: None, bad, lambda: None], workers=2)
    assert torch.get_num_threads() == before


def test_statistics_threads_caps_the_workers(threads):
    threads(4)
    with statistics_threads(2):
        assert worker_count(torch.device("cpu")) == 2
    assert worker_count(torch.device("cpu")) == 4
    assert worker_count(torch.device("meta")) == 1
    with pytest.raises(ValueError, match="threads"):
        with statistics_threads(0):
            pass


def test_finite_check_of_values_whose_sum_overflows():
    from lightning_dissect._utils.checks import check_finite

    check_finite(torch.tensor([3e38, 3e38, -1.0]), "acts")  # finite values, an infinite float32 sum
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="`acts` contains 1 NaN or infinite"):
            check_finite(torch.tensor([3e38, 3e38, bad]), "acts")


def test_thresholds_changed_in_place_are_counted_at_their_new_values(gen):
    from lightning_dissect.functional import unit_concept_counts

    acts = torch.randint(-3, 5, (2, 3, 4, 4), generator=gen).float()
    seg = torch.randint(0, 4, (2, 8, 8), generator=gen)
    thresholds = _thresholds(3, 4)
    for shift in (0.0, 0.75):
        thresholds.add_(shift)  # the same tensor, its level table must not be reused
        ours = unit_concept_counts(acts, seg, thresholds, 4)
        expected = ref.counts(acts.numpy(), seg.numpy(), thresholds.numpy(), 4)
        np.testing.assert_array_equal(ours.intersection.numpy(), expected["intersection"])
        np.testing.assert_array_equal(ours.unit_area.numpy(), expected["unit_area"])


def test_iqr_counts_under_inference_mode_equal_the_reference(gen):
    acts = torch.randint(-3, 5, (2, 3, 4, 4), generator=gen).float()
    seg = torch.randint(0, 4, (2, 8, 8), generator=gen)
    with torch.inference_mode():
        thresholds = _thresholds(3, 4)  # an inference tensor (no version counter)
        metric = UnitConceptIoU(3, 4, thresholds)
        for _ in range(2):
            metric.update(acts, seg)
        counts = metric.counts()
    expected = ref.counts(np.concatenate([acts.numpy()] * 2), np.concatenate([seg.numpy()] * 2),
                          thresholds.numpy(), 4)
    np.testing.assert_array_equal(counts.intersection.numpy(), expected["intersection"])

