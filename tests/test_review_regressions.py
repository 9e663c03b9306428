"""Regressions for review findings: generator noise, RNG isolation, late-built generators, DDP."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_dissect.callbacks.generator import DissectionCallback
from lightning_dissect.dissection import dissect
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
from tests.helpers.tiny_gan import TinyGAN, TinyGenerator, scene_loader

WORLD = SceneWorld(16)


class NoisyPainter(nn.Module):
    """Unit 0 is random noise drawn in forward; the image is sky where it is on, grass elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.layout = nn.Identity()
        self.register_buffer("sky", WORLD.palette[WORLD.vocabulary.index("sky")].view(1, 3, 1, 1))
        self.register_buffer("grass", WORLD.palette[WORLD.vocabulary.index("grass")].view(1, 3, 1, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        noise = (torch.rand(z.shape[0], 1, 4, 4) > 0.5).float() + 0 * z[:, :1, None, None]
        maps = self.layout(noise)
        on = F.interpolate(maps, size=16, mode="bilinear", align_corners=False) > 0.5
        return torch.where(on, self.sky, self.grass)


def test_generator_noise_is_the_same_in_both_passes_and_global_rng_is_untouched():
    before = torch.get_rng_state()
    result = dissect(NoisyPainter(), ["layout"], SyntheticSceneSegmenter(WORLD), latent_shape=(2,),
                     num_samples=32, batch_size=8, threshold_mode="iqr", num_levels=64,
                     progress=False)
    assert torch.equal(before, torch.get_rng_state())
    unit = result["layout"].units[0]
    # if pass 2 drew other noise than pass 1, activations would meet another image's labels
    assert unit.label == "sky" and unit.iou > 0.95
    assert unit.chance_iou < 0.6


class LatentValidationGAN(TinyGAN):
    def validation_step(self, batch, batch_idx):
        self.generator(batch[0])

    def val_dataloader(self):
        from torch.utils.data import DataLoader, TensorDataset

        z = torch.randn(24, 16, generator=torch.Generator().manual_seed(7))
        return DataLoader(TensorDataset(z), batch_size=8)


def _fit(tmp_path, callbacks, model_class):
    pl.seed_everything(0)
    model = model_class()  # built after seeding: same initial weights in every run
    trainer = pl.Trainer(max_epochs=2, default_root_dir=tmp_path, logger=False, callbacks=callbacks,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         enable_checkpointing=False)
    trainer.fit(model, scene_loader())
    return model


def test_ablation_on_validation_latents_leaves_training_unchanged(tmp_path):
    reference = _fit(tmp_path / "a", [], LatentValidationGAN)
    callback = DissectionCallback(["layer1", "layer2"], SyntheticSceneSegmenter(16), num_samples=32,
                                  batch_size=16, num_visualized_units=2, top_k=2, ablation_samples=16,
                                  ablation_top_n=4, iou_threshold=0.0)
    model = _fit(tmp_path / "b", [callback], LatentValidationGAN)
    assert len(callback.history) == 2 and callback.last_ablations
    for a, b in zip(reference.parameters(), model.parameters()):
        assert torch.equal(a, b)


class LateGAN(TinyGAN):
    """Builds its generator in configure_model, as Lightning recommends for large models."""

    def __init__(self):
        super().__init__()
        del self.generator

    def configure_model(self):
        if not hasattr(self, "generator"):
            self.generator = TinyGenerator(16)

    def configure_optimizers(self):
        return super().configure_optimizers()


def test_generator_built_in_configure_model_is_found(tmp_path):
    callback = DissectionCallback(["layer1"], SyntheticSceneSegmenter(16), num_samples=16,
                                  batch_size=16, ablation_check=False, num_visualized_units=0)
    pl.seed_everything(0)
    trainer = pl.Trainer(max_epochs=1, default_root_dir=tmp_path, logger=False, callbacks=[callback],
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         enable_checkpointing=False)
    trainer.fit(LateGAN(), scene_loader())
    assert len(callback.history) == 1


def _ddp_worker(rank, world, path, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    out = {}
    try:
        gen = TinyGenerator(16)
        gen.load_state_dict(torch.load(results + ".gen", weights_only=True))
        seg = SyntheticSceneSegmenter(16)
        # uneven shards smaller than top_k (3 samples over 2 ranks, top_k = 2 > 1 sample on rank 1)
        r = dissect(gen, ["layer1"], seg, latent_shape=(16,), num_samples=3, batch_size=2, top_k=2,
                    progress=False)
        out["uneven"] = r.to_dict()
        # unit strips: rank 0 draws them from the frames every rank kept in pass 2, no regeneration
        calls = []
        handle = gen.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
        strips = dissect(gen, ["layer1"], seg, latent_shape=(16,), num_samples=8, batch_size=2, top_k=2,
                         num_visualized_units=2, progress=False)
        handle.remove()
        out["strips"] = {u: t.clone() for u, t in strips.unit_images.get("layer1", {}).items()}
        out["strip_calls"] = calls
        try:
            dissect(gen, ["layer1"], seg, latent_shape=(16,), num_samples=1, progress=False)
        except ValueError as err:
            out["too_few"] = str(err)

        class FailsOnRank1(SyntheticSceneSegmenter):
            def __call__(self, images):
                if dist.get_rank() == 1:
                    raise RuntimeError("segmenter broke on rank 1")
                return super().__call__(images)

        try:
            dissect(gen, ["layer1"], FailsOnRank1(16), latent_shape=(16,), num_samples=8,
                    progress=False)
        except RuntimeError as err:
            out["failure"] = str(err)
    finally:
        if rank == 0:
            torch.save(out, results + ".rank0")
        else:
            torch.save(out, results + ".rank1")
        dist.destroy_process_group()


@pytest.mark.ddp
def test_ddp_uneven_shards_too_few_samples_and_one_failing_rank(tmp_path):
    gen = TinyGenerator(16)
    results = str(tmp_path / "out")
    torch.save(gen.state_dict(), results + ".gen")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), results), nprocs=2)
    rank0 = torch.load(results + ".rank0", weights_only=False)
    rank1 = torch.load(results + ".rank1", weights_only=False)
    single = dissect(gen, ["layer1"], SyntheticSceneSegmenter(16), latent_shape=(16,), num_samples=3,
                     batch_size=2, top_k=2, progress=False).to_dict()
    for out in (rank0, rank1):
        out["uneven"]["settings"].pop("world_size")
        assert "smaller than the number of processes" in out["too_few"]
    single["settings"].pop("world_size")
    assert rank0["uneven"]["layers"] == single["layers"]
    assert rank1["uneven"]["layers"] == single["layers"]
    assert "segmenter broke on rank 1" in rank1["failure"]
    assert "failed on rank 1" in rank0["failure"]
    # the strips of a sharded dissection: the dry run (2 latents), then pass 1's 2 batches of 2 on
    # each rank (pass 2 takes them from the runner's batch cache), nothing more; and the same
    # pictures as one process draws
    assert rank0["strip_calls"] == rank1["strip_calls"] == [2, 2, 2]
    assert rank1["strips"] == {}
    alone = dissect(gen, ["layer1"], SyntheticSceneSegmenter(16), latent_shape=(16,), num_samples=8,
                    batch_size=2, top_k=2, num_visualized_units=2, progress=False).unit_images["layer1"]
    assert set(rank0["strips"]) == set(alone) and len(alone) == 2
    for unit, strip in alone.items():
        assert torch.equal(rank0["strips"][unit], strip), unit
