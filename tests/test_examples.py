"""The examples run end to end at tiny settings (the README's main job at full size is manual)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def examples_path():
    sys.path.insert(0, str(EXAMPLES))
    yield
    sys.path.remove(str(EXAMPLES))


def test_train_then_dissect_checkpoint(tmp_path, examples_path, capsys):
    import dissect_checkpoint
    import train_gan

    from lightning_dissect import load_history

    summary = train_gan.main(["--smoke", "--default-root-dir", str(tmp_path), "--no-progress-bar"])
    assert summary["global_step"] == 2 * summary["batches"] > 0
    assert (tmp_path / "samples.png").read_bytes()[:4] == b"\x89PNG"
    assert Path(summary["checkpoint"]).is_file()
    rounds = load_history(tmp_path / "lightning_logs" / "version_0")
    assert len(rounds) == 1 and rounds[0].settings["threshold_mode"] == "iqr"
    out = capsys.readouterr().out
    assert "DissectionCallback rounds" in out and "final dissection" in out
    assert "discriminator rounds (interpretable units over real scenes): epoch 0:" in out
    discriminator = load_history(tmp_path / "lightning_logs" / "version_0", name="discriminator")
    assert len(discriminator) == 1 and discriminator[0].settings["num_samples"] == 16
    assert set(discriminator[0].layers) == {"net.4", "net.7"}

    report_dir = tmp_path / "report"
    result = dissect_checkpoint.main(
        ["--checkpoint", summary["checkpoint"], "--num-samples", "16", "--batch-size", "8",
         "--output", str(report_dir), "--num-visualized-units", "2"]
    )
    assert (report_dir / "index.html").is_file()
    assert set(result.layers) == {"layer1", "layer2", "layer3"}


def test_no_callback_flag(tmp_path, examples_path):
    import train_gan

    args = train_gan.parse_args(["--smoke", "--no-callback"])
    assert train_gan.build_callbacks(args) == []
    args = train_gan.parse_args(["--smoke"])
    callback, discriminator = train_gan.build_callbacks(args)
    assert callback.every_n_epochs == 1
    assert discriminator.name == "discriminator" and discriminator.every_n_epochs == 1


def test_classifier_example_smoke(tmp_path, examples_path, capsys):
    import train_classifier

    summary = train_classifier.main(["--smoke", "--default-root-dir", str(tmp_path), "--no-progress-bar"])
    assert len(summary["history"]) == 1
    assert set(summary["history"][0]["layers"]) == {"layer2", "layer3"}
    out = capsys.readouterr().out
    assert "interpretable units per round: epoch 0:" in out
    from lightning_dissect import load_history

    (round_,) = load_history(tmp_path / "lightning_logs" / "version_0", name="classifier")
    assert round_.settings["num_samples"] == 32
