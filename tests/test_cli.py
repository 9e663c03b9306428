"""The ``lightning-dissect`` command line: the success path and one clear line per user error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_dissect.cli import build_parser, main
from lightning_dissect.engine.discovery import find_generator, find_generator_or_self, find_latent_dim
from lightning_dissect.result import DissectionResult
from tests.helpers.painting import make_painting_generator

FACTORY = "tests.helpers.painting:make_painting_generator"
FAST = ["--num-samples", "48", "--batch-size", "24", "--quiet"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_dissect_writes_json_report_and_summary(capsys, tmp_path):
    out_dir = tmp_path / "out"
    code, out, err = run(
        capsys, "dissect", "--generator", FACTORY, "--layers", "layout,canvas",
        "--threshold-mode", "iqr", "--num-levels", "24", "--visualize-units", "2",
        "--top-k", "3", "--output", str(out_dir), "--title", "CLI test", *FAST,
    )
    assert code == 0, err
    assert "layout:" in out and "canvas:" in out and "interpretable units" in out
    result = DissectionResult.from_json(out_dir / "dissect.json")
    assert list(result.layers) == ["layout", "canvas"]
    assert result.settings["threshold_mode"] == "iqr" and result.settings["num_samples"] == 48
    assert result.metadata["generator"] == FACTORY
    assert result.metadata["latent_shape"] == [make_painting_generator().latent_dim]
    assert [u.label for u in result["layout"].units[:3]] == ["tree", "house", "water"]
    html = (out_dir / "index.html").read_text()
    assert "CLI test" in html
    assert len(list((out_dir / "images").rglob("*.png"))) == 4


def test_layers_space_separated_latent_shape_and_no_output(capsys):
    code, out, err = run(
        capsys, "dissect", "--generator", FACTORY, "--layers", "layout", "canvas",
        "--latent-shape", "31", "--quantile", "0.97", "--summary-units", "2", *FAST,
    )
    assert code == 0, err
    assert "layout:" in out and "canvas:" in out


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["dissect", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["dissect"]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.option_strings
            assert action.option_strings[0] in text


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "dissect" in capsys.readouterr().err


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--generator", "no_such_module_xyz:make", "--layers", "a"],
         ["cannot import module 'no_such_module_xyz'"]),
        (["--generator", "tests.helpers.painting:nope", "--layers", "a"],
         ["has no attribute 'nope'"]),
        (["--generator", "tests.helpers.painting", "--layers", "a"], ["module:attribute"]),
        (["--generator", "missing_file.py:make", "--layers", "a"], ["file not found"]),
        (["--generator", "tests.helpers.painting:DEFAULT_CONCEPTS", "--layers", "a"],
         ["is a tuple, not a factory, a module or a class"]),
        (["--generator", "tests.test_cli:not_a_module", "--layers", "a"],
         ["gave a dict, not a torch.nn.Module"]),
        (["--generator", "tests.test_cli:broken_factory", "--layers", "a"],
         ["calling tests.test_cli:broken_factory() failed: RuntimeError: no weights"]),
        (["--generator", FACTORY, "--layers", "layot"],
         ["unknown layer 'layot'", "'layout'", "--layers"]),
        (["--generator", FACTORY, "--layers", "layout", "--checkpoint", "nowhere.ckpt"],
         ["--checkpoint: file not found: nowhere.ckpt"]),
        (["--generator", FACTORY, "--layers", "layout", "--latent-dim", "3"],
         ["dry run failed", "latent shape (3,)", "--latent-dim"]),
        (["--generator", "torch.nn:Identity", "--layers", "x"], ["unknown layer 'x'"]),
        (["--generator", FACTORY, "--layers", "layout", "--segmenter", "json:dumps"],
         ["calling json:dumps() failed"]),
        (["--generator", FACTORY, "--layers", "layout", "--segmenter", "json:JSONDecoder"],
         ["is not a segmenter"]),
    ],
)
def test_errors_are_one_line(capsys, argv, fragments):
    code, _, err = run(capsys, "dissect", *argv, *FAST)
    assert_one_line_error(code, err, *fragments)


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("--quantile", "2", "--quantile must be in (0, 1), got 2.0"),
        ("--num-samples", "2.5", "--num-samples must be an int, got 2.5 (float)"),
        ("--num-samples", "0", "--num-samples must be at least 1, got 0"),
        ("--seed", "a", "--seed must be an int, got 'a' (str)"),
        ("--iqr-threshold", "1.5", "--iqr-threshold must be in [0, 1), got 1.5"),
        ("--min-concept-fraction", "-1", "--min-concept-fraction must be in [0, 1), got -1.0"),
        ("--relative-accuracy", "0", "--relative-accuracy must be in (0, 1), got 0.0"),
        ("--threshold-mode", "max", "--threshold-mode must be one of 'quantile', 'iqr'; got 'max'"),
        ("--visualize-units", "-1", "--visualize-units must be at least 0, got -1"),
        ("--level-selection-samples", "x", "--level-selection-samples must be an int or None, got 'x' (str)"),
    ],
)
def test_config_options_are_checked_by_the_config_rule_before_any_work(capsys, option, value, fragment):
    with pytest.raises(SystemExit) as exit_info:
        main(["dissect", "--generator", FACTORY, "--layers", "layout", option, value])
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err


def test_every_config_field_has_its_option():
    from dataclasses import fields

    from lightning_dissect.cli._prepare import dissection_config
    from lightning_dissect.config import DissectionConfig

    argv = ["dissect", "--generator", FACTORY, "--layers", "layout",
            "--num-samples", "7", "--batch-size", "3", "--seed", "5", "--threshold-mode", "iqr",
            "--quantile", "0.9", "--quantile-over", "raw", "--unit-area", "category", "--preset", "netdissect",
            "--num-levels", "9", "--level-selection-samples", "11", "--iou-threshold", "0.1",
            "--interpretable", "paper", "--chance-ratio", "3", "--min-excess", "0.1", "--max-p-value", "0.05",
            "--chance-groups", "8",
            "--iqr-threshold", "0.2", "--min-concept-fraction", "0.003",
            "--top-k", "4", "--visualize-units", "2", "--no-chance-baseline", "--relative-accuracy", "0.01",
            "--quiet", "--device", "cpu"]
    args = build_parser().parse_args(argv)
    config = dissection_config(args, "cpu", visualize=True)
    expected = DissectionConfig(
        num_samples=7, batch_size=3, seed=5, threshold_mode="iqr", quantile=0.9, quantile_over="raw",
        unit_area="category", preset="netdissect", num_levels=9,
        level_selection_samples=11, iou_threshold=0.1, interpretable="paper", chance_ratio=3.0,
        min_excess=0.1, max_p_value=0.05, chance_groups=8, iqr_threshold=0.2, min_concept_fraction=0.003,
        top_k=4, num_visualized_units=2, chance_baseline=False, relative_accuracy=0.01, progress=False,
        device="cpu",
    )
    assert config == expected
    # every field differs from its default here: each option really sets its field
    assert all(getattr(expected, f.name) != f.default for f in fields(DissectionConfig))


def test_generator_without_latent_size(capsys):
    code, _, err = run(capsys, "dissect", "--generator", "torch.nn:Sequential",
                       "--layers", "x", *FAST)
    assert_one_line_error(code, err, "unknown layer")
    code, _, err = run(
        capsys, "dissect", "--generator", "tests.test_cli:tiny_generator", "--layers", "0", *FAST
    )
    assert_one_line_error(code, err, "cannot tell the latent size", "--latent-dim")


def not_a_module() -> dict:
    return {}


class _WrappedPainter(torch.nn.Module):
    """Like BigGAN's wrapper: it has a `.generator`, but only its own forward takes the latents."""

    def __init__(self) -> None:
        super().__init__()
        from tests.helpers.painting import make_painting_generator

        self.generator = make_painting_generator(latent_dim=64)
        self.latent_dim = 32  # the wrapper widens its latents before calling the inner network

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(torch.cat([z, z], 1))


