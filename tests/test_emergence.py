"""``lightning-dissect emergence`` and ``compare``: a series of checkpoints dissected as the callback would.

The checkpoints are of the hand-built painting generator with its colour table permuted: at each
step the concept painted by each ``layout`` unit is known, so the labels are checked against that
ground truth, not against the code's own output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_dissect import ConceptVocabulary
from lightning_dissect.callbacks.history import load_history, round_path
from lightning_dissect.callbacks.replay import order_checkpoints
from lightning_dissect.cli import main
from lightning_dissect.result import DissectionResult, LayerDissection, UnitDissection
from tests.helpers.painting import make_painting_generator

FACTORY = "tests.helpers.painting:make_painting_generator"
FAST = ["--num-samples", "48", "--batch-size", "24", "--quiet", "--visualize-units", "2", "--top-k", "3",
        "--report-units", "3"]
ROOT = Path(__file__).resolve().parent.parent

# colour-table rows of the painting generator: its three concepts, then the two background ones
TREE, HOUSE, WATER, SKY, GRASS = range(5)
#: step -> the concept each layout unit 0..2 paints (SKY: blends into the background)
SERIES = {10: (SKY, SKY, SKY), 20: (TREE, SKY, SKY), 30: (TREE, HOUSE, WATER), 40: (HOUSE, TREE, WATER)}
NAMES = {TREE: "tree", HOUSE: "house", WATER: "water"}


def write_checkpoint(path: Path, step: int | None, rows=(TREE, HOUSE, WATER), epoch: int | None = None) -> Path:
    state = make_painting_generator().state_dict()
    colours = state["colours"].clone()
    state["colours"] = torch.cat([colours[list(rows)], colours[[SKY, GRASS]]])
    data: dict = {"state_dict": state}
    if step is not None:
        data["global_step"] = step
        data["epoch"] = step // 10 - 1 if epoch is None else epoch
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return path


def emergence(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["emergence", "--generator", FACTORY, "--layers", "layout", "canvas", *FAST, *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpts")
    for step, rows in SERIES.items():
        # names do not sort like the steps: the stored step must order them
        write_checkpoint(folder / f"model-{50 - step}.ckpt", step, rows)
    return folder


# ------------------------------------------------------------------ ordering
def test_order_by_stored_step_then_file_name(tmp_path):
    write_checkpoint(tmp_path / "b.pt", 5)
    write_checkpoint(tmp_path / "a.pt", 20)
    write_checkpoint(tmp_path / "last.ckpt", 20)  # same step as a.pt: a copy, left out
    write_checkpoint(tmp_path / "z.pth", None)  # no stored step: after the others, by name
    write_checkpoint(tmp_path / "c.ckpt", None)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    (tmp_path / "broken.ckpt").write_bytes(b"\x00garbage")
    from lightning_dissect.callbacks.replay import find_checkpoints

    lines: list[str] = []
    ordered = order_checkpoints(find_checkpoints([tmp_path]), report=lines.append)
    assert [(c.path.name, c.global_step, c.stored_step) for c in ordered] == [
        ("b.pt", 5, True), ("a.pt", 20, True), ("c.ckpt", 21, False), ("z.pth", 22, False),
    ]
    assert ordered[0].epoch == -1 + 5 // 10
    assert len(lines) == 2
    assert lines[0].startswith("skipped") and "broken.ckpt" in lines[0] and "\n" not in lines[0]
    assert "last.ckpt" in lines[1] and "same global_step 20 as a.pt" in lines[1]


# ------------------------------------------------------------------ a full run, then resumes
@pytest.fixture(scope="module")
def run_dir(checkpoints, tmp_path_factory) -> Path:
    """The first three checkpoints dissected (plus a corrupt file and one that does not fit)."""
    capsys = None  # module fixtures cannot use capsys: call main directly
    extra = tmp_path_factory.mktemp("extra")
    (extra / "corrupt.ckpt").write_bytes(b"PK\x03\x04 truncated zip")
    torch.save({"state_dict": {"other": torch.zeros(2)}, "global_step": 15}, extra / "foreign.ckpt")
    out = tmp_path_factory.mktemp("run") / "emergence"
    first = [str(p) for p in sorted(checkpoints.iterdir()) if int(p.stem.split("-")[1]) >= 20]  # steps 10-30
    code = main(["emergence", "--generator", FACTORY, "--layers", "layout", "canvas", *FAST,
                 "--checkpoints", *first, str(extra), "--output", str(out)])
    assert code == 0
    del capsys
    return out


def test_rounds_in_step_order_with_metadata_and_ground_truth(run_dir, checkpoints):
    rounds = load_history(run_dir)
    assert [r.metadata["global_step"] for r in rounds] == [10, 20, 30]
    for r in rounds:
        step = r.metadata["global_step"]
        assert r.metadata["epoch"] == step // 10 - 1
        assert Path(r.metadata["checkpoint"]) == (checkpoints / f"model-{50 - step}.ckpt").resolve()
        assert round_path(run_dir, step).is_file()
        assert r.settings["num_samples"] == 48 and r.settings["layers"] == ["layout", "canvas"]
    labels = [[u.label if u.interpretable else "" for u in r["layout"].units[:3]] for r in rounds]
    assert labels[1][0] == "tree" and labels[1][1:] != ["house", "water"]
    assert labels[2] == ["tree", "house", "water"]


def test_same_seed_same_bank_every_round(run_dir):
    rounds = load_history(run_dir)
    # the top images are latent-bank indices: unit 0 paints at the same latents whatever its colour
    tops = [[img["index"] for img in r["layout"].units[0].top_images] for r in rounds[1:]]
    assert tops[0] == tops[1]


def test_corrupt_and_foreign_checkpoints_one_line_each(checkpoints, tmp_path, capsys):
    (tmp_path / "ck").mkdir()
    shutil.copy(checkpoints / "model-20.ckpt", tmp_path / "ck" / "good.ckpt")  # step 30
    (tmp_path / "ck" / "corrupt.ckpt").write_bytes(b"PK\x03\x04 truncated zip")
    torch.save({"state_dict": {"other": torch.zeros(2)}, "global_step": 15}, tmp_path / "ck" / "foreign.ckpt")
    code, out, err = emergence(capsys, "--checkpoints", str(tmp_path / "ck"), "--output", str(tmp_path / "out"),
                               "--no-tensorboard")
    assert code == 0, err
    skipped = [line for line in out.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 2, out
    assert any("corrupt.ckpt" in line and "unreadable" in line for line in skipped)
    assert any("foreign.ckpt" in line for line in skipped)
    assert [r.metadata["global_step"] for r in load_history(tmp_path / "out")] == [30]
    assert not list((tmp_path / "out").glob("events.out.tfevents.*"))


def _scalar_steps(folder: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for file in sorted(folder.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(file), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            steps += [e.step for e in acc.Scalars(tag)]
    return sorted(steps)


def test_resume_skips_done_and_adds_new(run_dir, checkpoints, tmp_path, capsys):
    out = tmp_path / "resumed"
    shutil.copytree(run_dir, out)
    before = {p.name: p.read_bytes() for p in (out / "dissection").iterdir()}
    code, text, err = emergence(capsys, "--checkpoints", str(checkpoints), "--output", str(out))
    assert code == 0, err
    assert sum(line.startswith("skipped") and "already in" in line for line in text.splitlines()) == 3
    assert "1 checkpoint dissected, 3 already done" in text  # one, not "1 checkpoints"
    after = load_history(out)
    assert [r.metadata["global_step"] for r in after] == [10, 20, 30, 40]
    for name, data in before.items():  # earlier rounds untouched
        assert (out / "dissection" / name).read_bytes() == data
    assert [u.label for u in after[-1]["layout"].units[:3]] == ["house", "tree", "water"]
    # appended: one event per step in all the event files together
    assert _scalar_steps(out, "dissection/layout/interpretable_units") == [10, 20, 30, 40]
    assert _scalar_steps(out, "dissection/layout/churn/relabelled") == [20, 30, 40]

    # a checkpoint before the last round: TensorBoard is rebuilt from all rounds
    write_checkpoint(tmp_path / "more" / "mid.ckpt", 25, SERIES[30])
    code, text, err = emergence(capsys, "--checkpoints", str(checkpoints), str(tmp_path / "more"),
                                "--output", str(out))
    assert code == 0, err
    assert [r.metadata["global_step"] for r in load_history(out)] == [10, 20, 25, 30, 40]
    assert _scalar_steps(out, "dissection/layout/interpretable_units") == [10, 20, 25, 30, 40]
    assert not (out / ".tensorboard-rebuild").exists()


def test_resume_with_other_settings_is_one_line_error(run_dir, checkpoints, tmp_path, capsys):
    out = tmp_path / "other"
    shutil.copytree(run_dir, out)
    code = main(["emergence", "--generator", FACTORY, "--layers", "layout", "canvas", "--quiet",
                 "--num-samples", "40", "--batch-size", "20", "--checkpoints", str(checkpoints), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "--output" in err and "num_samples=48" in err


def test_tensorboard_tags_are_the_callbacks(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    # written by hand from the callback's documented tags (docs/callback.md)
    categories = ["material", "object", "part"]  # the scene world's categories but "none"
    concepts = {"tree", "house", "water"}  # labelled a layout unit at some step (ground truth)
    expected_scalars = set()
    for layer in ("layout", "canvas"):
        p = f"dissection/{layer}/"
        expected_scalars |= {p + "interpretable_units", p + "mean_best_iou", p + "concepts_covered"}
        expected_scalars |= {p + f"interpretable/{c}" for c in categories}
        expected_scalars |= {p + f"churn/{k}" for k in ("gained", "lost", "relabelled")}
    expected_scalars |= {f"dissection/layout/units_per_concept/{c}" for c in concepts}
    canvas_concepts = {u.label for r in load_history(run_dir) for u in r["canvas"].units if u.interpretable}
    expected_scalars |= {f"dissection/canvas/units_per_concept/{c}" for c in canvas_concepts}
    assert set(tags["scalars"]) == expected_scalars
    assert set(tags["images"]) == {f"dissection/{layer}/{kind}" for layer in ("layout", "canvas")
                                   for kind in ("unit_strips", "iou_heatmap", "units_by_round")}
    assert set(tags["histograms"]) == {"dissection/layout/best_iou", "dissection/canvas/best_iou"}
    assert set(tags["tensors"]) == {"custom_scalars__config__", "dissection/layout/top_units/text_summary",
                                    "dissection/canvas/top_units/text_summary"}
    assert [e.step for e in acc.Scalars("dissection/layout/interpretable_units")] == [10, 20, 30]
    # ground truth: one tree unit from step 20 on (a concept is logged from its first unit)
    tree = acc.Scalars("dissection/layout/units_per_concept/tree")
    assert [(e.step, e.value) for e in tree] == [(20, 1.0), (30, 1.0)]


def test_emergence_page_written(run_dir):
    html = (run_dir / "emergence.html").read_text()
    assert html.count('class="emergence-chart units-grid"') == 2
    assert 'data-concept="tree"' in html and "data:image/png;base64," in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # self-contained


# ------------------------------------------------------------------ torchrun
@pytest.mark.ddp
def test_two_processes_equal_one(checkpoints, tmp_path):
    files = [str(checkpoints / "model-20.ckpt"), str(checkpoints / "model-10.ckpt")]  # steps 30, 40
    common = ["emergence", "--generator", FACTORY, "--layers", "layout", "canvas", "--quiet",
              "--num-samples", "48", "--batch-size", "12", "--threshold-mode", "iqr", "--num-levels", "16",
              "--device", "cpu", "--no-tensorboard", "--report-units", "0", "--checkpoints", *files]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "lightning_dissect", *common, "--output", str(tmp_path / "one")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
         "-m", "lightning_dissect", *common, "--output", str(tmp_path / "two")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_history(tmp_path / "one"), load_history(tmp_path / "two")
    assert [r.metadata["global_step"] for r in b] == [30, 40]
    assert [r.settings["world_size"] for r in b] == [2, 2]
    for ra, rb in zip(a, b):
        da, db = ra.to_dict(), rb.to_dict()
        for layer in ("layout", "canvas"):
            assert da["layers"][layer]["iou"] == db["layers"][layer]["iou"]
            assert [u["iou"] for u in da["layers"][layer]["units"]] == [u["iou"] for u in db["layers"][layer]["units"]]
    assert two.stdout.count("round 30:") == 1  # only rank 0 writes and reports


# ------------------------------------------------------------------ compare
def _result(layer_units: dict[str, list[tuple[str, bool]]]) -> DissectionResult:
    names = ("unlabeled", "sky", "tree", "house")
    vocab = ConceptVocabulary(names, ("none", "material", "object", "object"))
    layers = {}
    for layer, units in layer_units.items():
        records = [UnitDissection(i, label, names.index(label), vocab.categories[names.index(label)], 0.2, 0.1, 1.0,
                                  on, 0.0) for i, (label, on) in enumerate(units)]
        layers[layer] = LayerDissection(layer, records, torch.zeros(len(units), len(names)))
    return DissectionResult(layers, vocab)


def test_compare_markdown_and_json(tmp_path, capsys):
    a = _result({"l1": [("sky", True), ("tree", True), ("tree", False), ("house", True)]})
    b = _result({"l1": [("sky", True), ("tree", True), ("tree", True), ("sky", True)]})
    a.to_json(tmp_path / "a.json")
    run = tmp_path / "run"  # a folder of rounds: its last round is used
    b.metadata["global_step"] = 9
    b.to_json(round_path(run, 9))
    _result({"l1": [("house", True)] * 4}).to_json(round_path(run, 3))
    code = main(["compare", str(tmp_path / "a.json"), str(run), "--output", str(tmp_path / "cmp.md")])
    out = capsys.readouterr().out
    assert code == 0
    expected = "\n".join([
        "## l1", "",
        "| concept | category | A | B | B - A |",
        "|:---|:---|---:|---:|---:|",
        "| sky | material | 1 | 2 | +1 |",
        "| tree | object | 1 | 2 | +1 |",
        "| house | object | 1 | 0 | -1 |",
        "| **total** | | 3 | 4 | +1 |",
        "",
        "units gained 1, lost 0, relabelled 1 (A -> B)",
    ])
    assert expected in out
    assert expected in (tmp_path / "cmp.md").read_text()
    assert main(["compare", str(tmp_path / "a.json"), str(run), "--output", str(tmp_path / "cmp.json")]) == 0
    data = json.loads((tmp_path / "cmp.json").read_text())["layers"]["l1"]
    assert data["total"] == {"a": 3, "b": 4, "delta": 1}
    assert data["concepts"][2] == {"concept": "house", "category": "object", "a": 1, "b": 0, "delta": -1}
    assert data["gained"] == [2] and data["lost"] == [] and data["relabelled"] == [[3, "house", "sky"]]


def test_compare_layer_on_one_side_is_absent_not_zero(tmp_path, capsys):
    a = _result({"l1": [("sky", True)], "l2": [("tree", True)] * 6})
    b = _result({"l1": [("sky", True)]})
    a.to_json(tmp_path / "a.json")
    b.to_json(tmp_path / "b.json")
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                 "--output", str(tmp_path / "cmp.json")]) == 0
    out = capsys.readouterr().out
    section = out.split("## l2")[1]
    assert "(only in A: absent from B, not zero)" in section
    assert "| tree | object | 6 | absent | – |" in section
    assert "| **total** | | 6 | absent | – |" in section
    assert "-6" not in section and "WARNING" not in out  # same settings: no warning
    total = json.loads((tmp_path / "cmp.json").read_text())["layers"]["l2"]["total"]
    assert total == {"a": 6, "b": None, "delta": None}


def test_compare_warns_when_settings_differ(tmp_path, capsys):
    a = _result({"l1": [("sky", True)]})
    b = _result({"l1": [("sky", True)]})
    a.settings.update(num_samples=512, threshold_mode="iqr", num_levels=16, interpretable="chance_ratio")
    b.settings.update(num_samples=1000, threshold_mode="quantile", num_levels=64, interpretable="paper")
    a.to_json(tmp_path / "a.json")
    b.to_json(tmp_path / "b.json")
    c = _result({"l1": [("sky", True)]})
    c.vocabulary = ConceptVocabulary(("unlabeled", "sky", "tree", "house", "road"),
                                     ("none", "material", "object", "object", "material"))
    c.layers["l1"].iou = torch.zeros(1, 5)
    c.settings.update(a.settings)
    c.to_json(tmp_path / "c.json")
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("WARNING")]
    assert len(lines) == 1 and "not comparable" in lines[0]
    for part in ("num_samples: A 512, B 1000", "threshold_mode: A iqr, B quantile", "num_levels: A 16, B 64",
                 "interpretable: A chance_ratio, B paper"):
        assert part in lines[0]
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "c.json")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("WARNING")]
    assert len(lines) == 1 and "vocabulary: A 4 concepts, B 5 concepts" in lines[0]
    assert "num_samples" not in lines[0]


def test_compare_missing_run_is_one_line_error(tmp_path, capsys):
    code = main(["compare", str(tmp_path / "nope.json"), str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "RUN_A" in err


def test_unwritable_output_fails_before_any_checkpoint_is_read(tmp_path, capsys):
    from lightning_dissect.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["emergence", "--generator", "tests.helpers.painting:make_painting_generator",
                 "--checkpoints", str(tmp_path / "nowhere"), "--layers", "layout",
                 "--output", str(blocker / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--output" in err and "--checkpoints" not in err  # the output is checked first


def test_a_diverged_checkpoint_is_recorded_as_failed_and_the_series_goes_on(tmp_path, capsys):
    folder = tmp_path / "ckpts"
    write_checkpoint(folder / "a.ckpt", 10, (TREE, HOUSE, WATER))
    bad = write_checkpoint(folder / "b.ckpt", 20)
    data = torch.load(bad, weights_only=True)
    data["state_dict"]["colours"] = torch.full_like(data["state_dict"]["colours"], float("nan"))  # diverged
    torch.save(data, bad)
    write_checkpoint(folder / "c.ckpt", 30, (HOUSE, TREE, WATER))
    out = tmp_path / "out"
    code, stdout, err = emergence(capsys, "--checkpoints", str(folder), "--output", str(out), "--no-tensorboard")
    assert code == 0, err
    assert [r.metadata["global_step"] for r in load_history(out)] == [10, 30]  # the rest of the series
    failed = [line for line in stdout.splitlines() if line.startswith("failed")]
    assert len(failed) == 1 and "b.ckpt" in failed[0] and "step 20" in failed[0] and "NaN" in failed[0], stdout
    assert "1 failed" in stdout
    page = (out / "emergence.html").read_text(encoding="utf-8")
    assert "Checkpoints that failed" in page and "b.ckpt" in page and "NaN" in page


def test_a_failed_run_leaves_no_empty_output_folders(tmp_path, capsys):
    (tmp_path / "ckpts").mkdir()
    (tmp_path / "ckpts" / "broken.ckpt").write_bytes(b"\x00garbage")
    out = tmp_path / "fresh" / "out"
    code, _, err = emergence(capsys, "--checkpoints", str(tmp_path / "ckpts"), "--output", str(out))
    assert code == 2 and err.startswith("error: ")
    assert not (tmp_path / "fresh").exists()  # nor the parent it created
