"""State size and temporary peak memory of one ``UnitConceptIoU.update``.

Every configuration runs in a fresh subprocess. After one warm-up update, the process's peak
resident set (``VmHWM``) is reset through ``/proc/self/clear_refs`` and one more update runs; the
temporary peak is ``VmHWM - VmRSS`` measured just before that update (Linux only). The
subprocess runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc maps every large tensor
afresh and unmaps it when freed: memory kept from the warm-up would otherwise be reused without
showing in the peak. The activations
are ``(B, U, 16, 16)`` random maps upsampled to ``64 x 64`` random labels.

Usage::

    python benchmarks/bench_memory.py                      # the table of docs/metrics.md
    python benchmarks/bench_memory.py --configs 512,16,2000 --batch-sizes 1 8
    python benchmarks/bench_memory.py --max-temporary-mib 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

MIB = 1 << 20


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(units: int, levels: int, concepts: int, batch: int, budget_mib: float | None) -> dict:
    """One configuration in this process: state bytes and temporary peak bytes of one update."""
    import torch

    from lightning_dissect.metrics import UnitConceptIoU

    torch.manual_seed(0)
    torch.set_num_threads(1)
    thresholds = torch.linspace(-1.5, 1.5, levels).expand(units, levels).contiguous() if levels else torch.zeros(units)
    kwargs = {} if budget_mib is None else {"max_temporary_bytes": int(budget_mib * MIB)}
    metric = UnitConceptIoU(units, concepts, thresholds, validate_args=False, **kwargs)
    acts = torch.randn(batch, units, 16, 16)
    seg = torch.randint(0, concepts, (batch, 64, 64))
    metric.update(acts, seg)  # warm-up: caches, thread pools, allocator
    state = sum(t.numel() * t.element_size() for t in (metric.intersection, metric.unit_area,
                                                        metric.concept_area, metric.total))
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
    before = _status("VmRSS")
    metric.update(acts, seg)
    peak = _status("VmHWM") - before
    return {"U": units, "K": levels, "C": concepts, "B": batch, "state_bytes": state, "peak_bytes": peak}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["512,16,2000", "512,16,500", "512,16,8000", "128,16,2000"],
                   help="U,K,C triples (K=0: one threshold per unit)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    p.add_argument("--max-temporary-mib", type=float, default=None, help="default: the metric's (64 MiB)")
    p.add_argument("--one", type=str, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        u, k, c, b = (int(x) for x in args.one.split(","))
        print(json.dumps(measure(u, k, c, b, args.max_temporary_mib)))
        return []
    rows = []
    print(f"{'U':>5} {'K':>3} {'C':>5} {'B':>3} {'state MiB':>10} {'peak MiB':>9} {'peak/state':>10}")
    for config in args.configs:
        for batch in args.batch_sizes:
            cmd = [sys.executable, __file__, "--one", f"{config},{batch}"]
            if args.max_temporary_mib is not None:
                cmd += ["--max-temporary-mib", str(args.max_temporary_mib)]
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(f"{row['U']:>5} {row['K']:>3} {row['C']:>5} {row['B']:>3} {row['state_bytes'] / MIB:>10.1f} "
                  f"{row['peak_bytes'] / MIB:>9.1f} {row['peak_bytes'] / row['state_bytes']:>10.2f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
