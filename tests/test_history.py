"""``load_history``: round files of named callbacks, resumed runs (``version_*``), broken files."""

from __future__ import annotations

import warnings

import pytest
import torch

from lightning_dissect import ConceptVocabulary
from lightning_dissect.callbacks.history import (
    differing_settings,
    load_history,
    round_file_name,
    round_path,
    round_prefix,
    step_folder_name,
)
from lightning_dissect.result import DissectionResult, LayerDissection, UnitDissection

VOCAB = ConceptVocabulary(("unlabeled", "sky"), ("none", "material"))


def result(step: int, tag: str = "") -> DissectionResult:
    unit = UnitDissection(0, "sky", 1, "material", 0.5, 0.2, 1.0, True, 0.0)
    layer = LayerDissection("conv", [unit], torch.tensor([[0.0, 0.5]]))
    return DissectionResult({"conv": layer}, VOCAB, metadata={"global_step": step, "tag": tag})


def write(log_dir, step, name=None, tag=""):
    path = log_dir / ("dissection" if name is None else f"dissection-{name}") / f"round_{step:08d}.json"
    result(step, tag).to_json(path)
    return path


def steps(rounds):
    return [r.metadata["global_step"] for r in rounds]


def test_round_path_layout(tmp_path):
    assert round_path(tmp_path, 12) == tmp_path / "dissection" / "round_00000012.json"
    assert round_path(tmp_path, 3, "fine") == tmp_path / "dissection-fine" / "round_00000003.json"


def test_missing_directory_raises_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_run"):
        load_history(tmp_path / "no_such_run")
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        load_history(tmp_path / "f")


def test_log_dir_and_rounds_dir_and_empty(tmp_path):
    for step in (20, 5, 10):
        write(tmp_path, step)
    assert steps(load_history(tmp_path)) == [5, 10, 20]
    assert steps(load_history(tmp_path / "dissection")) == [5, 10, 20]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_history(empty) == []


def test_sorted_by_global_step_not_by_file_name(tmp_path):
    # a step beyond 8 digits sorts wrongly by name; the metadata decides
    write(tmp_path, 1_000_000_000)  # round_1000000000.json sorts before round_200000000.json
    write(tmp_path, 200_000_000)
    assert sorted(p.name for p in (tmp_path / "dissection").iterdir())[0] == "round_1000000000.json"
    assert steps(load_history(tmp_path)) == [200_000_000, 1_000_000_000]


def test_truncated_round_is_skipped_with_a_warning(tmp_path):
    write(tmp_path, 1)
    bad = write(tmp_path, 2)
    bad.write_text(bad.read_text()[:40])
    write(tmp_path, 3)
    with pytest.warns(UserWarning, match=r"round_00000002\.json.*skipped"):
        rounds = load_history(tmp_path)
    assert steps(rounds) == [1, 3]
    with pytest.raises(ValueError, match=r"round_00000002\.json"):
        load_history(tmp_path, strict=True)


def test_named_callbacks(tmp_path):
    write(tmp_path, 1)
    write(tmp_path, 1, "coarse")
    write(tmp_path, 2, "coarse")
    write(tmp_path, 4, "fine")
    assert steps(load_history(tmp_path)) == [1]  # without name: the unnamed callback
    assert steps(load_history(tmp_path, name="coarse")) == [1, 2]
    assert steps(load_history(tmp_path, name="fine")) == [4]
    assert steps(load_history(tmp_path / "dissection-coarse")) == [1, 2]
    with pytest.raises(FileNotFoundError, match=r"'other'.*found: \(unnamed\), coarse, fine"):
        load_history(tmp_path, name="other")


def test_several_named_callbacks_without_name_is_an_error(tmp_path):
    write(tmp_path, 1, "coarse")
    write(tmp_path, 1, "fine")
    with pytest.raises(ValueError, match="several named callbacks.*coarse, fine.*name="):
        load_history(tmp_path)
    only = tmp_path / "only"
    write(only, 3, "fine")
    assert steps(load_history(only)) == [3]  # a single named callback is unambiguous


def test_resumed_run_versions_are_merged_latest_version_wins(tmp_path):
    root = tmp_path / "lightning_logs"
    for step in (0, 10, 20):
        write(root / "version_0", step, tag="v0")
    # resumed from the checkpoint at step 10: round 20 is recomputed, then training goes on
    for step in (20, 30):
        write(root / "version_1", step, tag="v1")
    write(root / "version_10", 40, tag="v10")  # numeric, not lexical, version order
    write(root / "version_2", 40, tag="v2")
    rounds = load_history(root)
    assert steps(rounds) == [0, 10, 20, 30, 40]
    assert [r.metadata["tag"] for r in rounds] == ["v0", "v0", "v1", "v1", "v10"]
    # one version alone
    assert steps(load_history(root / "version_0")) == [0, 10, 20]


