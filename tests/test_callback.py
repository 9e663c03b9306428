"""DissectionCallback in single-process training (DDP: tests/test_callback_ddp.py)."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_dissect import AblationCheck, DissectionCallback, DissectionConfig, load_history
from lightning_dissect.engine.runner import DryRunError
from lightning_dissect.segmenters import CallableSegmenter, SyntheticSceneSegmenter
from tests.helpers.tiny_gan import TinyGAN, scene_loader

LAYERS = ["layer1", "layer2"]


def paper_rule_callback(**settings):
    """The papers' fixed cut: a GAN trained an epoch or two has units to ablate under it."""
    config = DissectionConfig(**{
        "num_samples": 32, "batch_size": 16, "num_visualized_units": 3, "top_k": 2, "interpretable": "paper",
        **settings,
    })
    return DissectionCallback(
        LAYERS, SyntheticSceneSegmenter(16), dissection_config=config, ablation=AblationCheck(top_n=4, samples=8)
    )


def make_callback(**kwargs):
    defaults = dict(
        num_samples=32, batch_size=16, num_visualized_units=3, top_k=2, ablation_samples=8,
        ablation_top_n=4,
    )
    defaults.update(kwargs)
    return DissectionCallback(LAYERS, SyntheticSceneSegmenter(16), **defaults)


def fit(tmp_path, callbacks, max_epochs=1, seed=0, ckpt_path=None, model=None, logger=None, **trainer_kwargs):
    pl.seed_everything(seed)
    model = model or TinyGAN()
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        default_root_dir=tmp_path,
        logger=logger if logger is not None else TensorBoardLogger(tmp_path, name="tb"),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        log_every_n_steps=1,
        **trainer_kwargs,
    )
    trainer.fit(model, scene_loader(), ckpt_path=ckpt_path)
    return trainer, model


