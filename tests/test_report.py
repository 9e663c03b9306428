"""The static HTML report: files, links, content, escaping, and the three image sources."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from lightning_dissect import ConceptVocabulary
from lightning_dissect.dissection import dissect
from lightning_dissect.engine.latents import LatentBank
from lightning_dissect.report import layer_slug, write_report
from lightning_dissect.result import DissectionResult, LayerDissection, UnitDissection
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
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


# ---------------------------------------------------------------------------- report features
def _viridis(x: float) -> tuple[int, int, int]:
    """Independent reference of the heatmap colour map (linear between five stops)."""
    stops = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]
    x = min(max(x, 0.0), 1.0) * 4
    i = min(int(x), 3)
    f = x - i
    return tuple(round(a + (b - a) * f) for a, b in zip(stops[i], stops[i + 1]))


def _css(x: float) -> str:
    r, g, b = _viridis(x)
    return f"rgb({r},{g},{b})"


def _cells(svg: str) -> dict[str, str]:
    """Heatmap cell title -> fill colour."""
    return {title: fill for fill, title in re.findall(r'fill="(rgb\([^)]*\))"><title>([^<]*)</title>', svg)}


def _small_result(scale: float) -> DissectionResult:
    vocab = ConceptVocabulary(("unlabeled", "sky", "tree", "door"), ("none", "material", "object", "part"))
    iou = torch.tensor([[0.0, 0.10, 0.02, 0.0], [0.0, 0.01, 0.05, 0.0], [0.0, 0.0, 0.0, 0.08]]) * scale
    units = [UnitDissection(i, vocab.names[c], c, vocab.categories[c], float(iou[i, c]), 0.1, 1.0,
                            True, 0.0) for i, c in enumerate((1, 2, 3))]
    return DissectionResult({"l": LayerDissection("l", units, iou)}, vocab,
                            settings={"iou_threshold": 0.04})


def test_heatmap_colour_scale_is_fixed_and_labelled():
    from lightning_dissect.report._svg import iou_heatmap
    from lightning_dissect.visual.colours import IOU_SCALE_MAX

    assert IOU_SCALE_MAX == 0.5
    low, high = _small_result(1.0), _small_result(4.0)  # max IoU 0.1 vs 0.4
    svg_low = iou_heatmap(low["l"], low.vocabulary.names, threshold=0.04)
    svg_high = iou_heatmap(high["l"], high.vocabulary.names)
    cells_low, cells_high = _cells(svg_low), _cells(svg_high)
    # IoU 0.1 is 1/5 up the fixed 0..0.5 scale, not the top colour of its layer
    assert cells_low["unit 0 × sky: IoU 0.100"] == _css(0.2)
    # colours follow the fixed scale in a layer with a larger maximum too
    assert cells_high["unit 0 × tree: IoU 0.080"] == _css(0.16)
    assert cells_high["unit 2 × door: IoU 0.320"] == _css(0.64)
    ticks = re.findall(r'class="scale-tick">([^<]*)<', svg_low)
    assert ticks == ["0", "0.1", "0.2", "0.3", "0.4", "≥ 0.5"]
    assert "cut-off" in svg_low and "cut-off" not in svg_high
    # above the scale: the top colour
    big = _small_result(10.0)
    assert _cells(iou_heatmap(big["l"], big.vocabulary.names))["unit 0 × sky: IoU 1.000"] == \
        _css(1.0)


def test_heatmap_label_cells_form_a_diagonal():
    from lightning_dissect.report._svg import iou_heatmap

    generator = torch.Generator().manual_seed(0)
    concepts = 12
    names = ("unlabeled", *[f"c{i}" for i in range(1, concepts)])
    vocab = ConceptVocabulary(names, ("none", *["object"] * (concepts - 1)))
    iou = torch.rand(30, concepts, generator=generator) * 0.3
    iou[:, 0] = 0
    labels = iou[:, 1:].argmax(1) + 1
    units = [UnitDissection(i, names[c], int(c), "object", float(iou[i, c]), 0.1, 1.0,
                            bool(iou[i, c] > 0.1), 0.0) for i, c in enumerate(labels.tolist())]
    layer = LayerDissection("l", units, iou)
    svg = iou_heatmap(layer, vocab.names, max_units=30)
    boxes = [(float(x), float(y)) for x, y in
             re.findall(r'class="label-cell" x="([\d.]+)" y="([\d.]+)"', svg)]
    assert len(boxes) == 30  # every shown row has its label among the columns
    xs = [x for x, _ in sorted(boxes, key=lambda b: b[1])]
    assert xs == sorted(xs)  # label columns never go left when going down: a diagonal staircase
    assert len(set(xs)) == len(set(labels.tolist()))  # one column per distinct label
    # the interpretable units come first within each label's block of rows
    text_rows = re.findall(r'fill="(#1d2330|#9aa1ad)">unit (\d+) · ', svg)
    by_label: dict[int, list[bool]] = {}
    for colour, unit in text_rows:
        by_label.setdefault(int(labels[int(unit)]), []).append(colour == "#1d2330")
    for flags in by_label.values():
        assert flags == sorted(flags, reverse=True)


def _count_categories(result: DissectionResult) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for name, layer in result.layers.items():
        counts: dict[str, int] = {}
        for unit in layer.units:
            if unit.interpretable:
                counts[unit.category] = counts.get(unit.category, 0) + 1
        out[name] = counts
    return out


def test_report_legend_summary_and_ablations(setup, tmp_path):
    _, result, _ = setup
    copy = DissectionResult.from_json(result.to_json())
    copy.ablations = {"layout": [
        {"layer": "layout", "concept": "tree", "concept_index": 1, "units": [3, 4], "baseline": 0.3,
         "ablated": 0.03, "drop": 0.27, "relative_drop": 0.9, "control_ablated": 0.29,
         "control_drop": 0.01, "control_relative_drop": 0.0333, "control_units": [[1, 2]],
         "mode": "zero", "num_images": 64},
        {"layer": "layout", "concept": "house", "concept_index": 2, "units": [5], "baseline": 0.2,
         "ablated": 0.1, "drop": 0.1, "relative_drop": 0.5, "control_ablated": 0.2,
         "control_drop": 0.0, "control_relative_drop": None, "control_units": [[0]],
         "mode": "zero", "num_images": 64},
    ]}
    path = write_report(copy, tmp_path)
    html = path.read_text()
    legend = html[html.index('id="legend"'):html.index("</section>", html.index('id="legend"'))]
    for term in ("IoU", "IQR", "threshold", "chance IoU", "interpretable"):
        assert f"<dt>{term}" in legend or term in legend
    assert "label IoU &gt; " in legend
    # summary across layers: interpretable units per category per layer
    start = html.index('id="summary"')
    summary = html[start:html.index("</section>", start)]
    expected = _count_categories(result)
    categories = sorted({c for counts in expected.values() for c in counts})
    header = re.findall(r"</span>([^<]+)</th>", summary)
    assert sorted(header) == categories
    for name, layer in result.layers.items():
        row = re.search(rf"<code>{name}</code></a></td>(.*?)</tr>", summary).group(1)
        cells = re.findall(r'<td class="num">([^<]*)</td>', row)
        assert cells[0].startswith(f"{sum(expected[name].values())} / {layer.num_units}")
        assert [int(c) for c in cells[1:1 + len(header)]] == [expected[name].get(c, 0) for c in header]
    # ablation table in the layout section only, sorted by relative drop, missing values as dashes
    assert html.count('class="data ablation"') == 1
    start = html.index('class="data ablation"')
    table = html[start:html.index("</table>", start)]
    rows = re.findall(r"<tr><td>([^<]*)</td>(.*?)</tr>", table)
    assert [r[0] for r in rows] == ["tree", "house"]
    # every measure for the units and the random control side by side, in the same units
    head = re.findall(r'<th class="num">([^<]*)</th>', table)
    assert head == ["units off", "baseline", "ablated: units", "ablated: random", "drop: units", "drop: random",
                    "relative drop: units", "relative drop: random"]
    assert re.findall(r'<td class="num"[^>]*>([^<]*)</td>', rows[0][1]) == [
        "2", "0.3000", "0.0300", "0.2900", "0.2700", "0.0100", "90.0 %", "3.3 %"]
    assert re.findall(r'<td class="num"[^>]*>([^<]*)</td>', rows[1][1])[-1] == "–"
    assert "Ablation check" in html


def test_write_report_refuses_a_file_as_directory(setup, tmp_path):
    _, result, _ = setup
    target = tmp_path / "report.html"
    target.write_text("x")
    with pytest.raises(ValueError, match="`directory`.*is a file"):
        write_report(result, target)


def _outline_reference(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inner edge (mask pixels with an out-of-mask 8-neighbour) and outer ring, by loops."""
    h, w = mask.shape
    inner = torch.zeros_like(mask)
    outer = torch.zeros_like(mask)
    for y in range(h):
        for x in range(w):
            neighbours = [bool(mask[j, i]) for j in range(max(0, y - 1), min(h, y + 2))
                          for i in range(max(0, x - 1), min(w, x + 2))]
            if mask[y, x] and not all(neighbours):
                inner[y, x] = True
            if not mask[y, x] and any(neighbours):
                outer[y, x] = True
    return inner, outer


