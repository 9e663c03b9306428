"""Atomic writes, output-path checks, and the errors of ``DissectionResult.from_json``/``from_dict``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from lightning_dissect import ConceptVocabulary
from lightning_dissect._utils.io import atomic_write_text, check_writable_output
from lightning_dissect.result import DissectionResult, LayerDissection, UnitDissection

VOCAB = ConceptVocabulary(("unlabeled", "sky", "tree"), ("none", "material", "object"))


def make() -> DissectionResult:
    units = [
        UnitDissection(0, "sky", 1, "material", 0.3, 0.2, 1.5, True, 0.02, [{"index": 3, "maxact": 2.0}]),
        UnitDissection(1, "tree", 2, "object", 0.01, 0.0, 0.5, False, None),
    ]
    iou = torch.tensor([[0.0, 0.3, 0.1], [0.0, 0.005, 0.01]])
    return DissectionResult({"conv": LayerDissection("conv", units, iou)}, VOCAB,
                            settings={"iou_threshold": 0.04}, metadata={"global_step": 7})


# ---------------------------------------------------------------------------- _io
def test_atomic_write_replaces_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "a" / "b.json"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["b.json"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "b.json"
    target.write_text("old")

    with pytest.raises(TypeError):
        atomic_write_text(target, 123)  # type: ignore[arg-type]  # write() of an int fails
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]


def test_check_writable_output_errors_name_the_argument(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=r"^`--output` .* is a file, not a directory$"):
        check_writable_output(a_file / "sub" / "out.json", "--output")
    with pytest.raises(ValueError, match=r"^`path` .* is a directory, expected a file path$"):
        check_writable_output(tmp_path, "path")
    with pytest.raises(ValueError, match="`directory`.*is a file"):
        check_writable_output(a_file, "directory", directory=True)
    made = check_writable_output(tmp_path / "x" / "y" / "out.json", "path")
    assert made.parent.is_dir() and not made.exists()
    assert check_writable_output(tmp_path / "new", "directory", directory=True).is_dir()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_check_writable_output_without_permission(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="`path`.*no write permission"):
            check_writable_output(locked / "out.json", "path")
    finally:
        locked.chmod(0o700)


def test_to_json_writes_atomically_and_checks_the_path(tmp_path):
    result = make()
    path = tmp_path / "deep" / "r.json"
    text = result.to_json(path)
    assert path.read_text() == text
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]
    with pytest.raises(ValueError, match="`path`.*is a directory"):
        result.to_json(tmp_path)


# ---------------------------------------------------------------------------- from_json errors
def test_corrupt_file_error_names_the_file(tmp_path):
    path = tmp_path / "round_00000010.json"
    path.write_text(make().to_json()[:57])  # truncated mid-way
    with pytest.raises(ValueError, match=r"round_00000010\.json: corrupt or truncated JSON"):
        DissectionResult.from_json(path)
    with pytest.raises(ValueError, match="round_00000010.json"):
        DissectionResult.from_json(str(path))
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=r"bin\.json: not a text file"):
        DissectionResult.from_json(tmp_path / "bin.json")


def test_invalid_json_text():
    with pytest.raises(ValueError, match="invalid JSON text"):
        DissectionResult.from_json('{"layers": ')


def test_gandissect_layout_is_explained(tmp_path):
    gandissect = {"layers": [{"layer": "layer4", "units": [{"unit": 0, "label": "tree"}]}],
                  "vocabulary": {"names": ["-", "tree"], "categories": ["none", "object"]}}
    path = tmp_path / "dissect.json"
    path.write_text(json.dumps(gandissect))
    with pytest.raises(ValueError, match=r"dissect\.json: `layers` is a list .*gandissect"):
        DissectionResult.from_json(path)


@pytest.mark.parametrize("missing", ["vocabulary", "layers"])
def test_missing_top_level_section(missing):
    data = make().to_dict()
    del data[missing]
    with pytest.raises(ValueError, match=f"required key `{missing}` is missing"):
        DissectionResult.from_dict(data)


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        (("layers", "conv", "units"), r"`layers\['conv'\]` misses the required key `units`"),
        (("layers", "conv", "iou"), r"`layers\['conv'\]` misses the required key `iou`"),
        (("layers", "conv", "units", 1, "level"), r"`layers\['conv'\]\.units\[1\]` misses the key\(s\) level"),
        (("vocabulary", "names"), r"`vocabulary` misses the key 'names'"),
    ],
)
def test_missing_nested_keys_are_value_errors_naming_the_key(drop, message):
    data = json.loads(make().to_json())
    node = data
    for key in drop[:-1]:
        node = node[key]
    del node[drop[-1]]
    with pytest.raises(ValueError, match=message):
        DissectionResult.from_dict(data)


def test_a_dict_is_accepted_by_from_json():
    data = make().to_dict()
    assert DissectionResult.from_json(data).to_dict() == DissectionResult.from_dict(data).to_dict()


def test_neither_json_nor_an_existing_path(tmp_path):
    with pytest.raises(ValueError, match="neither JSON text .* nor an existing file"):
        DissectionResult.from_json("not json at all")
    with pytest.raises(ValueError, match="nothing.json.*neither JSON text"):
        DissectionResult.from_json(tmp_path / "nothing.json")
    with pytest.raises(ValueError, match="expects JSON text or a file path, got int"):
        DissectionResult.from_json(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is a directory"):
        DissectionResult.from_json(tmp_path)
    with pytest.raises(ValueError, match="must be a JSON object, got list"):
        DissectionResult.from_json("[1, 2]")


def test_unknown_extra_fields_are_tolerated():
    data = make().to_dict()
    data["written_by"] = "a newer release"
    data["layers"]["conv"]["extra_statistic"] = [1, 2]
    for unit in data["layers"]["conv"]["units"]:
        unit["new_field"] = 0.5
    loaded = DissectionResult.from_dict(data)
    assert loaded.to_dict() == make().to_dict()
    assert loaded["conv"].units[0].label == "sky" and loaded["conv"].units[0].iou == 0.3


def test_iou_width_must_match_the_vocabulary():
    data = make().to_dict()
    data["layers"]["conv"]["iou"] = [row[:2] for row in data["layers"]["conv"]["iou"]]
    with pytest.raises(ValueError, match=r"`layers\['conv'\]\.iou` has 2 columns but the vocabulary has 3"):
        DissectionResult.from_dict(data)
    data = make().to_dict()
    data["layers"]["conv"]["chance_iou"] = [[0.0] * 4, [0.0] * 4]
    with pytest.raises(ValueError, match=r"chance_iou` has 4 columns"):
        DissectionResult.from_dict(data)


def test_num_units_must_match_the_units():
    data = make().to_dict()
    data["layers"]["conv"]["num_units"] = 3
    with pytest.raises(ValueError, match=r"`layers\['conv'\]\.num_units` is 3 but .* lists 2 units"):
        DissectionResult.from_dict(data)
    data = make().to_dict()
    data["layers"]["conv"]["iou"] = data["layers"]["conv"]["iou"][:1]
    with pytest.raises(ValueError, match=r"iou` has 1 rows but the layer has 2 units"):
        DissectionResult.from_dict(data)


def test_errors_from_a_file_name_the_file_and_the_key(tmp_path):
    data = make().to_dict()
    data["layers"]["conv"]["num_units"] = 5
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"bad\.json: `layers\['conv'\]\.num_units` is 5"):
        DissectionResult.from_json(path)


# ---------------------------------------------------------------------------- ablations field
def test_ablations_round_trip_as_standard_json():
    result = make()
    record = {"layer": "conv", "concept": "sky", "concept_index": 1, "units": [0], "baseline": 0.4,
              "ablated": 0.1, "drop": 0.3, "relative_drop": 0.75, "control_ablated": 0.39,
              "control_drop": 0.01, "control_relative_drop": float("nan"), "control_units": [[1]],
              "mode": "zero", "num_images": 8}
    result.ablations = {"conv": [record]}
    text = result.to_json()
    assert "NaN" not in text  # non-finite floats become null
    loaded = DissectionResult.from_json(text)
    (back,) = loaded.ablations["conv"]
    assert back["control_relative_drop"] is None
    assert {k: v for k, v in back.items() if k != "control_relative_drop"} == {
        k: v for k, v in record.items() if k != "control_relative_drop"}
    assert math.isnan(record["control_relative_drop"])  # the caller's record is not modified
    assert "ablations" not in make().to_dict()  # absent when empty
    assert DissectionResult.from_json(make().to_json()).ablations == {}


def test_malformed_ablations_are_rejected():
    data = make().to_dict()
    data["ablations"] = {"conv": {"concept": "sky"}}
    with pytest.raises(ValueError, match="`ablations` must be an object"):
        DissectionResult.from_dict(data)


def test_path_objects_and_strings_load_the_same(tmp_path):
    path = Path(tmp_path) / "r.json"
    make().to_json(path)
    assert DissectionResult.from_json(path).to_dict() == DissectionResult.from_json(str(path)).to_dict()


def test_the_schema_pages_example_is_a_complete_loadable_document():
    """docs/schema.md is the one description of the JSON: its example loads and round-trips."""
    import re

    page = (Path(__file__).resolve().parents[1] / "docs" / "schema.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", page, flags=re.S)
    assert len(blocks) == 1
    example = json.loads(blocks[0])
    result = DissectionResult.from_json(blocks[0])
    assert result.to_dict() == example  # nothing dropped, nothing added: the page shows every field
    layer = result.layers["layout"]
    assert layer.chance_iou is not None and layer.chance_iou.shape == (2, 4)  # the layer-level chance IoU
    assert [u.label for u in layer.units] == ["tree", "sky"] and result.ablations["layout"][0]["units"] == [0]
    # every field of the page's per-unit and per-layer tables appears in the example
    documented = set(re.findall(r"^\| `(\w+)` \|", page, flags=re.M))
    present = set(example) | set(example["layers"]["layout"]) | set(example["layers"]["layout"]["units"][0])
    assert documented <= present, documented - present
