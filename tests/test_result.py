"""DissectionResult: JSON round trip, schema version, compare(), console and Markdown output."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console

from lightning_dissect import ConceptVocabulary
from lightning_dissect.dissection import dissect
from lightning_dissect.result import (
    SCHEMA_VERSION,
    DissectionResult,
    LayerDissection,
    UnitDissection,
)
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
from tests.helpers.painting import PaintingGenerator

VOCAB = ConceptVocabulary(
    ("unlabeled", "sky", "tree", "door"), ("none", "material", "object", "part")
)


@pytest.fixture(scope="module")
def result() -> DissectionResult:
    world = SceneWorld(32)
    gen = PaintingGenerator(world, ["tree", "house", "water"])
    return dissect(
        gen,
        ["layout", "canvas"],
        SyntheticSceneSegmenter(world),
        latent_shape=(gen.latent_dim,),
        num_samples=96,
        batch_size=48,
        threshold_mode="iqr",
        num_levels=16,
        progress=False,
        metadata={"step": 12, "checkpoint": "x.ckpt"},
    )


def make(units: list[tuple[str, bool]], layer: str = "l") -> DissectionResult:
    records = [
        UnitDissection(i, label, VOCAB.index(label), VOCAB.categories[VOCAB.index(label)],
                       0.2 if on else 0.01, 0.1, 1.0, on, 0.0)
        for i, (label, on) in enumerate(units)
    ]
    iou = torch.zeros(len(units), VOCAB.num_concepts)
    return DissectionResult({layer: LayerDissection(layer, records, iou)}, VOCAB)


# ---------------------------------------------------------------------------- JSON
def test_json_round_trip_field_by_field(result, tmp_path):
    path = tmp_path / "sub" / "dissect.json"
    text = result.to_json(path, indent=2)
    assert path.read_text() == text
    for loaded in (DissectionResult.from_json(text), DissectionResult.from_json(path),
                   DissectionResult.from_json(str(path))):
        assert loaded.schema_version == SCHEMA_VERSION
        assert loaded.settings == json.loads(json.dumps(result.settings))
        assert loaded.metadata == {"step": 12, "checkpoint": "x.ckpt"}
        assert loaded.vocabulary == result.vocabulary
        assert list(loaded.layers) == list(result.layers)
        for name, layer in result.layers.items():
            other = loaded[name]
            assert other.name == name and other.num_units == layer.num_units
            assert other.units == layer.units  # dataclass equality: every field
            torch.testing.assert_close(other.iou, layer.iou, atol=1e-6, rtol=0)
            assert other.chance_iou is not None
            torch.testing.assert_close(other.chance_iou, layer.chance_iou, atol=1e-6, rtol=0)
        assert loaded.to_dict() == result.to_dict()


def test_json_is_plain_and_has_gandissect_fields(result):
    data = json.loads(result.to_json())
    unit = data["layers"]["layout"]["units"][0]
    for key in ("unit", "label", "category", "iou", "iou_iqr", "level", "interpretable",
                "top_images"):
        assert key in unit
    assert set(unit["top_images"][0]) == {"index", "maxact"}
    assert data["schema_version"] == SCHEMA_VERSION
    assert len(data["layers"]["layout"]["iou"]) == data["layers"]["layout"]["num_units"]


def test_unit_images_are_not_serialised(result):
    copy = DissectionResult.from_json(result.to_json())
    copy.unit_images = {"layout": {0: torch.zeros(1, 3, 4, 4, dtype=torch.uint8)}}
    assert "unit_images" not in copy.to_json()


def test_newer_schema_version_is_refused(result):
    data = result.to_dict()
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="upgrade"):
        DissectionResult.from_dict(data)


def test_result_without_chance_baseline_round_trips():
    res = make([("sky", True), ("tree", False)])
    loaded = DissectionResult.from_json(res.to_json())
    assert loaded["l"].chance_iou is None
    assert loaded["l"].units == res["l"].units


# ---------------------------------------------------------------------------- compare
def test_compare_gained_lost_relabelled():
    old = make([("sky", True), ("tree", True), ("door", False), ("sky", True)])
    new = make([("sky", True), ("door", True), ("door", True), ("sky", False)])
    diff = new.compare(old)
    assert diff.gained == {"l": [2]}
    assert diff.lost == {"l": [3]}
    assert diff.relabelled == {"l": [(1, "tree", "door")]}
    assert diff.churn("l") == 3
    reverse = old.compare(new)
    assert reverse.gained == {"l": [3]} and reverse.lost == {"l": [2]}


def test_compare_with_a_new_layer_counts_all_interpretable_units_as_gained():
    old = make([("sky", True)], layer="a")
    new = make([("sky", True), ("tree", False), ("door", True)], layer="b")
    diff = new.compare(old)
    assert diff.gained == {"b": [0, 2]} and diff.lost == {"b": []}


# ---------------------------------------------------------------------------- rendering
def test_summary_renders_unit_rows(result):
    console = Console(record=True, width=140)
    console.print(result.summary(top=5))
    text = console.export_text()
    layer = result["layout"]
    assert f"layout: {layer.num_interpretable}/{layer.num_units} interpretable units" in text
    assert "canvas:" in text
    for unit in layer.top_units(5):
        assert unit.label in text
        assert f"{unit.iou:.3f}" in text
    assert "chance IoU" in text


def test_layer_statistics():
    res = make([("sky", True), ("tree", True), ("sky", True), ("door", False)])
    layer = res["l"]
    assert layer.num_interpretable == 3
    assert layer.concept_counts() == {"sky": 2, "tree": 1}
    assert layer.category_counts() == {"material": 2, "object": 1}
    assert layer.num_concepts_covered == 2
    assert [u.unit for u in layer.interpretable_units()] == [0, 1, 2]
    assert [u.unit for u in layer.top_units(2)] == [0, 1]


def test_markdown_table(result):
    table = result.markdown_table("layout", top=3).splitlines()
    assert table[0].startswith("| unit | concept | category | IoU |")
    assert table[1].startswith("|---:|")
    assert len(table) == 2 + 3
    best = result["layout"].top_units(1)[0]
    assert table[2].startswith(f"| {best.unit} | {best.label}")
    res = make([("sky", False)])
    assert "(not interpretable)" in res.markdown_table("l")
