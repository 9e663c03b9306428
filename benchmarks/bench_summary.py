"""What labelling the units costs after the passes, against the forward floor, measured in one run.

Workload of ``bench_round.py`` (``--workload example``: the example's DCGAN generator, 480 units in
4 layers, 32 x 32 images, 128 latents, batch 32; ``stylegan2``: the StyleGAN2-shaped generator).
One ``dissect()`` per threshold mode records the counts each layer is labelled from; then, timed
interleaved (best of ``--repeats``):

* the **forward floor** (two generator passes and one segmenter pass, as in ``bench_round.py``);
* **labelling** every layer from its counts (``summarise_layer``: IoU, the ``"iqr"`` level choice,
  each unit's swap-test p-value against chance over 12 sample groups, the records);
* the **swap test** alone (``swap_test_p_values`` for every unit's label).

Prints the times and ``labelling / floor`` per mode, with the thread count and the load average.

    python benchmarks/bench_summary.py [--threads 1] [--repeats 5] [--workload example]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples"), str(ROOT / "benchmarks")]  # this checkout first

from bench_round import forward_floor, workload  # noqa: E402

import lightning_dissect.dissection as dissection  # noqa: E402
from lightning_dissect.dissection import dissect  # noqa: E402
from lightning_dissect.dissection.summary import summarise_layer  # noqa: E402
from lightning_dissect.functional.chance import swap_test_p_values  # noqa: E402


def recorded_layers(generator, layers, segmenter, latent_dim, samples, batch, mode):
    """The arguments of every ``summarise_layer`` call of one ``dissect()``."""
    calls = []

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        return summarise_layer(*args, **kwargs)

    dissection.summarise_layer = record
    try:
        dissect(generator, layers, segmenter, latent_shape=(latent_dim,), num_samples=samples, batch_size=batch,
                threshold_mode=mode, num_levels=16, progress=False)
    finally:
        dissection.summarise_layer = summarise_layer
    return calls


def swap_inputs(args, kwargs):
    """The swap test's inputs for each unit's label (the label with the largest IoU, quantile mode)."""
    counts, groups = args[4], kwargs["group_counts"]
    if counts.intersection.ndim != 2:
        return None
    rows = torch.arange(counts.intersection.shape[0])
    label = counts.intersection.argmax(1)
    return (groups.intersection[rows, :, label], groups.concept_area[:, label].T,
            groups.paired_intersection[rows, :, label], groups.paired_concept_area[:, label].T, counts.unit_area)


def best_time(fn, best):
    start = time.perf_counter()
    fn()
    return min(best, time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workload", default="example", choices=["example", "stylegan2"])
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    generator, layers, segmenter, latent_dim, size, samples, batch, units = workload(args.workload, torch.device("cpu"))
    latents = torch.randn(samples, latent_dim, generator=torch.Generator().manual_seed(1))

    def floor():
        forward_floor(generator, segmenter, latents, batch)

    print(f"torch {torch.__version__} | {platform.processor() or platform.machine()} | {torch.get_num_threads()} "
          f"threads | [{args.workload}] {units} units in {len(layers)} layers, {samples} latents, batch {batch} | "
          f"load average {os.getloadavg()[0]:.2f} at the start")
    recorded = {mode: recorded_layers(generator, layers, segmenter, latent_dim, samples, batch, mode)
                for mode in ("quantile", "iqr")}
    swaps = [s for s in (swap_inputs(*call) for call in recorded["quantile"]) if s is not None]
    best = {"floor": float("inf"), "quantile": float("inf"), "iqr": float("inf"), "swap": float("inf")}
    floor()
    for _ in range(args.repeats):
        best["floor"] = best_time(floor, best["floor"])
        for mode in ("quantile", "iqr"):
            best[mode] = best_time(lambda mode=mode: [summarise_layer(*a, **k) for a, k in recorded[mode]], best[mode])
        best["swap"] = best_time(lambda: [swap_test_p_values(*s) for s in swaps], best["swap"])
    print(f"forward floor {best['floor'] * 1e3:.0f} ms")
    for mode in ("quantile", "iqr"):
        print(f"labelling, {mode:<8} {best[mode] * 1e3:7.1f} ms = {best[mode] / best['floor']:.3f}x the floor")
    print(f"swap test, every unit's label: {best['swap'] * 1e3:.1f} ms = {best['swap'] / best['floor']:.3f}x the floor")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
