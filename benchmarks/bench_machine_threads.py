"""How much a second thread speeds up the statistics' kind of work on this machine.

The statistics are streams of short integer operations over a few hundred thousand values
(add, shift, clamp, ``bincount``): memory-bound work, unlike the convolutions of the forward
pass. This script times the same plain loop of such operations over 64 rows of 256 Ki int32
values on one thread and split over two Python threads (each running torch on one thread), and a
float matrix product loop (compute-bound) the same way, best of ``--repeats``, and prints the
speed-ups measured in this run. Where the first is near 1x, no way of splitting the statistics
over threads can make them faster on this machine, while the forward pass still gains.

Run ``python benchmarks/bench_machine_threads.py``.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import torch


def integer_rows(values: torch.Tensor, rows: range) -> None:
    for r in rows:
        y = values[r] + 5
        y >>= 1
        y.clamp_(0, 4000)
        torch.bincount(y, minlength=5000)


def matmuls(matrix: torch.Tensor, rows: range) -> None:
    for _ in rows:
        matrix @ matrix


def timed(fn, parts: list[range], threads: int) -> float:
    def run(rows: range) -> None:
        torch.set_num_threads(1)
        fn(rows)

    start = time.perf_counter()
    if threads == 1:
        for rows in parts:
            run(rows)
    else:
        workers = [threading.Thread(target=run, args=(rows,)) for rows in parts]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    values = (torch.rand(64, 1 << 18, generator=torch.Generator().manual_seed(0)) * 10000).to(torch.int32)
    matrix = torch.randn(256, 256)
    print(f"torch {torch.__version__} | {os.cpu_count()} cores | load average {os.getloadavg()[0]:.2f}")
    for name, fn, count in (("integer ops + bincount (memory-bound)", lambda r: integer_rows(values, r), 64),
                            ("256x256 matrix products (compute-bound)", lambda r: matmuls(matrix, r), 200)):
        split = [range(0, count, 2), range(1, count, 2)]
        fn(range(2))  # warm-up
        one = min(timed(fn, split, 1) for _ in range(args.repeats))
        two = min(timed(fn, split, 2) for _ in range(args.repeats))
        print(f"{name:<42} 1 thread {one * 1e3:7.1f} ms | 2 threads {two * 1e3:7.1f} ms | speed-up {one / two:4.2f}x")


if __name__ == "__main__":
    main()
