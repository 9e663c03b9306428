"""ImageDissectionCallback: a GAN's discriminator (and any image reader) dissected during training."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from lightning_dissect import ImageDissectionCallback
from lightning_dissect.engine.runner import DryRunError
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
from tests.helpers.tiny_gan import TinyGAN, scene_loader

WORLD = SceneWorld(16)


class RecordingGAN(TinyGAN):
    """TinyGAN with a validation step that records every validation batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def validation_step(self, batch, batch_idx):
        self.seen.append(batch[0].sum((1, 2, 3)).clone())


def val_loader() -> DataLoader:
    images, labels = WORLD.render(20, seed=7)
    return DataLoader(TensorDataset(images, labels), batch_size=8, shuffle=False)


def fit(tmp_path, callbacks):
    pl.seed_everything(0)
    model = RecordingGAN()
    trainer = pl.Trainer(
        max_epochs=2, default_root_dir=tmp_path, logger=TensorBoardLogger(tmp_path, name="tb"),
        callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        accelerator="cpu", log_every_n_steps=1, num_sanity_val_steps=0,
    )
    trainer.fit(model, scene_loader(), val_loader())
    return trainer, model


def test_discriminator_rounds_leave_training_and_validation_unchanged(tmp_path):
    fixed_z = torch.randn(12, 16, generator=torch.Generator().manual_seed(3))
    real = ImageDissectionCallback(
        ["0"], network="discriminator", vocabulary=WORLD.vocabulary, value_range=(-1, 1), name="discriminator",
        num_visualized_units=2, top_k=3, quantile=0.9,
    )
    # the same discriminator on images its generator makes at that step, labelled by the segmenter
    fake = ImageDissectionCallback(
        ["0"], SyntheticSceneSegmenter(WORLD), network="discriminator", value_range=(-1, 1),
        images=lambda trainer, module: module.generator(fixed_z.to(module.device)), name="discriminator-fake",
        num_visualized_units=0, quantile=0.9,
    )
    trainer, with_callbacks = fit(tmp_path / "with", [real, fake])
    _, without = fit(tmp_path / "without", [])
    for (name, a), b in zip(with_callbacks.state_dict().items(), without.state_dict().values()):
        assert torch.equal(a, b), name
    assert len(with_callbacks.seen) == len(without.seen) == 2 * 3
    for a, b in zip(with_callbacks.seen, without.seen):
        assert torch.equal(a, b)  # validation batches neither consumed nor reordered
    assert len(real.history) == len(fake.history) == 2
    result = real.last_result
    assert result is not None and result.settings["num_samples"] == 20
    assert fake.last_result is not None and fake.last_result.settings["num_samples"] == 12
    # top images index the validation set; strips are made from its own images
    assert all(0 <= t["index"] < 20 for u in result["0"].units for t in u.top_images)
    assert set(result.unit_images["0"]) and next(iter(result.unit_images["0"].values())).shape[1:] == (3, 16, 16)
    acc = EventAccumulator(trainer.logger.log_dir, size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "dissection-discriminator/0/unit_strips" in tags["images"]
    assert "dissection-discriminator/0/interpretable_units" in tags["scalars"]
    assert any(t.startswith("dissection-discriminator-fake/0/") for t in tags["scalars"])
    assert not any(t.startswith("dissection/") for t in tags["scalars"])


def test_bad_network_and_layer_fail_before_training(tmp_path):
    bad_layer = ImageDissectionCallback(["9"], network="discriminator", vocabulary=WORLD.vocabulary,
                                        value_range=(-1, 1))
    with pytest.raises(ValueError, match="layers"):
        fit(tmp_path, [bad_layer])
    bad_network = ImageDissectionCallback(["0"], network="critic", vocabulary=WORLD.vocabulary, value_range=(-1, 1))
    with pytest.raises(ValueError, match="`network`='critic'"):
        fit(tmp_path, [bad_network])
    wrong_range = ImageDissectionCallback(["0"], network="discriminator", vocabulary=WORLD.vocabulary)
    declared = r"`images` has values in \[-0.\d+, 1\] outside the declared `value_range`=\(0.0, 1.0\)"
    with pytest.raises(DryRunError, match=declared):  # the documented type of a failed check before training
        fit(tmp_path, [wrong_range])


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="either a `segmenter`"):
        ImageDissectionCallback(["0"], SyntheticSceneSegmenter(16), vocabulary=WORLD.vocabulary)
    with pytest.raises(ValueError, match="`max_images`"):
        ImageDissectionCallback(["0"], max_images=0)