def test_mask_outline_is_dark_and_light_and_visible_on_any_image():
    from lightning_dissect.visual.visualize import overlay_mask

    mask = torch.rand(20, 24, generator=torch.Generator().manual_seed(3)) > 0.6
    inner, outer = _outline_reference(mask)
    for fill in (0, 255, 128):
        image = torch.full((3, 20, 24), fill, dtype=torch.uint8)
        out = overlay_mask(image, mask).float()
        luminance = 0.299 * out[0] + 0.587 * out[1] + 0.114 * out[2]
        assert bool((luminance[inner] > 190).all())  # a light line on the inner edge
        assert bool((luminance[outer] < 30).all())  # a dark line just outside
        rest = ~(inner | outer)
        expected = torch.where(mask, torch.tensor(float(fill)), torch.tensor(float(round(fill * 0.5))))
        assert torch.equal(out[0][rest], expected[rest])


def test_rewriting_a_report_with_fewer_layers_leaves_no_stale_pictures(setup, tmp_path):
    _, result, _ = setup
    folder = tmp_path / "report"
    write_report(result, folder)
    both = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    assert len(both) == 6
    own = folder / "images" / "notes.txt"  # not the report's: left alone
    own.write_text("mine")
    one = DissectionResult(
        {"layout": result.layers["layout"]}, result.vocabulary, settings=result.settings,
        unit_images={"layout": result.unit_images["layout"]},
    )
    path = write_report(one, folder)
    left = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    shown = sorted(images_of(parse(path)))
    assert left == shown and len(left) == 3  # every picture in the folder is one the page shows
    assert own.read_text() == "mine"


def test_report_files_get_the_permissions_of_a_plain_open(setup, tmp_path):
    import os

    _, result, _ = setup
    old = os.umask(0o022)
    try:
        path = write_report(result, tmp_path / "report")
    finally:
        os.umask(old)
    for file in (path, path.parent / "dissect.json", next(path.parent.rglob("*.png"))):
        assert file.stat().st_mode & 0o777 == 0o644, file  # servable "as is", like the PNGs