def test_logs_every_documented_tag(tmp_path):
    callback = paper_rule_callback()  # the ablation tags need a unit that counts
    trainer, _ = fit(tmp_path, [callback], max_epochs=2, enable_checkpointing=False)
    assert len(callback.history) == 2
    assert [e["global_step"] for e in callback.history] == [8, 16]  # 2 optimizer steps per batch
    log_dir = trainer.logger.log_dir
    acc = EventAccumulator(log_dir, size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for layer in LAYERS:
        prefix = f"dissection/{layer}/"
        for image in ("unit_strips", "iou_heatmap", "units_by_round"):
            assert prefix + image in tags["images"]
        assert prefix + "best_iou" in tags["histograms"]
        assert prefix + "top_units/text_summary" in tags["tensors"]
        for scalar in ("interpretable_units", "mean_best_iou", "concepts_covered",
                       "interpretable/object", "interpretable/part", "interpretable/material",
                       "churn/gained", "churn/lost", "churn/relabelled"):
            assert prefix + scalar in tags["scalars"], scalar
        steps = [e.step for e in acc.Scalars(prefix + "interpretable_units")]
        assert steps == [3, 7]  # the `self.log` axis: last batch of epochs 0 and 1
        assert any(t.startswith(prefix + "ablation/") for t in tags["scalars"])
        assert prefix + "ablation/text_summary" in tags["tensors"]
    assert "custom_scalars__config__" in tags["tensors"]
    # the units x rounds picture: one column per round, one 6-pixel row per unit, legend to the right
    last = acc.Images("dissection/layer1/units_by_round")[-1]
    assert last.width > 2 * 24 + 8 and last.height >= 16 * 6  # 2 rounds (wide columns) x 16 units + legend
    # round files, readable with one function, logged numbers match them
    history = load_history(log_dir)
    assert [r.metadata["global_step"] for r in history] == [8, 16]
    logged = acc.Scalars("dissection/layer2/interpretable_units")[-1].value
    assert logged == history[-1]["layer2"].num_interpretable
    assert history[-1].compare(history[0]).gained.keys() == set(LAYERS)


def test_training_is_unchanged_by_the_callback(tmp_path):
    _, without = fit(tmp_path / "a", [], max_epochs=2, enable_checkpointing=False)
    callback = make_callback()
    _, with_cb = fit(tmp_path / "b", [callback], max_epochs=2, enable_checkpointing=False)
    assert len(callback.history) == 2
    for (name, a), (_, b) in zip(without.state_dict().items(), with_cb.state_dict().items()):
        assert torch.equal(a, b), name


def test_resume_continues_history(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = make_callback(ablation_check=False)
    fit(tmp_path, [first, checkpoint], max_epochs=1)
    assert len(first.history) == 1
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert first.state_key in ckpt["callbacks"]
    resumed = make_callback(ablation_check=False)
    fit(tmp_path, [resumed], max_epochs=2, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [e["global_step"] for e in resumed.history] == [8, 16]
    assert resumed.history[0] == first.history[0]


def test_two_callbacks_have_distinct_state_keys():
    a = DissectionCallback(["layer1"], SyntheticSceneSegmenter(16))
    b = DissectionCallback(["layer2"], SyntheticSceneSegmenter(16))
    c = DissectionCallback(["layer1"], SyntheticSceneSegmenter(16), name="other")
    assert len({a.state_key, b.state_key, c.state_key}) == 3


class CountingGAN(TinyGAN):
    steps = 0

    def training_step(self, batch, batch_idx):
        CountingGAN.steps += 1
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(layers=["layer9"]), "unknown layer 'layer9'.*closest existing names: 'layer2', 'layer1'"),
        (dict(generator="netD"), "could not find the generator.*'netD'"),
        (dict(latent_shape=(7,)), "dry run failed"),
        (
            dict(
                segmenter=CallableSegmenter(
                    lambda x: torch.full(x.shape[:1] + x.shape[2:], 99),
                    SyntheticSceneSegmenter(16).vocabulary,
                    validate=False,
                )
            ),
            "outside",
        ),
    ],
)
def test_bad_configuration_fails_at_setup(tmp_path, kwargs, match):
    layers = kwargs.pop("layers", LAYERS)
    segmenter = kwargs.pop("segmenter", SyntheticSceneSegmenter(16))
    callback = DissectionCallback(layers, segmenter, **kwargs)
    CountingGAN.steps = 0
    with pytest.raises(ValueError, match=match) as caught:
        fit(tmp_path, [callback], model=CountingGAN(), enable_checkpointing=False)
    assert CountingGAN.steps == 0  # failed before the first training step
    if "dry run" in match:
        assert isinstance(caught.value, DryRunError)  # the documented type: `except DryRunError` catches it


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(ablation_samples="x"), TypeError, r"`ablation_samples` must be an int, got 'x' \(str\)"),
        (dict(ablation_samples=2.5), TypeError, r"`ablation_samples` must be an int, got 2.5 \(float\)"),
        (dict(ablation_samples=0), ValueError, r"`ablation_samples` must be at least 1"),
        (dict(ablation_top_n=True), TypeError, r"`ablation_top_n` must be an int, got True"),
        (dict(seed="a"), TypeError, r"`seed` must be an int, got 'a' \(str\)"),
        (dict(every_n_epochs=True), TypeError, r"`every_n_epochs` must be an int or None, got True"),
        (dict(every_n_train_steps=1.5), TypeError, r"`every_n_train_steps` must be an int or None"),
        (dict(num_samples=np.float64(8)), TypeError, r"`num_samples` must be an int"),
        (dict(quantile="0.9"), ValueError, r"`quantile` must be a level in \(0, 1\) or one of"),
        (dict(quantile=[0.9]), TypeError, r"`quantile` must be a number"),
        (dict(ablation_check="yes"), TypeError, r"`ablation_check` must be True or False"),
        (dict(name="a/b"), ValueError, r"`name` must be a non-empty name without '/'"),
        (dict(name=3), TypeError, r"`name` must be a string or None"),
        (dict(dissection_config={"iqr_threshold": 2}), ValueError, r"`iqr_threshold` must be in \[0, 1\)"),
        (dict(dissection_config={"progress": 1}), TypeError, r"`progress` must be True or False"),
    ],
)
def test_bad_arguments_are_refused_at_construction_naming_them(kwargs, error, match):
    with pytest.raises(error, match=match):
        DissectionCallback(["layer1"], **kwargs)


