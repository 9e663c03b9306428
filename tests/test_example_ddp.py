"""The README's example trains in 2 CPU processes (ddp and ddp_spawn) and dissects once at the end.

After ``fit()`` only rank 0 runs the final dissection, with ``distributed=False`` (rank 1 has
returned by then). Its result must equal a plain single-process ``dissect()`` of the checkpointed
final generator. The example destroys its gloo process group when ``fit()`` ends, so that no
worker aborts at interpreter exit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "train_gan.py"


def _single_process_dissection(checkpoint: Path, args: dict):
    """``dissect()`` of the checkpoint's generator in this process, with the example's settings."""
    sys.path.insert(0, str(REPO / "examples"))
    try:
        from gan_model import DCGAN
    finally:
        sys.path.remove(str(REPO / "examples"))
    from lightning_dissect import dissect
    from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter

    model = DCGAN.load_from_checkpoint(str(checkpoint), map_location="cpu")
    return dissect(
        model.generator,
        list(args["dissect_layers"]),
        SyntheticSceneSegmenter(SceneWorld(args["image_size"])),
        latent_shape=(args["latent_dim"],),
        num_samples=args["dissect_samples"],
        batch_size=100,
        threshold_mode="quantile",
        progress=False,
    )


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy", ["ddp_find_unused_parameters_true", "ddp_spawn_find_unused_parameters_true"]
)
def test_example_trains_in_two_processes_and_dissects_on_rank_zero(tmp_path, strategy):
    from lightning_dissect import DissectionResult, load_history

    root = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [
        sys.executable, str(EXAMPLE), "--smoke", "--accelerator", "cpu", "--devices", "2",
        "--strategy", strategy, "--default-root-dir", str(root), "--no-progress-bar",
    ]
    try:
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as error:  # e.g. a rank waiting in a collective forever
        pytest.fail(f"{strategy}: the example did not finish within 240 s\n{error.stdout}\n{error.stderr}")
    assert proc.returncode == 0, f"{strategy}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "final dissection" in proc.stdout

    # the callback's rounds ran on both ranks and rank 0 wrote them
    version = root / "lightning_logs" / "version_0"
    rounds = sorted((version / "dissection").glob("round_*.json"))
    assert rounds, f"no round files under {version / 'dissection'}"
    history = load_history(version)
    assert len(history) == len(rounds) >= 1
    assert history[-1].settings["world_size"] == 2  # the rounds were sharded over both ranks

    # the final dissection ran on rank 0 alone ...
    text = (root / "final_dissection.json").read_text()
    final = DissectionResult.from_json(text)
    assert json.loads(text)["settings"]["world_size"] == 1
    assert final.settings["world_size"] == 1

    # ... and equals an independent single-process dissect() of the final checkpoint
    args = final.metadata["args"]
    expected = _single_process_dissection(version / "checkpoints" / "last.ckpt", args)
    assert expected.settings["world_size"] == 1
    assert list(final.layers) == list(expected.layers) == list(args["dissect_layers"])
    for name, layer in expected.layers.items():
        got = final.layers[name]
        assert [(u.unit, u.label, u.interpretable) for u in got.units] == [
            (u.unit, u.label, u.interpretable) for u in layer.units
        ], name
        torch.testing.assert_close(
            torch.tensor([u.iou for u in got.units]), torch.tensor([u.iou for u in layer.units]),
            rtol=0, atol=1e-6,
        )
        torch.testing.assert_close(got.iou, layer.iou, rtol=0, atol=1e-6)
