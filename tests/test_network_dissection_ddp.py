"""Network Dissection under DDP: 2 gloo processes give bit-identical results to one process.

7 images do not divide by 2 processes: a ``DistributedSampler`` would pad one shard by repeating
an image. The images are given as such a loader; each rank reads its own exact, disjoint share of
the dataset, so no image is counted twice.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from tests.helpers.ddp import assert_two_processes_equal_one

NUM_IMAGES = 7


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return torch.rand(NUM_IMAGES, 3, 8, 8, generator=gen), torch.randint(0, 4, (NUM_IMAGES, 8, 8), generator=gen)


def run(distributed: bool) -> dict:
    from lightning_dissect import dissect_images
    from tests.test_network_dissection import VOCAB, SmallReader

    images, seg = make_data()
    dataset = TensorDataset(images, seg)
    loader = DataLoader(dataset, batch_size=2)
    if distributed:
        loader = DataLoader(dataset, batch_size=2, sampler=DistributedSampler(dataset, shuffle=False))
        assert len(loader.sampler) * dist.get_world_size() == NUM_IMAGES + 1  # the sampler pads
    result = dissect_images(SmallReader(), ["conv"], loader, vocabulary=VOCAB, batch_size=2, quantile=0.9,
                            num_visualized_units=2, top_k=3, progress=False)
    layer = result["conv"]
    strips = result.unit_images.get("conv", {})  # drawn on rank 0 only
    return {
        "iou": layer.iou,
        "chance_iou": layer.chance_iou,
        # the p-values against chance come from counts per sample group (index mod G): the same too
        "p_value": torch.tensor([u.p_value for u in layer.units], dtype=torch.float64),
        "interpretable": torch.tensor([u.interpretable for u in layer.units]),
        "levels": torch.tensor([u.level for u in layer.units], dtype=torch.float64),
        "top": torch.tensor([[t["index"] for t in u.top_images] for u in layer.units]),
        "strips": torch.stack([strips[u] for u in sorted(strips)]) if strips else torch.zeros(0),
        "world_size": torch.tensor(result.settings["world_size"]),
    }


@pytest.mark.ddp
def test_two_processes_match_one_with_a_padded_sampler(tmp_path, monkeypatch):
    assert_two_processes_equal_one(run, tmp_path, monkeypatch, distributed_args=(True,), single_args=(False,))