def test_numpy_integers_are_counts_like_ints():
    callback = DissectionCallback(["layer1"], num_samples=np.int64(16), seed=np.int32(3), ablation_samples=np.int64(4))
    assert (callback.config.num_samples, callback.config.seed, callback.ablation.samples) == (16, 3, 4)
    assert type(callback.config.num_samples) is int  # plain values: the JSON and checkpoints stay plain


def test_one_schedule_is_enough():
    steps = DissectionCallback(["layer1"], every_n_train_steps=5)
    assert (steps.every_n_epochs, steps.every_n_train_steps) == (None, 5)
    default = DissectionCallback(["layer1"])
    assert (default.every_n_epochs, default.every_n_train_steps) == (1, None)
    with pytest.raises(ValueError, match="set only one of"):
        DissectionCallback(["layer1"], every_n_epochs=2, every_n_train_steps=5)


def test_a_plain_function_segmenter_is_refused_with_the_fix():
    with pytest.raises(TypeError, match=r"`segmenter` is a function without `vocabulary`.*CallableSegmenter"):
        DissectionCallback(["layer1"], lambda images: images[:, 0].long())


def test_bad_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="every_n_epochs"):
        DissectionCallback(["layer1"], every_n_epochs=0, every_n_train_steps=None)
    with pytest.raises(ValueError, match="threshold_mode"):
        DissectionCallback(["layer1"], threshold_mode="median")
    with pytest.raises(ValueError, match="on_error"):
        DissectionCallback(["layer1"], on_error="ignore")


class FlakySegmenter(SyntheticSceneSegmenter):
    """Works for the setup dry run, then fails inside the first dissection round."""

    calls = 0

    def __call__(self, images):
        FlakySegmenter.calls += 1
        if FlakySegmenter.calls > 1:
            raise RuntimeError("segmenter exploded")
        return super().__call__(images)


