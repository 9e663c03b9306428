"""A token layer under DDP: 2 gloo processes give bit-identical results to one process.

The layout is resolved on every rank from its own first batch; the shapes are the same, so every
rank reads the layer alike, and the counts of its ``D`` units over the patch grid merge exactly.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tests.helpers.ddp import assert_two_processes_equal_one

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


@pytest.mark.ddp
def test_a_token_layer_gives_bit_identical_results_on_two_processes(tmp_path, monkeypatch):
    assert_two_processes_equal_one(run, tmp_path, monkeypatch, distributed_args=(), single_args=())