def test_versions_with_named_callbacks(tmp_path):
    root = tmp_path / "lightning_logs"
    write(root / "version_0", 1, "fine")
    write(root / "version_1", 2, "fine")
    write(root / "version_1", 2, "coarse")
    assert steps(load_history(root, name="fine")) == [1, 2]
    with pytest.raises(ValueError, match="coarse, fine"):
        load_history(root)


def test_no_warning_for_good_files(tmp_path):
    write(tmp_path, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_history(tmp_path)) == 1


def _run_round(step: int, num_samples: int) -> DissectionResult:
    out = result(step)
    out.settings = {"num_samples": num_samples, "seed": 1, "threshold_mode": "quantile", "layers": ["conv"]}
    return out


def test_rounds_of_two_runs_in_one_folder_are_detected_and_selectable(tmp_path):
    folder = tmp_path / "dissection"
    for step in (4, 8, 12):  # an older run with 512 samples
        _run_round(step, 512).to_json(folder / f"round_{step:08d}.json")
    for step in (6, 12, 18):  # a fresh run (pinned logger version) with 64: step 12 overwritten
        _run_round(step, 64).to_json(folder / f"round_{step:08d}.json")
    with pytest.warns(UserWarning, match=r"rounds of 2 runs with different settings: num_samples=512 \(steps 4\.\.8, "
                                         r"2 rounds\); num_samples=64 \(steps 6\.\.18, 3 rounds\)"):
        mixed = load_history(tmp_path)
    assert steps(mixed) == [4, 6, 8, 12, 18]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # selecting a run: no warning
        fresh = load_history(tmp_path, settings={"num_samples": 64})
        older = load_history(tmp_path, settings={"num_samples": 512})
    assert steps(fresh) == [6, 12, 18] and steps(older) == [4, 8]
    with pytest.raises(ValueError, match="may select by"):
        load_history(tmp_path, settings={"colour": "red"})


def test_a_run_of_one_round_is_named_in_the_singular(tmp_path):
    folder = tmp_path / "dissection"
    _run_round(5, 512).to_json(folder / f"round_{5:08d}.json")
    for step in (6, 7):
        _run_round(step, 64).to_json(folder / f"round_{step:08d}.json")
    with pytest.warns(UserWarning) as caught:
        load_history(tmp_path)
    message = str(caught[0].message)
    assert "num_samples=512 (steps 5..5, 1 round);" in message
    assert "num_samples=64 (steps 6..7, 2 rounds)" in message


def test_one_run_gives_no_warning(tmp_path):
    for step in (4, 8):
        _run_round(step, 64).to_json(tmp_path / "dissection" / f"round_{step:08d}.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert steps(load_history(tmp_path)) == [4, 8]


def test_round_file_names_have_one_owner(tmp_path):
    for step in (0, 7, 1200, 12345678):
        assert round_file_name(step) == "round_" + str(step).zfill(8) + ".json"
        assert step_folder_name(step) == "step_" + str(step).zfill(8)
        for name in (None, "ema"):
            folder = "dissection" if name is None else "dissection-" + name
            assert round_prefix(name) == folder
            assert round_path(tmp_path, step, name) == tmp_path / folder / round_file_name(step)


def test_differing_settings_is_the_one_same_run_rule():
    base = {"num_samples": 8, "seed": 0, "threshold_mode": "quantile", "quantile": 0.99, "num_levels": 64,
            "layers": ["a"]}
    assert differing_settings(base, dict(base)) == []
    assert differing_settings(base, {**base, "seed": 1}) == ["seed"]
    assert differing_settings(base, {**base, "seed": 2, "layers": ["b"]}) == ["seed", "layers"]
    # a threshold mode's unused setting does not make another run
    assert differing_settings(base, {**base, "num_levels": 8}) == []
    iqr = {**base, "threshold_mode": "iqr"}
    assert differing_settings(iqr, {**iqr, "quantile": 0.995}) == []
    assert differing_settings(iqr, {**iqr, "num_levels": 8}) == ["num_levels"]
    assert differing_settings(base, iqr) == ["threshold_mode"]
    # a setting one side does not record does not count; keys outside the run settings never do
    assert differing_settings({"seed": 0}, {"num_samples": 3}) == []
    assert differing_settings({**base, "top_k": 5}, {**base, "top_k": 6}) == []