def test_failed_round_is_reported_and_training_unchanged(tmp_path):
    _, reference = fit(tmp_path / "a", [], max_epochs=1, enable_checkpointing=False)
    FlakySegmenter.calls = 0
    callback = DissectionCallback(LAYERS, FlakySegmenter(16), num_samples=32, batch_size=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, model = fit(tmp_path / "b", [callback], max_epochs=1, enable_checkpointing=False)
    messages = [str(w.message) for w in caught]
    assert any("global_step=8" in m and "segmenter exploded" in m for m in messages)
    assert callback.history == []
    assert model.generator.training  # mode restored
    for a, b in zip(reference.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_every_n_train_steps(tmp_path):
    callback = make_callback(every_n_epochs=None, every_n_train_steps=6, ablation_check=False)
    fit(tmp_path, [callback], max_epochs=1, enable_checkpointing=False)
    assert [e["global_step"] for e in callback.history] == [6]


def test_ablation_check_logs_the_right_numbers(tmp_path):
    from lightning_dissect.engine.latents import LatentBank
    from lightning_dissect.interventions import ablation_check

    callback = paper_rule_callback(num_samples=64, iou_threshold=0.0)  # every unit counts
    trainer, model = fit(tmp_path, [callback], max_epochs=1, enable_checkpointing=False)
    log_dir = trainer.logger.log_dir
    result = load_history(log_dir)[-1]
    latents = LatentBank(callback.ablation.samples, (16,), seed=callback.config.seed + 1000).latents
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    checked = 0
    for layer in LAYERS:
        expected = ablation_check(
            model.generator, result[layer], callback.segmenter, latents, top_n=4, batch_size=16
        )
        assert expected, "the check must cover at least one concept"
        for record in expected:
            for field in ("drop", "relative_drop", "control_drop"):
                tag = f"dissection/{layer}/ablation/{record.concept}/{field}"
                logged = acc.Scalars(tag)[-1].value
                assert logged == pytest.approx(getattr(record, field), abs=1e-6), tag
                checked += 1
    assert checked >= 6


def test_two_named_callbacks_coexist(tmp_path):
    a = make_callback(name="coarse", ablation_check=False)
    b = DissectionCallback(["layer2"], SyntheticSceneSegmenter(16), name="fine", num_samples=32,
                           batch_size=16, num_visualized_units=2, top_k=2, ablation_check=False)
    trainer, _ = fit(tmp_path, [a, b], max_epochs=1, enable_checkpointing=False)
    log_dir = trainer.logger.log_dir
    assert len(a.history) == len(b.history) == 1
    assert len(load_history(f"{log_dir}/dissection-coarse")) == 1
    assert list(load_history(f"{log_dir}/dissection-fine")[0].layers) == ["layer2"]
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert "dissection-coarse/layer1/interpretable_units" in scalars
    assert "dissection-fine/layer2/interpretable_units" in scalars


def test_two_unnamed_callbacks_fail_at_setup(tmp_path):
    with pytest.raises(ValueError, match="distinct `name`s"):
        fit(tmp_path, [make_callback(), DissectionCallback(["layer2"], SyntheticSceneSegmenter(16))],
            enable_checkpointing=False)


class LatentValidationGAN(TinyGAN):
    """A GAN whose validation loader yields latents (as some GAN modules do)."""

    def validation_step(self, batch, batch_idx):
        self.generator(batch[0])

    def val_dataloader(self):
        from torch.utils.data import DataLoader, TensorDataset

        z = torch.randn(24, 16, generator=torch.Generator().manual_seed(7))
        return DataLoader(TensorDataset(z), batch_size=8)


def test_ablation_uses_validation_latents_when_the_loader_yields_them(tmp_path):
    callback = make_callback(ablation_samples=20)
    trainer, model = fit(tmp_path, [callback], model=LatentValidationGAN(), enable_checkpointing=False)
    latents = callback._latents(trainer, callback.ablation.samples)
    expected = torch.randn(24, 16, generator=torch.Generator().manual_seed(7))[:20]
    assert torch.equal(latents, expected)
    # a loader of images (not latents) falls back to the callback's own seeded bank
    fallback = make_callback(ablation_samples=20)
    fallback.latent_shape = (16,)
    own = fallback._latents(type("T", (), {"val_dataloaders": scene_loader()})(), fallback.ablation.samples)
    assert own.shape == (20, 16) and not torch.equal(own, expected)


def test_a_round_file_that_cannot_be_written_keeps_the_round(tmp_path):
    class Blocker(pl.Callback):
        def on_fit_start(self, trainer, pl_module):
            (Path(trainer.logger.log_dir) / "dissection").write_text("a file where the round folder should be")

    callback = make_callback(ablation_check=False)
    with pytest.warns(UserWarning, match=r"could not write the round file .*dissection.*round_00000008\.json"):
        trainer, _ = fit(tmp_path, [Blocker(), callback], max_epochs=2, enable_checkpointing=False)
    logger_dir = trainer.logger.log_dir
    # both rounds computed, kept and logged although neither file could be written
    assert [e["global_step"] for e in callback.history] == [8, 16]
    assert callback.last_result is not None and callback.last_result.metadata["global_step"] == 16
    acc = EventAccumulator(str(logger_dir), size_guidance={"scalars": 0})
    acc.Reload()
    steps = [e.step for e in acc.Scalars("dissection/layer1/interpretable_units")]
    assert steps == [3, 7]


def test_dissection_config_conflicting_with_a_keyword_is_an_error():
    with pytest.raises(ValueError, match="num_samples given both"):
        make_callback(dissection_config={"num_samples": 64})
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['num_sample'\] \(did you mean 'num_samples'\?\)"):
        make_callback(dissection_config={"num_sample": 64})
    callback = make_callback(dissection_config={"level_selection_samples": 16})
    assert callback.config.level_selection_samples == 16 and callback.config.num_samples == 32


# ------------------------------------------------------------------ step axis and sinks
def test_dissection_is_logged_on_the_step_axis_of_self_log(tmp_path):
    # TinyGAN steps two optimizers per batch: global_step advances twice per batch, `self.log` once
    callback = make_callback(ablation_check=False)
    trainer, _ = fit(tmp_path, [callback], max_epochs=2, enable_checkpointing=False)
    acc = EventAccumulator(trainer.logger.log_dir, size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    loss_steps = [e.step for e in acc.Scalars("g_loss")]
    assert loss_steps == list(range(8))  # 4 batches per epoch, one `self.log` step per batch
    # each epoch's round sits on the step of the epoch's last batch, as epoch-end `self.log` values do
    assert [e.step for e in acc.Scalars("dissection/layer1/interpretable_units")] == [3, 7]
    assert [e.step for e in acc.Images("dissection/layer1/iou_heatmap")] == [3, 7]
    # global_step stays in the round's metadata (and names the round files)
    assert [e["global_step"] for e in callback.history] == [8, 16]
    rounds = load_history(trainer.logger.log_dir)
    assert [(r.metadata["global_step"], r.metadata["log_step"]) for r in rounds] == [(8, 3), (16, 7)]


def test_step_rounds_sit_on_their_batch_step(tmp_path):
    callback = make_callback(ablation_check=False, every_n_epochs=None, every_n_train_steps=4)
    trainer, _ = fit(tmp_path, [callback], max_epochs=1, enable_checkpointing=False)
    assert [e["global_step"] for e in callback.history] == [4, 8]  # after batches 1 and 3
    acc = EventAccumulator(trainer.logger.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("dissection/layer1/interpretable_units")] == [1, 3]


class _FullDiskWriter:
    """A SummaryWriter whose disk filled up: every write raises ENOSPC (flushing nothing still works)."""

    def flush(self):
        pass

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise OSError(28, "No space left on device")

        return fail


class FullDiskTensorBoardLogger(TensorBoardLogger):
    """TensorBoard's pictures and Lightning's own finalize fail as on a full disk; scalars still go."""

    @property
    def experiment(self):
        return _FullDiskWriter()

    def log_metrics(self, metrics, step=None):
        self.logged = [*getattr(self, "logged", []), (step, dict(metrics))]

    def log_hyperparams(self, *args, **kwargs):
        pass

    def finalize(self, status):
        raise OSError(28, "No space left on device")


def test_a_failing_tensorboard_writer_costs_only_its_own_writes(tmp_path):
    callback = make_callback(ablation_check=False)
    logger = FullDiskTensorBoardLogger(tmp_path, name="tb")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(OSError, match="No space left"):  # Lightning's own finalize, at the end of fit
            fit(tmp_path, [callback], max_epochs=2, enable_checkpointing=False, logger=logger)
    messages = [str(w.message) for w in caught]
    # the rounds were computed and kept before Lightning's finalize failed
    assert [e["global_step"] for e in callback.history] == [8, 16]
    assert callback.last_result is not None and callback.last_result.metadata["global_step"] == 16
    # ... their files were written (the round folder is on another disk than the event files here)
    assert [r.metadata["global_step"] for r in load_history(logger.log_dir)] == [8, 16]
    # ... the scalars reached the logger, and the warning names the sink that failed
    dissection_steps = [s for s, m in logger.logged if "dissection/layer1/interpretable_units" in m]
    assert dissection_steps == [3, 7]
    failed = [m for m in messages if "could not write the round to FullDiskTensorBoardLogger" in m]
    assert len(failed) == 2 and "No space left on device" in failed[0]


def test_every_sink_fails_alone_and_the_round_still_reaches_history(tmp_path):
    class Blocker(pl.Callback):
        def on_fit_start(self, trainer, pl_module):
            Path(trainer.logger.log_dir).mkdir(parents=True, exist_ok=True)
            (Path(trainer.logger.log_dir) / "dissection").write_text("a file where the round folder should be")

    callback = make_callback(ablation_check=False)
    logger = FullDiskTensorBoardLogger(tmp_path, name="tb")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(OSError, match="No space left"):
            fit(tmp_path, [Blocker(), callback], max_epochs=1, enable_checkpointing=False, logger=logger)
    messages = " ".join(str(w.message) for w in caught)
    assert [e["global_step"] for e in callback.history] == [8]
    assert "the round file" in messages and "FullDiskTensorBoardLogger" in messages
    assert [s for s, m in logger.logged if "dissection/layer1/interpretable_units" in m] == [3]


def test_on_error_raise_reports_a_failed_sink_after_keeping_the_round(tmp_path):
    callback = make_callback(ablation_check=False, on_error="raise")
    logger = FullDiskTensorBoardLogger(tmp_path, name="tb")
    logger.finalize = lambda status: None  # only the round's own failure here
    with pytest.raises(RuntimeError, match="kept in `history`.*FullDiskTensorBoardLogger"):
        fit(tmp_path, [callback], max_epochs=1, enable_checkpointing=False, logger=logger)
    assert [e["global_step"] for e in callback.history] == [8]


def test_csv_logger_gets_round_files_pictures_and_tables_beside_metrics_csv(tmp_path):
    import csv
    import json

    from lightning.pytorch.loggers import CSVLogger
    from PIL import Image

    callback = make_callback(ablation_check=False)
    tb = TensorBoardLogger(tmp_path, name="tb")
    csv_logger = CSVLogger(tmp_path, name="csv")
    fit(tmp_path, [callback], max_epochs=1, enable_checkpointing=False, logger=[tb, csv_logger])
    folder = Path(csv_logger.log_dir)
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    logged = [r for r in rows if r.get("dissection/layer1/interpretable_units")]
    assert [int(r["step"]) for r in logged] == [3]  # the same step as the losses of the epoch's last batch
    assert any(r.get("g_loss") and int(r["step"]) == 3 for r in rows)
    # the round file (also under TensorBoard's folder, where load_history finds it)
    data = json.loads((folder / "dissection" / "round_00000008.json").read_text())
    assert data["metadata"]["global_step"] == 8
    assert (Path(tb.log_dir) / "dissection" / "round_00000008.json").exists()
    step = folder / "dissection" / "step_00000003"
    for layer in LAYERS:
        for kind in ("unit_strips", "iou_heatmap", "units_by_round"):
            with Image.open(step / layer / f"{kind}.png") as img:
                assert img.mode == "RGB" and img.width > 10
        table = list(csv.DictReader(open(step / layer / "top_units.csv")))
        units = {u["unit"]: u for u in data["layers"][layer]["units"]}
        # every row is a unit of the round file, with its label and IoU, none at or below chance
        assert 0 < len(table) <= 3
        for row in table:
            unit = units[int(row["unit"])]
            assert row["concept"] == unit["label"] and abs(float(row["IoU"]) - unit["iou"]) < 1e-6
            assert unit["chance_iou"] is None or unit["iou"] > unit["chance_iou"]
        # interpretable units first, best IoU first within each group
        keys = [(row["interpretable"] != "True", -float(row["IoU"])) for row in table]
        assert keys == sorted(keys)
    # the strips picture is the one TensorBoard shows
    acc = EventAccumulator(tb.log_dir, size_guidance={"images": 0})
    acc.Reload()
    encoded = acc.Images("dissection/layer1/unit_strips")[-1].encoded_image_string
    import io

    with Image.open(io.BytesIO(encoded)) as a, Image.open(step / "layer1" / "unit_strips.png") as b:
        assert a.size == b.size and a.tobytes() == b.convert("RGB").tobytes()


class ScalarsOnlyLogger(pl.loggers.Logger):
    name = "mine"
    version = 0

    def __init__(self):
        super().__init__()
        self.logged = []

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))

    def log_hyperparams(self, *args, **kwargs):
        pass


def test_a_logger_without_a_writer_gets_the_scalars_and_one_warning_naming_it(tmp_path):
    callback = make_callback(ablation_check=False)
    logger = ScalarsOnlyLogger()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path, [callback], max_epochs=2, enable_checkpointing=False, logger=logger)
    named = [str(w.message) for w in caught if "ScalarsOnlyLogger" in str(w.message)]
    assert len(named) == 1 and "scalars only" in named[0] and "pictures" in named[0]
    assert [s for s, m in logger.logged if "dissection/layer2/mean_best_iou" in m] == [3, 7]