def wrapped_painter() -> torch.nn.Module:
    return _WrappedPainter()


def broken_factory() -> torch.nn.Module:
    raise RuntimeError("no weights")


def tiny_generator() -> torch.nn.Module:
    """A generator without any latent-size attribute."""
    return torch.nn.Sequential(
        torch.nn.Linear(4, 3 * 8 * 8), torch.nn.Unflatten(1, (3, 8, 8)), torch.nn.Tanh()
    )


def test_plain_module_checkpoint_state_dict(capsys, tmp_path):
    gen = tiny_generator()
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": gen.state_dict()}, path)
    code, out, err = run(
        capsys, "dissect", "--generator", "tests.test_cli:tiny_generator", "--checkpoint",
        str(path), "--layers", "1", "--latent-dim", "4", *FAST,
    )
    assert code == 0, err
    torch.save({"weights": 1}, path)
    code, _, err = run(
        capsys, "dissect", "--generator", "tests.test_cli:tiny_generator", "--checkpoint",
        str(path), "--layers", "1", "--latent-dim", "4", *FAST,
    )
    assert_one_line_error(code, err, "loading the state dict")


def test_lightning_checkpoint_given_with_the_bare_generator_class(capsys, tmp_path):
    class Holder(torch.nn.Module):  # what a LightningModule's checkpoint holds: prefixed keys
        def __init__(self) -> None:
            super().__init__()
            self.generator = tiny_generator()
            self.discriminator = torch.nn.Linear(3, 1)
            self.scale = torch.nn.Parameter(torch.ones(()))

    path = tmp_path / "gan.ckpt"
    torch.save({"state_dict": Holder().state_dict(), "epoch": 3}, path)
    code, _, err = run(
        capsys, "dissect", "--generator", "tests.test_cli:tiny_generator", "--checkpoint",
        str(path), "--layers", "1", "--latent-dim", "4", *FAST,
    )
    assert_one_line_error(code, err, "prefix 'generator.'", "name that LightningModule class in --generator")
    assert "Missing key" not in err and "Unexpected key" not in err and "discriminator.weight" not in err
    # every key under one prefix the generator lacks, although its keys do not all fit
    torch.save({"state_dict": {"net.0.weight": torch.zeros(1)}}, path)
    code, _, err = run(
        capsys, "dissect", "--generator", "tests.test_cli:tiny_generator", "--checkpoint",
        str(path), "--layers", "1", "--latent-dim", "4", *FAST,
    )
    assert_one_line_error(code, err, "every key starts with 'net.'", "LightningModule class")


