"""Benchmark of the core statistics (one batch of a GAN Dissection-sized workload).

Times, best of several repeats:

(a) ``F.interpolate(mode="bilinear")`` of the activations alone (the cost every method pays);
(b) one ``UnitQuantiles.update(acts, size=...)``;
(c) one ``UnitConceptIoU.update(acts, seg)`` with one threshold per unit;
(d) a plain baseline in the style of the reference code (davidbau/dissect): its quantile pass
    (``F.interpolate``, then a streaming sorted-sample sketch: merge the batch into a per-unit
    sample buffer, sort, and compact by keeping every other sample) and its IoU pass
    (``F.interpolate``, threshold, then per concept present a boolean-indexed conditional sum).

Each stage is timed at 1 thread and at every core (``--threads``), (a) at the same count as the
stage it is compared with. Run ``python benchmarks/bench_core.py`` (defaults: 16 x 512 x 8 x 8
upsampled to 64 x 64, 150 concepts, ~16 per image) or ``--device cuda``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from functools import partial

import torch
import torch.nn.functional as F

from lightning_dissect.metrics import UnitConceptIoU, UnitQuantiles


def make_segmentation(batch, size, concepts, per_image, gen):
    """Voronoi regions around ``per_image`` random seeds, each a distinct random concept."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    grid = torch.stack([ys, xs], -1).reshape(-1, 1, 2).float()
    segs = []
    for _ in range(batch):
        seeds = torch.rand(per_image, 2, generator=gen) * size
        labels = torch.randperm(concepts, generator=gen)[:per_image]
        nearest = ((grid - seeds[None]) ** 2).sum(-1).argmin(1)
        segs.append(labels[nearest].reshape(size, size))
    return torch.stack(segs)


def best_time(fn, repeats, device):
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


class BaselineQuantile:
    """Streaming sorted-sample quantile sketch over upsampled maps (reference-code style)."""

    def __init__(self, units, capacity, device, seed=0):
        self.buffer = torch.empty(units, 0, device=device)
        self.capacity = capacity
        self.weight = 1
        self.gen = torch.Generator(device="cpu").manual_seed(seed)

    def update(self, acts, size):
        up = F.interpolate(acts, size=size, mode="bilinear", align_corners=False)
        values = up.transpose(0, 1).reshape(acts.shape[1], -1)
        # samples already in the buffer carry weight `self.weight`; subsample the batch to match
        if self.weight > 1:
            offset = int(torch.randint(self.weight, (1,), generator=self.gen))
            values = values[:, offset :: self.weight]
        merged = torch.cat([self.buffer, values], 1).sort(1).values
        while merged.shape[1] > self.capacity:
            offset = int(torch.randint(2, (1,), generator=self.gen))
            merged = merged[:, offset::2]
            self.weight *= 2
        self.buffer = merged

    def quantile(self, q):
        index = min(self.buffer.shape[1] - 1, int(q * self.buffer.shape[1]))
        return self.buffer[:, index]


class BaselineIoU:
    """Threshold the upsampled maps, then per concept a boolean-indexed conditional sum."""

    def __init__(self, units, concepts, thresholds, device):
        self.thresholds = thresholds
        self.inter = torch.zeros(units, concepts, dtype=torch.float64, device=device)
        self.area = torch.zeros(units, dtype=torch.float64, device=device)
        self.concept_area = torch.zeros(concepts, dtype=torch.float64, device=device)

    def update(self, acts, seg):
        up = F.interpolate(acts, size=seg.shape[-2:], mode="bilinear", align_corners=False)
        on = (up > self.thresholds[None, :, None, None]).float()
        on = on.transpose(0, 1).reshape(acts.shape[1], -1)
        labels = seg.reshape(-1)
        self.area += on.sum(1)
        for c in torch.unique(labels).tolist():
            mask = labels == c
            self.inter[:, c] += on[:, mask].sum(1)
            self.concept_area[c] += mask.sum()


