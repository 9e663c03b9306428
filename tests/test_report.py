"""The static HTML report: files, links, content, escaping, and the three image sources."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from lightning_dissect.dissection import dissect
from lightning_dissect.latents import LatentBank
from lightning_dissect.report import layer_slug, write_report
from lightning_dissect.result import DissectionResult, LayerDissection, UnitDissection
from lightning_dissect.segmenters import ConceptVocabulary, SceneWorld, SyntheticSceneSegmenter
from tests.helpers.painting import PaintingGenerator

CONCEPTS = ["tree", "house", "water", "roof"]
N = 96


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> _Collector:
    collector = _Collector()
    collector.feed(path.read_text(encoding="utf-8"))
    return collector


@pytest.fixture(scope="module")
def setup():
    world = SceneWorld(32)
    gen = PaintingGenerator(world, CONCEPTS)
    kwargs = dict(latent_shape=(gen.latent_dim,), num_samples=N, batch_size=48,
                  threshold_mode="iqr", num_levels=24, progress=False, top_k=4)
    result = dissect(gen, ["layout", "canvas"], SyntheticSceneSegmenter(world),
                     num_visualized_units=3, **kwargs)
    return gen, result, LatentBank(N, (gen.latent_dim,), seed=1)


def images_of(page: _Collector) -> list[str]:
    return [attrs["src"] for tag, attrs in page.tags if tag == "img"]


def test_report_files_and_links(setup, tmp_path):
    _, result, _ = setup
    path = write_report(result, tmp_path / "report")
    assert path == tmp_path / "report" / "index.html"
    loaded = DissectionResult.from_json(tmp_path / "report" / "dissect.json")
    assert loaded.to_dict() == result.to_dict()
    page = parse(path)
    srcs = images_of(page)
    assert len(srcs) == 6  # 3 units x 2 layers, from result.unit_images
    for src in srcs:
        assert not src.startswith(("/", "http")), src  # relative
        file = path.parent / src
        assert file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert file.parent.parent.name == "images"
    html = path.read_text()
    # self-contained: no external scripts, styles, fonts or images
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "<link" not in html and "@import" not in html and "url(" not in html
    assert "<script src" not in html


def test_report_content(setup, tmp_path):
    _, result, _ = setup
    path = write_report(result, tmp_path)
    page = parse(path)
    html = path.read_text()
    text = " ".join(page.text)
    for name in ("layout", "canvas"):
        assert f'id="{layer_slug(name, list(result.layers).index(name))}"' in html
    # the bar chart and heatmap are inline SVG, with one bar per interpretable concept
    svgs = [attrs for tag, attrs in page.tags if tag == "svg"]
    assert sum(a.get("aria-label") == "interpretable units per concept" for a in svgs) == 2
    assert sum(a.get("aria-label") == "IoU heatmap" for a in svgs) == 2
    for concept in CONCEPTS:
        assert concept in text
    # the sortable table has one row per unit of each layer
    tables = [a for tag, a in page.tags if tag == "table" and "sortable" in (a.get("class") or "")]
    assert len(tables) == 2
    rows = html.count("<tr class=")
    assert rows == sum(layer.num_units for layer in result.layers.values())
    # settings and JS/CSS inline
    assert "threshold_mode" in text and "num_samples" in text
    assert "<style>" in html and "sortTable" in html and 'id="image-status"' in html


def test_report_renders_missing_images_with_a_generator(setup, tmp_path):
    gen, result, bank = setup
    bare = DissectionResult.from_json(result.to_json())  # JSON drops unit images
    assert not bare.unit_images
    path = write_report(bare, tmp_path, generator=gen, latent_bank=bank, num_units=2)
    srcs = images_of(parse(path))
    assert len(srcs) == 4
    assert "rendered for this report" in path.read_text()
    # the rendered strip equals the one dissect() recorded for the same unit
    best = result["layout"].top_units(1)[0].unit
    recorded = tmp_path / "recorded"
    write_report(result, recorded)
    name = f"images/{layer_slug('layout', 0)}/unit-{best:04d}.png"
    assert (tmp_path / name).read_bytes() == (recorded / name).read_bytes()


def test_report_without_images_says_how_to_get_them(setup, tmp_path):
    _, result, _ = setup
    bare = DissectionResult.from_json(result.to_json())
    path = write_report(bare, tmp_path)
    assert images_of(parse(path)) == []
    assert "num_visualized_units" in path.read_text()
    assert not (tmp_path / "images").exists()


def test_report_escapes_names_and_handles_no_interpretable_units(tmp_path):
    vocab = ConceptVocabulary(("unlabeled", "a<b>&c"), ("none", "odd\"cat"))
    unit = UnitDissection(0, "a<b>&c", 1, 'odd"cat', 0.01, 0.0, 1.0, False, None)
    layer = LayerDissection("net.<x>", [unit], torch.tensor([[0.0, 0.01]]))
    result = DissectionResult({"net.<x>": layer}, vocab, settings={"iou_threshold": 0.04})
    path = write_report(result, tmp_path, write_json=False)
    html = path.read_text()
    assert "a<b>" not in html and "a&lt;b&gt;&amp;c" in html
    assert "net.&lt;x&gt;" in html
    assert "No interpretable units" in html
    assert not (tmp_path / "dissect.json").exists()
    assert json.loads(result.to_json())["layers"]["net.<x>"]["num_units"] == 1


def test_layer_slug_is_unique_and_safe():
    slugs = {layer_slug(n, i) for i, n in enumerate(["a.b", "a/b", "a b", "", "..."])}
    assert len(slugs) == 5
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", s) for s in slugs)