class Fixed64Segmenter:
    """A segmenter whose head takes 64×64 images only (a flattening linear layer)."""

    def __init__(self) -> None:
        from lightning_dissect import ConceptVocabulary

        self.vocabulary = ConceptVocabulary(("unlabeled", "sky"), ("none", "material"))
        self.value_range = (-1.0, 1.0)
        self.head = torch.nn.Linear(3 * 64 * 64, 2)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(images.flatten(1)).argmax(1)[:, None, None].expand(-1, 64, 64)


def test_segmenter_failure_is_named_with_the_images_it_was_given(capsys):
    code, _, err = run(capsys, "dissect", "--generator", FACTORY, "--layers", "layout",
                       "--segmenter", "tests.test_cli:Fixed64Segmenter", *FAST)
    assert_one_line_error(code, err, "the segmenter (Fixed64Segmenter) failed on the generator's images",
                          "size 32x32 pixels", "values in [", "value_range (-1.0, 1.0)", "mat1 and mat2")
    # the generator ran: no latent layouts were retried, and no latent option is blamed
    assert "attempts" not in err and "latent" not in err


def test_python_dash_m_reports_errors_without_traceback(tmp_path):
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_dissect", "dissect", "--generator", "nope_xyz:g",
         "--layers", "a"],
        capture_output=True, text=True, cwd=root, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: --generator: cannot import module 'nope_xyz'")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_find_generator_and_latent_dim():
    class Holder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.netG = torch.nn.Linear(2, 2)
            self.hparams = {"nz": 7}

    holder = Holder()
    assert find_generator(holder) is holder.netG
    # a plain module is the generator as named, even with a generator-like attribute (BigGAN)
    assert find_generator_or_self(holder) == (holder, None)
    assert find_latent_dim(holder, holder.netG) == 7
    plain = torch.nn.Linear(2, 2)
    assert find_generator_or_self(plain) == (plain, None) and find_latent_dim(plain) is None
    with pytest.raises(ValueError, match="looked for attribute"):
        find_generator(plain)


