"""A token layer under DDP: 2 gloo processes give bit-identical results to one process.

The layout is resolved on every rank from its own first batch; the shapes are the same, so every
rank reads the layer alike, and the counts of its ``D`` units over the patch grid merge exactly.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

NUM_IMAGES = 7


class TinyViT(nn.Module):
    """A patch embedding (patches of 4), a class token in front, one mixing layer: ``blocks`` is ``(B, 1 + 36, 6)``."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.embed = nn.Conv2d(3, 6, 4, stride=4)
        self.mix = nn.Linear(6, 6)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        self.cls = nn.Parameter(torch.randn(1, 1, 6, generator=gen))
        self.blocks = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), patches], 1)
        return self.blocks(torch.relu(self.mix(tokens))).mean(1)


def run() -> dict:
    from lightning_dissect import dissect_images
    from tests.test_layouts import VOCAB

    gen = torch.Generator().manual_seed(5)
    images = torch.rand(NUM_IMAGES, 3, 24, 24, generator=gen)
    seg = torch.randint(0, 4, (NUM_IMAGES, 12, 12), generator=gen)
    result = dissect_images(TinyViT(), ["blocks"], TensorDataset(images, seg), vocabulary=VOCAB, batch_size=2,
                            quantile=0.8, top_k=3, progress=False)
    layer = result["blocks"]
    assert layer.layout == "tokens:prefix=1,grid=6x6" and layer.num_units == 6
    return {
        "iou": layer.iou,
        "chance_iou": layer.chance_iou,
        "levels": torch.tensor([u.level for u in layer.units], dtype=torch.float64),
        "top": torch.tensor([[t["index"] for t in u.top_images] for u in layer.units]),
        "maxact": torch.tensor([[t["maxact"] for t in u.top_images] for u in layer.units], dtype=torch.float64),
        "world_size": torch.tensor(result.settings["world_size"]),
    }


def _worker(rank: int, world_size: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        found = run()
        if rank == 0:
            torch.save(found, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_a_token_layer_gives_bit_identical_results_on_two_processes(tmp_path, monkeypatch):
    store, out = tmp_path / "store", tmp_path / "rank0.pt"
    if "GLOO_SOCKET_IFNAME" not in os.environ:
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_worker, args=(2, str(store), str(out)), nprocs=2, join=True)
    distributed = torch.load(out, weights_only=True)
    single = run()
    assert int(distributed.pop("world_size")) == 2 and int(single.pop("world_size")) == 1
    for key, value in single.items():
        assert torch.equal(distributed[key], value), key
