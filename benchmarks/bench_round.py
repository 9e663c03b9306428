"""Cost of one dissection round relative to the forward passes it cannot avoid, at several thread counts.

Two workloads (random weights, the embedded :class:`~lightning_dissect.segmenters.SyntheticSceneSegmenter`
at the image size):

* ``example``: the example's DCGAN generator (``examples/gan_model.py``), layers ``layer1`` ...
  ``layer4`` (256 + 128 + 64 + 32 = 480 units), 32 x 32 images, 128 latents, batch 32;
* ``stylegan2``: a StyleGAN2-shaped generator (``benchmarks/stylegan2_shaped.py``), 128 x 128
  images, its 32 x 32 and 64 x 64 blocks (256 + 128 units), 64 latents, batch 16.

For each workload and each thread count (by default 1, torch's default and every core; equal
counts are run once) it times:

* the **forward floor**: two generator passes (pass 1 thresholds, pass 2 counts) plus one
  segmenter pass over the latents, with the same batch size; nothing else;
* ``dissect()`` in ``"quantile"`` mode and in ``"iqr"`` mode (``num_levels=16``),

and prints the times (best of the repeats, the measurements interleaved) and the ratios
``dissect / floor`` measured in this run, with the thread count in every row, and the load
average of the machine before and after (the ratios move when other jobs share the cores).
``--statistics native torch`` times each mode twice, with the compiled statistics kernels
(:mod:`lightning_dissect._utils.native`, the default where a C compiler is found) and with the
torch operations alone, in the same run.

Run ``python benchmarks/bench_round.py`` (a few minutes on 2 cores) or
``--workloads example --threads 1`` for one part; ``--profile`` adds a cProfile top-10 per mode.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples"), str(ROOT / "benchmarks")]  # this checkout first

from gan_model import Generator  # noqa: E402
from stylegan2_shaped import LAYERS as STYLEGAN2_LAYERS  # noqa: E402
from stylegan2_shaped import Z_DIM, StyleGAN2Shaped  # noqa: E402

from lightning_dissect._utils.native import native_library, use_native  # noqa: E402
from lightning_dissect.dissection import dissect  # noqa: E402
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter  # noqa: E402

#: ``dissect / floor`` targets per workload and mode.
TARGETS = {
    "example": {"quantile": 3.0, "iqr": 5.0},
    "stylegan2": {"quantile": 1.2, "iqr": 1.5},
}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


def workload(name: str, device: torch.device):
    """``(generator, layers, segmenter, latent_dim, image_size, samples, batch, units)``."""
    torch.manual_seed(0)
    if name == "example":
        generator = Generator(latent_dim=128, image_size=32)
        layers, latent_dim, size, samples, batch = ["layer1", "layer2", "layer3", "layer4"], 128, 32, 128, 32
        units = sum(getattr(generator, n)[0].out_channels for n in layers)
    else:
        generator = StyleGAN2Shaped()
        layers, latent_dim, size, samples, batch = STYLEGAN2_LAYERS, Z_DIM, 128, 64, 16
        units = sum(generator.blocks[int(n.split(".")[1])].conv2.weight.shape[0] for n in layers)
    segmenter = SyntheticSceneSegmenter(SceneWorld(size))
    return generator.eval().to(device), layers, segmenter, latent_dim, size, samples, batch, units


def forward_floor(generator, segmenter, latents: torch.Tensor, batch: int) -> None:
    """The forward floor: two generator passes over ``latents`` and one segmenter pass, in batches."""
    with torch.inference_mode():
        for chunk in latents.split(batch):
            generator(chunk)
        for chunk in latents.split(batch):
            segmenter(generator(chunk))


def thread_counts(spec: list[str]) -> list[tuple[int, str]]:
    """Distinct thread counts with their names: ``1``, ``default`` (torch's), ``all`` (every core)."""
    default = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    named: dict[int, list[str]] = {}
    for item in spec:
        count = {"default": default, "all": cores}.get(item)
        count = int(item) if count is None else count
        named.setdefault(count, []).append(item if item in ("default", "all") else "")
    return [(count, ", ".join(n for n in names if n)) for count, names in named.items()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", default=["example", "stylegan2"], choices=["example", "stylegan2"])
    parser.add_argument("--threads", nargs="+", default=["1", "default", "all"],
                        help="thread counts: numbers, 'default' (torch's) and 'all' (every core)")
    parser.add_argument("--levels", type=int, default=16, help="num_levels in iqr mode")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the example workload (best of)")
    parser.add_argument("--stylegan2-repeats", type=int, default=1, help="repeats of the StyleGAN2-shaped workload")
    parser.add_argument("--profile", action="store_true", help="print a cProfile top-10 per mode")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--statistics", nargs="+", default=["native"], choices=["native", "torch"],
                        help="the statistics' compiled kernels, the torch operations alone, or both")
    args = parser.parse_args(argv)
    if "native" in args.statistics and args.device == "cpu" and native_library() is None:
        parser.error("the compiled statistics kernels are not available here (no C compiler, or "
                     "LIGHTNING_DISSECT_NATIVE=0): pass --statistics torch")
    device = torch.device(args.device)
    counts = thread_counts(args.threads)
    print(f"torch {torch.__version__} | {platform.processor() or platform.machine()} | "
          f"{os.cpu_count()} cores | torch default threads {torch.get_num_threads()} | device {device}")
    print(f"iqr num_levels={args.levels}; times are the best of the repeats; ratios = dissect / floor; "
          f"statistics: {', '.join(args.statistics)}")
    rows = []
    for name in args.workloads:
        generator, layers, segmenter, latent_dim, size, samples, batch, units = workload(name, device)
        repeats = args.repeats if name == "example" else args.stylegan2_repeats
        latents = torch.randn(samples, latent_dim, generator=torch.Generator().manual_seed(1)).to(device)
        print(f"\n[{name}] {units} units in {len(layers)} layers, {size}x{size} images, {samples} latents, "
              f"batch {batch}, best of {repeats}; load average {os.getloadavg()[0]:.2f} at the start")

        def floor(subset=latents, generator=generator, segmenter=segmenter, batch=batch):
            forward_floor(generator, segmenter, subset, batch)

        def run(mode, statistics="native", samples=samples, generator=generator, layers=layers,
                segmenter=segmenter, latent_dim=latent_dim, batch=batch):
            with use_native(statistics == "native"):
                return dissect(generator, layers, segmenter, latent_shape=(latent_dim,), num_samples=samples,
                               batch_size=batch, threshold_mode=mode, num_levels=args.levels, progress=False,
                               device=device)

        for threads, label in counts:
            torch.set_num_threads(threads)
            # warm-up: one batch of each
            floor(latents[:batch])
            for statistics in args.statistics:
                for mode in ("quantile", "iqr"):
                    with use_native(statistics == "native"):
                        dissect(generator, layers, segmenter, latent_shape=(latent_dim,), num_samples=batch,
                                batch_size=batch, threshold_mode=mode, num_levels=args.levels, progress=False,
                                device=device)
            best = {"floor": float("inf")}
            for _ in range(repeats):
                best["floor"] = min(best["floor"], timed(floor))
                for statistics in args.statistics:
                    for mode in ("quantile", "iqr"):
                        key = (statistics, mode)
                        best[key] = min(best.get(key, float("inf")), timed(lambda m=mode, s=statistics: run(m, s)))
            for statistics in args.statistics:
                per_mode = {"floor": best["floor"], **{m: best[(statistics, m)] for m in ("quantile", "iqr")}}
                row = (name, threads, label, statistics, per_mode, os.getloadavg()[0])
                rows.append(row)
                print_row(row)
            if args.profile:
                for mode in ("quantile", "iqr"):
                    profile(lambda mode=mode: run(mode), f"{name}, {threads} threads, dissect {mode}")
    print("\nsummary (ms; ratio = dissect / floor; target in brackets)")
    print(f"{'workload':<10} {'threads':<20} {'stats':<7} {'floor':>9} {'quantile':>9} {'ratio':>12} {'iqr':>9} "
          f"{'ratio':>12} {'load':>5}")
    for row in rows:
        print_row(row)


def print_row(row) -> None:
    name, threads, label, statistics, best, load = row
    cells = []
    for mode in ("quantile", "iqr"):
        ratio = best[mode] / best["floor"]
        target = TARGETS[name][mode]
        cells.append(f"{best[mode] * 1e3:9.0f} {ratio:5.2f}x {'<=' if ratio <= target else '> '}{target:g}")
    threads_text = f"{threads}" + (f" ({label})" if label else "")
    print(f"{name:<10} {threads_text:<20} {statistics:<7} {best['floor'] * 1e3:9.0f} {cells[0]} {cells[1]} "
          f"{load:5.2f}")


def profile(fn, title: str) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(10)
    print(f"\n--- cProfile, {title}: top 10 by internal time ---")
    lines = stream.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    print("\n".join(lines[start : start + 11]))


if __name__ == "__main__":
    main()
