"""Overhead of DissectionCallback on the example GAN: training wall time with / without it.

Both runs use the same seed and settings in one process, one after the other (the machine's noise
affects both); the ratio is what to read.

    python benchmarks/bench_callback.py                 # the example's defaults
    python benchmarks/bench_callback.py --max-epochs 2  # quicker
    python benchmarks/bench_callback.py --extra --dissect-samples 256   # forwarded to train_gan.py
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="further arguments for examples/train_gan.py")
    args = parser.parse_args()
    import torch
    import train_gan

    from lightning_dissect.callbacks.generator import DissectionCallback

    # the time spent inside rounds, measured within the run that has the callback (the ratio
    # below does not depend on how busy the machine was during the other run)
    inside = {"seconds": 0.0, "rounds": 0}
    original = DissectionCallback._round

    def timed(self, trainer, pl_module):
        start = time.perf_counter()
        try:
            return original(self, trainer, pl_module)
        finally:
            if not trainer.sanity_checking:
                inside["seconds"] += time.perf_counter() - start
                inside["rounds"] += 1

    DissectionCallback._round = timed

    common = ["--no-final-dissection", "--no-progress-bar", *args.extra]
    if args.max_epochs is not None:
        common += ["--max-epochs", str(args.max_epochs)]
    times = {}
    for label, flags in (("without callback", ["--no-callback"]), ("with callback", [])):
        with tempfile.TemporaryDirectory() as root:
            start = time.perf_counter()
            summary = train_gan.main([*common, *flags, "--default-root-dir", root])
            times[label] = (summary["train_seconds"], time.perf_counter() - start)
    base, _ = times["without callback"]
    with_cb, _ = times["with callback"]
    print()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for label, (train, _total) in times.items():
        print(f"{label:>17}: training {train:7.1f} s")
    print(f"overhead: {with_cb - base:.1f} s = {100 * (with_cb / base - 1):.1f} % of training time")
    rest = with_cb - inside["seconds"]
    print(f"inside the callback run: {inside['rounds']} round hooks took {inside['seconds']:.1f} s = "
          f"{100 * inside['seconds'] / rest:.1f} % of its training time without them (target <= 5 %)")


if __name__ == "__main__":
    main()
