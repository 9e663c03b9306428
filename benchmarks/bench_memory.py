"""State size and temporary peak memory of one ``UnitConceptIoU.update``.

Every configuration runs in a fresh subprocess. After one warm-up update, the process's peak
resident set (``VmHWM``) is reset through ``/proc/self/clear_refs`` and one more update runs; the
temporary peak is ``VmHWM - VmRSS`` measured just before that update (Linux only). The
subprocess runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc maps every large tensor
afresh and unmaps it when freed: memory kept from the warm-up would otherwise be reused without
showing in the peak. The activations
are ``(B, U, 16, 16)`` random maps upsampled to ``64 x 64`` random labels.

Two more measurements, each in a fresh subprocess too (``--part resident compute``):

* *resident*: the resident-set growth of constructing ``UnitQuantiles(U)`` against the size of its
  states (TorchMetrics keeps a copy of every state's initial value; a sum state keeps a 0-d one);
* *compute*: the temporary peak of ``UnitConceptIoU(U, C, (U, K) thresholds).compute()`` against
  the state size (the IoU of every level is a float tensor the size of the counts, plus temporaries).

Usage::

    python benchmarks/bench_memory.py                      # every table of docs/metrics.md
    python benchmarks/bench_memory.py --part resident compute
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


def measure_resident(units: int) -> dict:
    """Resident-set growth of constructing ``UnitQuantiles(units)`` (after a warm-up metric)."""
    import torch

    from lightning_dissect.metrics import UnitQuantiles

    torch.set_num_threads(1)
    UnitQuantiles(1)  # warm-up: imports, allocator
    before = _status("VmRSS")
    metric = UnitQuantiles(units)
    grown = _status("VmRSS") - before
    state = sum(t.numel() * t.element_size() for t in (metric.histogram, metric.overflow))
    return {"U": units, "state_bytes": state, "resident_bytes": grown}


def measure_compute(units: int, levels: int, concepts: int) -> dict:
    """Temporary peak of ``UnitConceptIoU.compute()`` with ``(units, levels)`` thresholds."""
    import torch

    from lightning_dissect.metrics import UnitConceptIoU

    torch.manual_seed(0)
    torch.set_num_threads(1)
    thresholds = torch.linspace(-1.5, 1.5, levels).expand(units, levels).contiguous()
    metric = UnitConceptIoU(units, concepts, thresholds, validate_args=False)
    metric.update(torch.randn(1, units, 16, 16), torch.randint(0, concepts, (1, 64, 64)))
    state = sum(t.numel() * t.element_size() for t in (metric.intersection, metric.unit_area,
                                                        metric.concept_area, metric.total))
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    result = metric.compute()
    peak = _status("VmHWM") - before
    return {"U": units, "K": levels, "C": concepts, "state_bytes": state, "peak_bytes": peak,
            "result_bytes": result.numel() * result.element_size()}


def _subprocess(*args: str) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["512,16,2000", "512,16,500", "512,16,8000", "128,16,2000"],
                   help="U,K,C triples (K=0: one threshold per unit)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    p.add_argument("--max-temporary-mib", type=float, default=None, help="default: the metric's (64 MiB)")
    p.add_argument("--part", nargs="+", choices=("update", "resident", "compute"),
                   default=["update", "resident", "compute"], help="which tables to measure")
    p.add_argument("--resident-units", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--compute-configs", nargs="+", default=["2048,16,200", "512,16,200"], help="U,K,C triples")
    p.add_argument("--one", type=str, default=None, help=argparse.SUPPRESS)
    p.add_argument("--one-resident", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--one-compute", type=str, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        u, k, c, b = (int(x) for x in args.one.split(","))
        print(json.dumps(measure(u, k, c, b, args.max_temporary_mib)))
        return []
    if args.one_resident:
        print(json.dumps(measure_resident(args.one_resident)))
        return []
    if args.one_compute:
        u, k, c = (int(x) for x in args.one_compute.split(","))
        print(json.dumps(measure_compute(u, k, c)))
        return []
    rows = []
    if "resident" in args.part:
        print(f"{'UnitQuantiles U':>15} {'state MiB':>10} {'resident MiB':>13} {'resident/state':>15}")
        for units in args.resident_units:
            row = _subprocess("--one-resident", str(units))
            rows.append(row)
            print(f"{row['U']:>15} {row['state_bytes'] / MIB:>10.1f} {row['resident_bytes'] / MIB:>13.1f} "
                  f"{row['resident_bytes'] / row['state_bytes']:>15.2f}", flush=True)
    if "compute" in args.part:
        print(f"{'U':>5} {'K':>3} {'C':>5} {'state MiB':>10} {'compute peak MiB':>17} {'peak/state':>10}")
        for config in args.compute_configs:
            row = _subprocess("--one-compute", config)
            rows.append(row)
            print(f"{row['U']:>5} {row['K']:>3} {row['C']:>5} {row['state_bytes'] / MIB:>10.1f} "
                  f"{row['peak_bytes'] / MIB:>17.1f} {row['peak_bytes'] / row['state_bytes']:>10.2f}", flush=True)
    if "update" not in args.part:
        return rows
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