def thread_counts(spec):
    """Distinct thread counts: numbers, ``default`` (torch's) and ``all`` (every core)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    named = {"default": torch.get_num_threads(), "all": cores}
    counts = []
    for item in spec:
        count = named.get(item) or int(item)
        if count not in counts:
            counts.append(count)
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--size", type=int, default=8, help="activation map side")
    parser.add_argument("--out", type=int, default=64, help="segmentation side")
    parser.add_argument("--concepts", type=int, default=150)
    parser.add_argument("--per-image", type=int, default=16, help="concepts per image")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline-repeats", type=int, default=3)
    parser.add_argument("--capacity", type=int, default=4096, help="baseline samples per unit")
    parser.add_argument("--threads", nargs="+", default=["1", "all"],
                        help="thread counts: numbers, 'default' (torch's) and 'all' (every core)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the reference-style baselines (d)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(args.batch, args.units, args.size, args.size, generator=gen)
    acts = acts.relu().to(device)
    seg = make_segmentation(args.batch, args.out, args.concepts, args.per_image, gen).to(device)
    size = (args.out, args.out)
    distinct = sum(len(torch.unique(s)) for s in seg) / args.batch

    print(f"torch {torch.__version__} | {platform.processor() or platform.machine()} | "
          f"device {device} | {os.cpu_count()} cores | torch default threads {torch.get_num_threads()} | "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"activations {tuple(acts.shape)} -> {size}, {args.concepts} concepts, "
          f"{distinct:.1f} distinct per image; best of {args.repeats}")

    quantiles = UnitQuantiles(args.units, 0.99).to(device)
    quantiles.update(acts, size=size)
    thresholds = quantiles.compute().to(device)
    iou = UnitConceptIoU(args.units, args.concepts, thresholds).to(device)

    summary = []
    for threads in thread_counts(args.threads):
        torch.set_num_threads(threads)
        t_a = best_time(
            lambda: F.interpolate(acts, size=size, mode="bilinear", align_corners=False),
            args.repeats, device,
        )
        t_b = best_time(lambda: quantiles.update(acts, size=size), args.repeats, device)
        t_c = best_time(lambda: iou.update(acts, seg), args.repeats, device)
        rows = [
            ("(a) F.interpolate bilinear", t_a),
            ("(b) UnitQuantiles.update", t_b),
            ("(c) UnitConceptIoU.update", t_c),
        ]
        t_dq = t_di = None
        if not args.no_baseline:
            base_q = BaselineQuantile(args.units, args.capacity, device)
            base_q.update(acts, size)  # warm: the buffer is full from then on
            t_dq = best_time(partial(base_q.update, acts, size), args.baseline_repeats, device)
            base_iou = BaselineIoU(args.units, args.concepts, thresholds, device)
            t_di = best_time(partial(base_iou.update, acts, seg), args.baseline_repeats, device)
            rows += [("(d) baseline quantile pass", t_dq), ("(d) baseline IoU pass", t_di)]
        print(f"\n-- {threads} thread(s) --")
        for name, t in rows:
            print(f"{name:32s} {t * 1e3:10.1f} ms")
        print(f"(b)/(a) = {t_b / t_a:.2f}   (target <= 0.25)")
        print(f"(c)/(a) = {t_c / t_a:.2f}   (target <= 0.25)")
        if t_dq is not None:
            print(f"baseline/ours quantile = {t_dq / t_b:.1f}x   (target >= 5)")
            print(f"baseline/ours IoU      = {t_di / t_c:.1f}x   (target >= 5)")
        summary.append((threads, t_a, t_b, t_c))

    # the baseline's IoU counts against ours (same data, same number of updates)
    ours = UnitConceptIoU(args.units, args.concepts, thresholds).to(device)
    check = BaselineIoU(args.units, args.concepts, thresholds, device)
    ours.update(acts, seg)
    check.update(acts, seg)
    mismatch = int((ours.intersection.double() != check.inter).sum())
    print(f"\nIoU intersection counts differing from the baseline: {mismatch} of "
          f"{ours.intersection.numel()} (float32 rounding of F.interpolate vs ours "
          "at the threshold)")
    print(f"\nsummary (load average {os.getloadavg()[0]:.2f} at the end)")
    print(f"{'threads':>7} {'(a) ms':>9} {'(b) ms':>9} {'(b)/(a)':>8} {'(c) ms':>9} {'(c)/(a)':>8}")
    for threads, t_a, t_b, t_c in summary:
        print(f"{threads:>7} {t_a * 1e3:9.1f} {t_b * 1e3:9.1f} {t_b / t_a:8.2f} {t_c * 1e3:9.1f} {t_c / t_a:8.2f}")


if __name__ == "__main__":
    main()
