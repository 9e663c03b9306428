"""Cost of the count pass's statistics (``UnitConceptIoU.update``) of the example round, per mode.

Runs the round of ``bench_round.py``'s ``example`` workload once per mode (``"quantile"`` and
``"iqr"`` with ``num_levels=16``), keeps the arguments of every ``UnitConceptIoU.update`` of its
count pass (4 layers x 4 batches: the real and paired labels, the sample groups of the p-values),
then replays those updates on fresh metrics at each thread count, as ``dissect()`` runs them
(``metric_threads``), and prints the best wall time and process CPU time of the repeats next to
the forward floor of ``bench_round.py`` measured in the same run, with the load average. The
replayed counts are checked to be identical at every thread count.

Run ``python benchmarks/bench_count_pass.py`` (about a minute on 2 cores) or ``--threads 1``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples"), str(ROOT / "benchmarks")]  # this checkout first

from bench_round import forward_floor, thread_counts, timed, workload  # noqa: E402

from lightning_dissect.dissection import dissect  # noqa: E402
from lightning_dissect.dissection.passes import metric_threads  # noqa: E402
from lightning_dissect.metrics import UnitConceptIoU  # noqa: E402


def record(mode: str, levels: int) -> list[tuple[dict, tuple]]:
    """The ``(metric settings, update arguments)`` of every count-pass update of one example round."""
    generator, layers, segmenter, latent_dim, _size, samples, batch, _units = workload("example", torch.device("cpu"))
    calls = []
    original = UnitConceptIoU.update

    def spy(self, activations, segmentation, paired_segmentation=None, sample_index=None):
        settings = dict(num_units=self.num_units, num_concepts=self.num_concepts, thresholds=self.thresholds.clone(),
                        ignore_index=self.ignore_index, paired=self.paired, sample_groups=self.sample_groups,
                        concept_categories=self.concept_categories)
        calls.append((settings, (activations.clone(), segmentation.clone(),
                                 None if paired_segmentation is None else paired_segmentation.clone(),
                                 None if sample_index is None else sample_index.clone())))
        return original(self, activations, segmentation, paired_segmentation, sample_index)

    UnitConceptIoU.update = spy
    try:
        dissect(generator, layers, segmenter, latent_shape=(latent_dim,), num_samples=samples, batch_size=batch,
                threshold_mode=mode, num_levels=levels, progress=False)
    finally:
        UnitConceptIoU.update = original
    return calls


def replay(calls) -> list[torch.Tensor]:
    """Every update on fresh metrics (one per layer), as the count pass runs them; the final counts."""
    metrics: dict[int, UnitConceptIoU] = {}
    for settings, (acts, seg, paired, index) in calls:
        key = settings["num_units"]  # one layer each in the example
        if key not in metrics:
            metrics[key] = UnitConceptIoU(validate_args=False, **settings)
        with torch.inference_mode(), metric_threads("cpu"):
            metrics[key].update(acts, seg, paired, sample_index=index)
    return [getattr(m, name).clone() for m in metrics.values() for name in m._defaults]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", nargs="+", default=["1", "default", "all"])
    parser.add_argument("--levels", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    recorded = {mode: record(mode, args.levels) for mode in ("quantile", "iqr")}
    generator, _layers, segmenter, latent_dim, _size, samples, batch, _units = workload("example", torch.device("cpu"))
    latents = torch.randn(samples, latent_dim, generator=torch.Generator().manual_seed(1))

    def floor():
        forward_floor(generator, segmenter, latents, batch)

    print(f"torch {torch.__version__} | {os.cpu_count()} cores | example round, "
          f"{len(recorded['quantile'])} count-pass updates per mode; best of {args.repeats}")
    print(f"{'threads':<14} {'floor':>8} {'mode':<9} {'update wall':>12} {'cpu':>9} {'/ floor':>8} {'load':>5}")
    reference = {}
    for threads, label in thread_counts(args.threads):
        torch.set_num_threads(threads)
        floor()
        best_floor = min(timed(floor) for _ in range(args.repeats))
        for mode, calls in recorded.items():
            counts = replay(calls)  # warm-up
            if mode in reference:
                assert all(torch.equal(a, b) for a, b in zip(counts, reference[mode])), "counts differ"
            reference[mode] = counts
            wall, cpu = float("inf"), float("inf")
            for _ in range(args.repeats):
                start_cpu, start = time.process_time(), time.perf_counter()
                replay(calls)
                wall = min(wall, time.perf_counter() - start)
                cpu = min(cpu, time.process_time() - start_cpu)
            text = f"{threads}" + (f" ({label})" if label else "")
            print(f"{text:<14} {best_floor * 1e3:6.0f}ms {mode:<9} {wall * 1e3:10.0f}ms {cpu * 1e3:7.0f}ms "
                  f"{wall / best_floor:7.2f}x {os.getloadavg()[0]:5.2f}")


if __name__ == "__main__":
    main()
