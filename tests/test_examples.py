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
    # the end says how long it took and where to look, and the report it names exists
    tail = out[out.index("\ndone in "):]
    assert "where to look:" in tail and "WARNING" not in tail
    log_dir = str(tmp_path / "lightning_logs" / "version_0")
    assert f"tensorboard --logdir {log_dir}" in tail
    assert f"final dissection:  {tmp_path / 'final_dissection.json'}" in tail
    assert f"HTML report:       {tmp_path / 'report' / 'index.html'}" in tail
    assert (tmp_path / "report" / "index.html").is_file() and (tmp_path / "final_dissection.json").is_file()
    assert summary["total_seconds"] >= summary["train_seconds"] > 0

    report_dir = tmp_path / "checkpoint_report"
    result = dissect_checkpoint.main(
        ["--checkpoint", summary["checkpoint"], "--num-samples", "16", "--batch-size", "8",
         "--output", str(report_dir), "--num-visualized-units", "2"]
    )
    assert (report_dir / "index.html").is_file()
    assert set(result.layers) == {"layer1", "layer2", "layer3"}


def test_default_run_is_a_fixed_amount_of_training(examples_path):
    import train_gan

    args = train_gan.parse_args([])
    assert args.max_time is None and args.max_epochs == 10  # the same result on any machine


def test_a_run_cut_short_by_max_time_says_so(tmp_path, examples_path, capsys):
    import train_gan

    summary = train_gan.main(["--smoke", "--max-epochs", "3", "--max-time", "00:00:00:00", "--no-callback",
                              "--no-final-dissection", "--no-progress-bar", "--default-root-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert summary["cut_short"] and summary["epochs"] < 3
    warning = [line for line in out.splitlines() if line.startswith("WARNING: --max-time")]
    assert len(warning) == 1 and "of 3" in warning[0] and "depend on this machine's speed" in warning[0]


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