def test_only_a_lightning_module_is_searched_for_its_generator():
    from lightning.pytorch import LightningModule

    class GAN(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.netG = torch.nn.Linear(2, 2)

    gan = GAN()
    assert find_generator_or_self(gan) == (gan.netG, "netG")


def test_a_plain_module_with_a_generator_attribute_is_dissected_as_named(capsys, tmp_path):
    # BigGAN-like: the wrapper holds `.generator` but its own forward is what takes the latents
    code, out, err = run(capsys, "dissect", "--generator", "tests.test_cli:wrapped_painter", "--layers",
                         "generator.layout", *FAST)
    assert code == 0, err


@pytest.mark.slow
def test_lightning_module_class_with_checkpoint(capsys, tmp_path):
    lightning = pytest.importorskip("lightning")
    from tests.helpers.painting import PaintingGAN

    model = PaintingGAN(latent_dim=40)
    with torch.no_grad():
        model.scale.fill_(3.0)
    path = tmp_path / "gan.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    out_dir = tmp_path / "out"
    code, out, err = run(
        capsys, "dissect", "--generator", "tests.helpers.painting:PaintingGAN", "--checkpoint",
        str(path), "--layers", "layout", "--device", "cpu", "--quantile", "0.97",
        "--output", str(out_dir), "--visualize-units", "0", *FAST,
    )
    assert code == 0, err
    data = json.loads((out_dir / "dissect.json").read_text())
    assert data["metadata"]["latent_shape"] == [40]  # from hparams.latent_dim
    assert data["metadata"]["checkpoint"] == str(path)
    assert data["layers"]["layout"]["units"][0]["label"] == "tree"
    # a broken checkpoint is one line too
    path.write_bytes(b"not a checkpoint")
    code, _, err = run(
        capsys, "dissect", "--generator", "tests.helpers.painting:PaintingGAN", "--checkpoint",
        str(path), "--layers", "layout", *FAST,
    )
    assert_one_line_error(code, err, "PaintingGAN.load_from_checkpoint")


def test_unwritable_output_fails_before_any_work(capsys, tmp_path, monkeypatch):
    calls = []
    import tests.helpers.painting as painting

    original = painting.make_painting_generator
    monkeypatch.setattr(painting, "make_painting_generator", lambda: calls.append(1) or original())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = run(capsys, "dissect", "--generator", FACTORY, "--layers", "layout",
                         "--output", str(blocker / "out"), *FAST)
    assert_one_line_error(code, err, "--output")
    assert not calls, "the generator was built although the output cannot be written"
    assert out == ""


def test_checkpoint_folder_truncated_checkpoint_and_random_weights(capsys, tmp_path):
    code, _, err = run(capsys, "dissect", "--generator", FACTORY, "--layers", "layout",
                       "--checkpoint", str(tmp_path), *FAST)
    assert_one_line_error(code, err, "--checkpoint", "is a directory")
    state = tmp_path / "g.pt"
    torch.save(make_painting_generator().state_dict(), state)
    state.write_bytes(state.read_bytes()[:200])  # a run killed mid-write
    code, _, err = run(capsys, "dissect", "--generator", FACTORY, "--layers", "layout",
                       "--checkpoint", str(state), *FAST)
    assert_one_line_error(code, err, "--checkpoint", "truncated or not a PyTorch checkpoint")
    with pytest.warns(UserWarning, match="without --checkpoint: dissecting freshly initialised"):
        code, _, err = run(capsys, "dissect", "--generator", "tests.helpers.painting:PaintingGAN",
                           "--layers", "layout", "--latent-dim", "40", "--summary-units", "0", *FAST)
    assert code == 0, err


def test_layer_names_prefixed_with_the_generator_attribute(capsys):
    code, out, err = run(capsys, "dissect", "--generator", "tests.helpers.painting:PaintingGAN",
                         "--layers", "generator.layout", "--latent-dim", "40", "--summary-units", "1", *FAST)
    assert code == 0, err
    assert "layout:" in out


def test_ctrl_c_during_dissect_is_one_line_and_status_130(capsys, monkeypatch, tmp_path):
    import lightning_dissect.dissection as engine

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "dissect", interrupted)
    code, _, err = run(capsys, "dissect", "--generator", FACTORY, "--layers", "layout", "--output",
                       str(tmp_path / "out"), *FAST)
    assert code == 130
    assert err.strip().splitlines() == ["interrupted: dissect stopped; nothing half-written was left"]
    assert not (tmp_path / "out" / "dissect.json").exists()