def test_num_samples_below_the_world_size_fails_at_fit_start(monkeypatch):
    import lightning_dissect._utils.distributed as distributed

    monkeypatch.setattr(distributed, "world", lambda distributed=True: (0, 64))
    callback = make_callback(num_samples=32, ablation_check=False)
    with pytest.raises(ValueError, match=r"`num_samples`=32 is smaller than the number of processes \(64\)"):
        callback.on_fit_start(None, TinyGAN())


def test_a_rank_that_failed_alone_reports_its_own_error_with_its_rank(monkeypatch):
    """`rank_zero_warn` prints nothing on rank 1: the failing rank must warn itself."""
    from types import SimpleNamespace

    import lightning_dissect.callbacks.generator as module
    from lightning_dissect._utils.distributed import OtherRankError

    callback = make_callback(ablation_check=False)
    callback.segmenter = SyntheticSceneSegmenter(16)
    trainer = SimpleNamespace(global_step=8, current_epoch=0, sanity_checking=False, is_global_zero=False)

    def fails(*args, **kwargs):
        raise RuntimeError("segmenter broke on rank 1")

    import lightning_dissect.callbacks.base as base

    monkeypatch.setattr(module, "dissect", fails)
    monkeypatch.setattr(base, "world", lambda distributed=True: (1, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert callback._round_body(trainer, TinyGAN()) is None
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("[rank 1] DissectionCallback round at global_step=8") and "segmenter broke on rank 1" in m
               for m in messages), messages

    # rank 0 did not fail: its warning names the rank that did
    def other(*args, **kwargs):
        raise OtherRankError("pass 1", [1])

    monkeypatch.setattr(module, "dissect", other)
    monkeypatch.setattr(base, "world", lambda distributed=True: (0, 2))
    trainer.global_step, trainer.is_global_zero = 16, True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callback._round_body(trainer, TinyGAN())
    assert any("pass 1 failed on rank 1" in str(w.message) for w in caught)


def test_fit_start_warns_when_the_round_folder_holds_another_runs_rounds(tmp_path):
    from types import SimpleNamespace

    from lightning_dissect.callbacks.history import round_path
    from lightning_dissect.result import DissectionResult

    trainer = SimpleNamespace(loggers=[], default_root_dir=str(tmp_path), is_global_zero=True)
    callback = make_callback(num_samples=32)
    older = DissectionResult({}, SyntheticSceneSegmenter(16).vocabulary,
                             {"num_samples": 512, "seed": 1, "layers": LAYERS}, {"global_step": 8})
    older.to_json(round_path(tmp_path, 8))
    with pytest.warns(UserWarning, match=r"already holds 1 round\(s\) dissected with other settings \(num_samples: "
                                         r"512 there, 32 now\)"):
        callback._warn_on_foreign_rounds(trainer)
    same = DissectionResult({}, SyntheticSceneSegmenter(16).vocabulary,
                            {"num_samples": 32, "seed": 1, "layers": LAYERS}, {"global_step": 16})
    same.to_json(round_path(tmp_path, 16))  # a resumed run of the same settings: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        callback._warn_on_foreign_rounds(trainer)
