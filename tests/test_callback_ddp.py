"""2-process CPU DDP (gloo, ddp_spawn): the callback's synced result equals one process."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_dissect import DissectionCallback, load_history
from lightning_dissect.dissection import dissect
from lightning_dissect.segmenters import SyntheticSceneSegmenter
from tests.helpers.tiny_gan import TinyGAN, TinyGenerator, scene_loader

LAYERS = ["layer1", "layer2"]


def _release_gloo_process_group() -> pl.Callback:
    """The example's callback that destroys the gloo group after fit() (no abort at exit).

    ``examples/`` stays on ``sys.path``: the spawned workers unpickle the callback by its module.
    """
    examples = str(Path(__file__).resolve().parents[1] / "examples")
    if examples not in sys.path:
        sys.path.append(examples)
    from process_group import ReleaseGlooProcessGroup

    return ReleaseGlooProcessGroup()


class SaveGenerator(pl.Callback):
    def __init__(self, path):
        self.path = str(path)

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            torch.save(pl_module.generator.state_dict(), self.path)
        # inside the spawned process: every rank ran the round and holds the same history
        callback = next(c for c in trainer.callbacks if isinstance(c, DissectionCallback))
        assert len(callback.history) == 1
        assert trainer.world_size == 2


@pytest.mark.ddp
def test_ddp_round_equals_single_process(tmp_path):
    callback = DissectionCallback(
        LAYERS,
        SyntheticSceneSegmenter(16),
        num_samples=64,
        batch_size=16,
        num_visualized_units=2,
        top_k=3,
        ablation_check=False,
    )
    pl.seed_everything(0)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn_find_unused_parameters_true",
        logger=TensorBoardLogger(tmp_path, name="tb", version=0),  # the parent must not pick a new one
        callbacks=[callback, SaveGenerator(tmp_path / "generator.pt"), _release_gloo_process_group()],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(TinyGAN(), scene_loader())
    rounds = load_history(trainer.logger.log_dir)
    assert len(rounds) == 1, "only global rank 0 writes a round file"
    distributed = rounds[0]
    assert distributed.settings["world_size"] == 2

    generator = TinyGenerator(16)
    generator.load_state_dict(torch.load(tmp_path / "generator.pt", weights_only=True))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each spawned process (2 cores / 2 processes)
    try:
        single = dissect(
            generator, LAYERS, SyntheticSceneSegmenter(16), latent_shape=(16,),
            config=callback.config,
        )
    finally:
        torch.set_num_threads(threads)
    a, b = distributed.to_dict(), single.to_dict()
    a["settings"].pop("world_size"), b["settings"].pop("world_size")
    a["metadata"], b["metadata"] = {}, {}
    assert a == b
