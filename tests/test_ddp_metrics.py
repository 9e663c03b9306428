"""Two gloo processes on CPU give bit-identical metric results to one process.

One spawned run (two ranks) covers ``UnitConceptIoU`` with ``(U,)`` and ``(U, K)`` thresholds and
``UnitQuantiles``; lightning is deliberately not imported (it is slow to import).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_dissect.metrics import UnitConceptIoU, UnitQuantiles, all_reduce_sum

UNITS, CONCEPTS, SAMPLES = 6, 7, 12
LEVELS = [0.0, 0.5, 0.9, 0.99, 0.995, 1.0]


def make_data():
    gen = torch.Generator().manual_seed(2024)
    acts = torch.randn(SAMPLES, UNITS, 4, 4, generator=gen).relu() * 3
    # unit 0 is 1000x larger in the second half: the processes' quantile histograms are anchored
    # at different scales and must be aligned before they are summed
    acts[SAMPLES // 2 :, 0] *= 1000.0
    seg = torch.randint(0, CONCEPTS, (SAMPLES, 2, 16, 16), generator=gen)
    seg[:, :, :3] = 255
    thresholds = torch.linspace(-0.5, 2.0, UNITS)
    levels = thresholds[:, None] + torch.tensor([0.0, 0.0, 0.25, 1.0])[None]
    return acts, seg, thresholds, levels


def run_metrics(acts, seg, thresholds, levels):
    iou1 = UnitConceptIoU(UNITS, CONCEPTS, thresholds, ignore_index=255)
    iouk = UnitConceptIoU(UNITS, CONCEPTS, levels, ignore_index=255)
    quant = UnitQuantiles(UNITS, LEVELS)
    for start in range(0, acts.shape[0], 2):  # several updates per rank
        a, s = acts[start : start + 2], seg[start : start + 2]
        iou1.update(a, s)
        iouk.update(a, s)
        quant.update(a, size=(16, 16))
    out = {}
    for name, metric in (("iou1", iou1), ("iouk", iouk)):
        out[f"{name}.compute"] = metric.compute()
        counts = metric.counts()
        for field in counts._fields:
            out[f"{name}.{field}"] = getattr(counts, field)
        out[f"{name}.iqr"] = metric.information_quality_ratio()
        out[f"{name}.mi"] = metric.mutual_information()
        out[f"{name}.contingency"] = metric.contingency()
    out["quant.compute"] = quant.compute()
    out["quant.quantile"] = quant.quantile([0.25, 0.75])
    # the local state is left as it was (unsynced) after compute
    out["local_total"] = iou1.total.clone()
    return out


def _worker(rank, world_size, store_path, result_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size
    )
    try:
        # gloo all-reduce of int64 states, as all_reduce_sum does it
        summed = all_reduce_sum(torch.tensor([rank + 1, 2**40], dtype=torch.int64))[0]
        assert summed.tolist() == [3, 2**41], summed
        acts, seg, thresholds, levels = make_data()
        half = SAMPLES // world_size
        part = slice(rank * half, (rank + 1) * half)
        out = run_metrics(acts[part], seg[part], thresholds, levels)
        if rank == 0:
            torch.save(out, result_path)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_ddp_matches_single_process(tmp_path, monkeypatch):
    store, result = tmp_path / "store", tmp_path / "rank0.pt"
    if "GLOO_SOCKET_IFNAME" not in os.environ:
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_worker, args=(2, str(store), str(result)), nprocs=2, join=True)
    distributed = torch.load(result, weights_only=True)
    single = run_metrics(*make_data())
    assert int(distributed["local_total"]) == SAMPLES // 2 * 256  # only this rank's pixels
    assert int(single["iou1.total"]) == int(distributed["iou1.total"]) == SAMPLES * 256
    for key, value in single.items():
        if key == "local_total":
            continue
        other = distributed[key]
        assert other.dtype == value.dtype and other.shape == value.shape, key
        assert torch.equal(other, value), key
    # the data exercise every branch: some overlap, some quantiles > 0
    assert single["iou1.intersection"].sum() > 0
    assert (single["quant.compute"][:, -1] > 0).all()
