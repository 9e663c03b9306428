"""Causal unit sets under DDP: the gradient over the sample set is summed across ranks."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_dissect.interventions import causal_units
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
from tests.helpers.painting import CausalPaintingGenerator

SAMPLES = 16


def _payload(rank: int, world_size: int) -> dict:
    world = SceneWorld(32)
    gen = CausalPaintingGenerator(world)
    z = torch.randn(SAMPLES, gen.latent_dim, generator=torch.Generator().manual_seed(2))
    share = SAMPLES // world_size
    iou = torch.linspace(0.1, 0.7, gen.num_units)
    result = causal_units(
        gen, "units", "tree", SyntheticSceneSegmenter(world), z[rank * share : (rank + 1) * share], iou=iou,
        batch_size=4, steps=3, sizes=[1, 3],
    )  # fmt: skip
    return result.to_dict()


def _worker(rank: int, world_size: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        payload = _payload(rank, world_size)
        torch.save(payload, f"{out}.{rank}")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_two_processes_learn_the_same_alpha_as_one(tmp_path, monkeypatch):
    if "GLOO_SOCKET_IFNAME" not in os.environ:
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    out = tmp_path / "result"
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)]
    single = _payload(0, 1)
    assert ranks[0] == ranks[1]  # every rank returns the same result
    two = ranks[0]
    # the per-rank gradients are summed in float64 in another order than one process sums its
    # batches: α agrees to 1e-6 (here bit for bit up to that summation order)
    torch.testing.assert_close(torch.tensor(two["alpha"]), torch.tensor(single["alpha"]), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(two["loss"]), torch.tensor(single["loss"]), rtol=1e-9, atol=1e-12)
    assert two["ranking"] == single["ranking"]
    assert two["comparison"] == single["comparison"]  # the effects are exact counts
    assert two["num_images"] == single["num_images"] == SAMPLES
    assert two["passes_per_image"] == single["passes_per_image"] == 6
