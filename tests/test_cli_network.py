"""``lightning-dissect dissect --network``: a network that reads a folder of images, and torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lightning_dissect import ConceptVocabulary, dissect_images
from lightning_dissect.cli import main
from tests.test_cli import FACTORY, assert_one_line_error, run
from tests.test_network_dissection import painted_images

Image = pytest.importorskip("PIL.Image")  # the `images` extra (installed in CI)
ROOT = Path(__file__).resolve().parents[1]
NETWORK = "tests.test_network_dissection:Painted"


@pytest.fixture()
def folder(tmp_path) -> Path:
    """9 painted 16×16 PNG images, their label maps (one JPEG among them) and the concepts file."""
    images, seg = painted_images(9, size=16, seed=4)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(9):
        pixels = (images[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "images" / f"img{i:02d}.png")
        Image.fromarray(seg[i].numpy().astype(np.uint8), mode="L").save(tmp_path / "labels" / f"img{i:02d}.png")
    (tmp_path / "concepts.txt").write_text("unlabeled\nred\ngreen\nblue\n")
    return tmp_path


def test_network_over_an_image_folder_with_ground_truth(capsys, folder):
    out = folder / "out"
    code, stdout, err = run(
        capsys, "dissect", "--network", NETWORK, "--layers", "units", "--images", str(folder / "images"),
        "--segmentations", str(folder / "labels"), "--concepts", str(folder / "concepts.txt"),
        "--quantile", "0.5", "--visualize-units", "2", "--top-k", "2", "--batch-size", "4", "--quiet",
        "--output", str(out),
    )
    assert code == 0, err
    data = json.loads((out / "dissect.json").read_text())
    layer = data["layers"]["units"]
    for k, name in ((1, "red"), (2, "green"), (3, "blue")):
        unit = layer["units"][k]
        assert unit["label"] == name and unit["iou"] == pytest.approx(1.0) and unit["interpretable"] is True
        assert {"label", "iou", "chance_iou", "level", "interpretable"} <= set(unit)
    assert np.array(layer["iou"]).shape == (4, 4)
    assert data["settings"]["num_samples"] == 9
    assert (out / "index.html").is_file()


def test_network_with_a_segmenter_and_a_transform(capsys, folder):
    code, stdout, err = run(
        capsys, "dissect", "--network", NETWORK, "--layers", "units", "--images", str(folder / "images"),
        "--segmenter", "synthetic", "--image-size", "16", "--transform", "torch:sqrt", "--quiet",
    )
    assert code == 0, err
    assert "units:" in stdout


def test_unreadable_files_warn_or_refuse(capsys, folder):
    (folder / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    argv = ["dissect", "--network", NETWORK, "--layers", "units", "--images", str(folder / "images"), "--quiet",
            "--segmenter", "synthetic", "--image-size", "16", "--summary-units", "0"]
    with pytest.warns(UserWarning, match="skipping unreadable file broken.jpg"):
        assert main(argv) == 0
    capsys.readouterr()
    code, _, err = run(capsys, *argv, "--unreadable", "error")
    assert_one_line_error(code, err, "--images", "unreadable files: broken.jpg")


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        ([], ["--network needs --images"]),
        (["--images", "IMAGES", "--segmentations", "LABELS"], ["--segmentations and --concepts go together"]),
        (["--images", "IMAGES", "--latent-dim", "4"], ["--latent-dim applies to --generator only"]),
        (["--images", "IMAGES", "--generator", FACTORY], ["exactly one of --generator"]),
        (["--images", "IMAGES", "--layers", "nope"], ["--layers"]),
        (["--images", "LABELS", "--segmentations", "LABELS", "--concepts", "CONCEPTS_SHORT"],
         ["--concepts", "one non-empty concept name per line"]),
    ],
)
def test_errors_are_one_line(capsys, folder, extra, fragments):
    (folder / "short.txt").write_text("unlabeled\n")
    swap = {"IMAGES": str(folder / "images"), "LABELS": str(folder / "labels"),
            "CONCEPTS_SHORT": str(folder / "short.txt")}
    extra = [swap.get(a, a) for a in extra]
    argv = ["dissect", "--network", NETWORK, "--layers", "units", *extra]
    if extra.count("--layers") == 1:
        argv = ["dissect", "--network", NETWORK, *extra]
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, *fragments)


def test_labels_outside_the_concepts_are_refused_before_the_passes(capsys, folder):
    Image.fromarray(np.full((16, 16), 7, np.uint8), mode="L").save(folder / "labels" / "img00.png")
    code, _, err = run(
        capsys, "dissect", "--network", NETWORK, "--layers", "units", "--images", str(folder / "images"),
        "--segmentations", str(folder / "labels"), "--concepts", str(folder / "concepts.txt"), "--quiet",
    )
    assert_one_line_error(code, err, "--images segmentation", "outside [0, 4)")


class ReaderModule(L.LightningModule):
    """A LightningModule that reads images: one 3×3 convolution block, its width a hyperparameter."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean((2, 3))


