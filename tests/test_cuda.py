"""What must hold on a GPU (skipped without CUDA; benchmarks/gpu_check.sh runs them on a lent GPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_dissect import dissect
from lightning_dissect.functional.counts import unit_concept_counts
from lightning_dissect.metrics import UnitQuantiles
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _generator() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 32 * 4 * 4), nn.Unflatten(1, (32, 4, 4)), nn.ReLU(),
        nn.Upsample(scale_factor=4), nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(),
        nn.Upsample(scale_factor=2), nn.Conv2d(16, 3, 3, padding=1), nn.Tanh(),
    )


def test_counts_on_cuda_equal_cpu():
    g = torch.Generator().manual_seed(1)
    acts = torch.randn(8, 24, 8, 8, generator=g)
    labels = torch.randint(0, 20, (8, 32, 32), generator=g)
    thresholds = torch.rand(24, 16, generator=g).sort(1).values
    cpu = unit_concept_counts(acts, labels, thresholds, num_concepts=20)
    gpu = unit_concept_counts(acts.cuda(), labels.cuda(), thresholds.cuda(), num_concepts=20)
    for a, b in zip(cpu, gpu):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b).cpu())


def test_quantiles_on_cuda_equal_cpu():
    x = torch.randn(4096, 12, generator=torch.Generator().manual_seed(2))
    cpu, gpu = UnitQuantiles(12, [0.5, 0.99]), UnitQuantiles(12, [0.5, 0.99]).cuda()
    cpu.update(x)
    gpu.update(x.cuda())
    assert torch.equal(cpu.compute(), gpu.compute().cpu())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dissect_on_cuda_matches_cpu(dtype):
    segmenter = SyntheticSceneSegmenter(SceneWorld(32))
    cpu = dissect(_generator(), ["4"], segmenter, latent_shape=(16,), num_samples=64, progress=False)
    gen = _generator().cuda().to(dtype)
    gpu = dissect(gen, ["4"], segmenter, latent_shape=(16,), num_samples=64, progress=False)
    assert gpu.settings["num_samples"] == 64
    if dtype == torch.float32:
        # the same maps up to float rounding: labels agree for (almost) every unit
        same = sum(a.label == b.label for a, b in zip(cpu["4"].units, gpu["4"].units))
        assert same >= 15
        torch.testing.assert_close(gpu["4"].iou, cpu["4"].iou, atol=0.02, rtol=0)
    else:
        assert torch.isfinite(gpu["4"].iou).all()