class _RunsCode:
    """A pickled object whose unpickling would write a marker file: a checkpoint must never run it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


@pytest.mark.parametrize("generator", [FACTORY, "tests.helpers.painting:PaintingGAN"])
def test_a_checkpoint_that_would_run_code_is_refused_not_run(capsys, tmp_path, generator):
    from tests.helpers.painting import make_painting_generator

    marker = tmp_path / "ran.txt"
    checkpoint = tmp_path / "evil.ckpt"
    torch.save({"state_dict": make_painting_generator().state_dict(), "extra": _RunsCode(str(marker))}, checkpoint)
    code, _, err = run(capsys, "dissect", "--generator", generator, "--checkpoint", str(checkpoint),
                       "--layers", "layout", *FAST)
    assert code == 2 and "--checkpoint" in err and "loads safely" in err, err
    assert not marker.exists()  # nothing in the file was executed


@pytest.mark.parametrize("preset", ["netdissect", "pnas", "netdissect-level-pnas-convention"])
def test_options_typed_beside_a_preset_win_even_at_their_defaults(preset):
    from lightning_dissect.cli._arguments import CONFIG_OPTIONS
    from lightning_dissect.cli._prepare import dissection_config
    from lightning_dissect.config import CLI_DEFAULTS, PRESETS, config_defaults

    defaults = config_defaults(CLI_DEFAULTS)
    base = ["dissect", "--generator", FACTORY, "--layers", "layout", "--preset", preset]
    untyped = dissection_config(build_parser().parse_args(base), "cpu", visualize=True)
    for name, value in PRESETS[preset].items():
        assert getattr(untyped, name) == value, name  # not typed: the preset's value
        typed = [CONFIG_OPTIONS[name][0], str(defaults[name])]
        config = dissection_config(build_parser().parse_args([*base, *typed]), "cpu", visualize=True)
        assert getattr(config, name) == defaults[name], (name, typed)  # typed at its default: the default
        others = {k: v for k, v in PRESETS[preset].items() if k != name}
        assert {k: getattr(config, k) for k in others} == others  # the rest still from the preset
    # typed before the preset, too
    config = dissection_config(
        build_parser().parse_args([*base[:5], "--quantile", str(defaults["quantile"]), *base[5:]]), "cpu",
        visualize=True,
    )
    assert config.quantile == defaults["quantile"]