def test_network_lightning_module_class_with_a_checkpoint(capsys, folder):
    torch.manual_seed(3)
    trained = ReaderModule(width=6)  # not the default width: the hyperparameters come from the file
    checkpoint = folder / "reader.ckpt"
    torch.save({"state_dict": trained.state_dict(), "hyper_parameters": dict(trained.hparams),
                "pytorch-lightning_version": L.__version__}, checkpoint)  # Lightning's checkpoint format
    out = folder / "out"
    code, _, err = run(
        capsys, "dissect", "--network", "tests.test_cli_network:ReaderModule", "--checkpoint", str(checkpoint),
        "--layers", "net.1", "--images", str(folder / "images"), "--segmentations", str(folder / "labels"),
        "--concepts", str(folder / "concepts.txt"), "--quantile", "0.8", "--batch-size", "4", "--quiet",
        "--output", str(out),
    )
    assert code == 0, err
    data = json.loads((out / "dissect.json").read_text())
    # reference: the trained module dissected directly, over the same files read with PIL
    names = sorted(p.name for p in (folder / "images").iterdir())
    images = torch.stack([torch.from_numpy(np.array(Image.open(folder / "images" / n).convert("RGB")))
                          .permute(2, 0, 1).float() / 255 for n in names])
    labels = torch.stack([torch.from_numpy(np.array(Image.open(folder / "labels" / n))).long() for n in names])
    vocabulary = ConceptVocabulary(("unlabeled", "red", "green", "blue"), ("none", "concept", "concept", "concept"))
    direct = dissect_images(trained.eval(), ["net.1"], TensorDataset(images, labels), vocabulary=vocabulary,
                            quantile=0.8, batch_size=4, progress=False)["net.1"]
    layer = data["layers"]["net.1"]
    assert layer["num_units"] == 6
    np.testing.assert_allclose(np.array(layer["iou"]), direct.iou.numpy(), rtol=1e-5, atol=1e-6)
    assert [u["label"] for u in layer["units"]] == [u.label for u in direct.units]
    assert [u["level"] for u in layer["units"]] == pytest.approx([u.level for u in direct.units], rel=1e-6)
    assert [u["interpretable"] for u in layer["units"]] == [u.interpretable for u in direct.units]


@pytest.mark.ddp
def test_torchrun_rank_zero_writes_what_one_process_writes(folder, tmp_path):
    """Generators and networks alike: 2 processes write the same dissect.json as 1 (9 images, 9 latents)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    commands = {
        "network": ["--network", NETWORK, "--layers", "units", "--images", str(folder / "images"),
                    "--segmentations", str(folder / "labels"), "--concepts", str(folder / "concepts.txt"),
                    "--quantile", "0.5"],
        "generator": ["--generator", FACTORY, "--layers", "layout", "--num-samples", "9"],
    }
    for kind, argv in commands.items():
        common = ["dissect", *argv, "--batch-size", "2", "--quiet", "--device", "cpu", "--visualize-units", "1"]
        outputs = {}
        for label, launcher in (("one", []), ("two", ["-m", "torch.distributed.run", "--nproc-per-node", "2",
                                                      "--master-port", "29541"])):
            out = tmp_path / f"{kind}-{label}"
            cmd = [sys.executable, *launcher, "-m", "lightning_dissect", *common, "--output", str(out)]
            done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
            assert done.stdout.count("wrote ") == 1  # rank 0 only
            outputs[label] = json.loads((out / "dissect.json").read_text())
        one, two = outputs["one"], outputs["two"]
        assert two["settings"]["world_size"] == 2 and one["settings"]["world_size"] == 1
        for data in (one, two):
            data["settings"].pop("world_size")
        assert one["layers"] == two["layers"], kind
        assert torch.tensor(one["layers"][argv[3]]["iou"]).abs().sum() > 0


def test_the_command_checks_a_run_once_naming_its_options(capsys, folder, monkeypatch):
    """One pre-flight check per run, generator or network; its errors name the options as typed."""
    from lightning_dissect.engine.generator import GeneratorRunner
    from lightning_dissect.engine.reader import ImageRunner

    calls = []
    for runner in (GeneratorRunner, ImageRunner):
        original = runner.preflight

        def counted(self, *args, _original=original, **kwargs):
            calls.append(type(self).__name__)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(runner, "preflight", counted)
    code, _, err = run(capsys, "dissect", "--network", NETWORK, "--layers", "units", "--images",
                       str(folder / "images"), "--segmentations", str(folder / "labels"), "--concepts",
                       str(folder / "concepts.txt"), "--quiet", "--summary-units", "0")
    assert code == 0, err
    code, _, err = run(capsys, "dissect", "--generator", FACTORY, "--layers", "layout", "--num-samples", "4",
                       "--quiet", "--summary-units", "0")
    assert code == 0, err
    assert calls == ["ImageRunner", "GeneratorRunner"]
    # an unknown layer is reported naming the option as typed (passed to the check, not rewritten after it)
    code, _, err = run(capsys, "dissect", "--network", NETWORK, "--layers", "unit", "--images",
                       str(folder / "images"), "--segmentations", str(folder / "labels"), "--concepts",
                       str(folder / "concepts.txt"), "--quiet")
    assert_one_line_error(code, err, "unknown layer 'unit' in --layers; closest existing names: 'units'")
