"""How the statistics cost scales: time per latent against one parameter at a time.

The statistics of one dissection batch are one ``UnitQuantiles.update`` (pass 1) plus one
``UnitConceptIoU.update`` with ``K`` candidate levels per unit (pass 2; ``K = 1`` is the
single-threshold quantile mode). Around a base point (256 units with 8 x 8 maps, 20 concepts,
``K = 16``, 32 x 32 segmentation, batch 32) each of units, concepts, levels, segmentation
resolution and batch size is varied in turn. Each line prints the best-of-``--repeats`` time per
latent, its ratio to the base point (timed alternately with it, so that a drifting machine load
cancels) and the expected complexity; ``--plot PATH`` writes a PNG
(with matplotlib; skipped with a message if it is not installed).

Run ``python benchmarks/bench_sweep.py [--plot docs/images/bench_sweep.png]``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

from lightning_dissect.metrics import UnitConceptIoU, UnitQuantiles  # noqa: E402

BASE = {"units": 256, "concepts": 20, "levels": 16, "resolution": 32, "batch": 32}
SWEEPS = {
    "units": [64, 128, 256, 512, 1024],
    "concepts": [5, 20, 80, 320],
    "levels": [1, 4, 16, 64],
    "resolution": [16, 32, 64, 128],
    "batch": [4, 8, 32, 128],
}
# per latent; U units, H x W segmentation, C concepts, K levels, B batch, NB = table buckets
COMPLEXITY = {
    "units": "O(U·H·W): linear in U",
    "concepts": "O(U·H·W + U·K·C/B): ~flat until U·K·C nears B·H·W",
    "levels": "O(U·H·W + U·K·C/B): ~flat in K (no per-level pass)",
    "resolution": "O(U·H·W): quadratic in the side",
    "batch": "O(U·H·W + U·(K·C + NB)/B): per-batch tables amortised",
}
MAP_SIDE = 8


def segmentation(batch, side, concepts, gen):
    """Blocky labels: 4 x 4 cells of random concepts, nearest-upsampled to ``side``."""
    cells = torch.randint(0, concepts, (batch, 1, 4, 4), generator=gen).float()
    return torch.nn.functional.interpolate(cells, size=(side, side), mode="nearest")[:, 0].long()


def prepare(point):
    """One batch of the point's workload; returns a function running its statistics once."""
    gen = torch.Generator().manual_seed(0)
    units, batch, side = point["units"], point["batch"], point["resolution"]
    acts = torch.randn(batch, units, MAP_SIDE, MAP_SIDE, generator=gen).relu()
    seg = segmentation(batch, side, point["concepts"], gen)
    quantiles = UnitQuantiles(units, 0.99)
    if point["levels"] > 1:
        levels = (1.0 - torch.logspace(-3, 0, point["levels"], dtype=torch.float64)).flip(0)
    else:
        levels = torch.tensor([0.99], dtype=torch.float64)
    candidates = UnitQuantiles(units, levels.tolist())
    candidates.update(acts, size=(side, side))
    thresholds = candidates.compute().float().reshape(units, -1)
    if point["levels"] == 1:
        thresholds = thresholds[:, 0]
    iou = UnitConceptIoU(units, point["concepts"], thresholds)

    def run():
        quantiles.update(acts, size=(side, side))
        iou.update(acts, seg)

    run()  # warm up
    return run


def time_point(point, repeats):
    """Best time per latent of the point and of the base point, measured alternately.

    Alternating keeps the ratio meaningful on a machine whose load drifts during the sweep.
    """
    run, base = prepare(point), prepare(BASE)
    best, best_base = float("inf"), float("inf")
    for _ in range(repeats):
        for fn, is_base in ((base, True), (run, False)):
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if is_base:
                best_base = min(best_base, elapsed)
            else:
                best = min(best, elapsed)
    return best / point["batch"], best_base / BASE["batch"]


def plot(results, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print(f"matplotlib is not installed: no plot written to {path}")
        return
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.2), sharey=True)
    for ax, (name, rows) in zip(axes, results.items()):
        xs = [x for x, _ in rows]
        ys = [ratio for _, ratio in rows]
        ax.loglog(xs, ys, "o-", label="measured")
        slope = {"units": 1.0, "resolution": 2.0}.get(name, 0.0)
        ax.loglog(xs, [(x / BASE[name]) ** slope for x in xs], "k:", label="expected")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(name)
        ax.set_title(COMPLEXITY[name].split(":")[0], fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("time per latent / base point")
    axes[0].legend(fontsize=8)
    fig.suptitle("Statistics per latent (quantile + IoU update), one parameter varied", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--plot", default=None, help="write a PNG plot to this path")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__} | {platform.processor() or platform.machine()} | "
          f"threads {torch.get_num_threads()}")
    print(f"base point: {BASE}, activation maps {MAP_SIDE}x{MAP_SIDE}; best of {args.repeats}")
    results = {}
    print(f"{'parameter':<11}{'value':>7}{'ms/latent':>11}{'x base':>8}   expected")
    for name, values in SWEEPS.items():
        rows = []
        for value in values:
            point = dict(BASE, **{name: value})
            t, base_time = time_point(point, args.repeats)
            rows.append((value, t / base_time))
            note = COMPLEXITY[name] if value == values[0] else ""
            print(f"{name:<11}{value:>7}{t * 1e3:>11.3f}{t / base_time:>8.2f}   {note}")
        results[name] = rows
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
