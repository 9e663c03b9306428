"""The pictures and table a dissection round writes to TensorBoard, checked against hand-built results."""

from __future__ import annotations

import torch

from lightning_dissect import ConceptVocabulary
from lightning_dissect.loggers import TensorBoardWriter
from lightning_dissect.loggers.rounds import RoundLogger
from lightning_dissect.result import DissectionResult, LayerDissection, UnitDissection
from lightning_dissect.visual.colours import IOU_SCALE_MAX
from lightning_dissect.visual.round_pictures import iou_heatmap_image, units_by_round_concepts, units_by_round_image
from lightning_dissect.visual.visualize import labelled_heatmap, labelled_heatmap_grid, legend_image

VOCAB = ConceptVocabulary(("unlabeled", "sky", "tree", "grass", "door"), ("none", "material", "object", "material",
                                                                          "part"))
WHITE = (255, 255, 255)
STOPS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


def viridis_like(value: float, vmax: float) -> tuple[int, int, int]:
    """Independent reference: linear interpolation between the five stops, clipped to [0, vmax]."""
    x = min(max(value / vmax, 0.0), 1.0) * 4
    lo = min(int(x), 3)
    f = x - lo
    return tuple(int(round(a + (b - a) * f)) for a, b in zip(STOPS[lo], STOPS[lo + 1]))


def unit(i, label, iou, interpretable, chance):
    c = VOCAB.index(label)
    return UnitDissection(i, label, c, VOCAB.categories[c], iou, 0.1, 1.0, interpretable, chance)


def layer_of(units, iou=None):
    if iou is None:
        iou = torch.zeros(len(units), VOCAB.num_concepts)
        for u in units:
            iou[u.unit, u.concept_index] = u.iou
    return LayerDissection("l", units, iou)


# ------------------------------------------------------------------ top units
def test_top_units_interpretable_first_and_never_at_or_below_chance():
    units = [
        unit(0, "sky", 0.70, False, 0.75),   # highest IoU but below its chance IoU: never a top unit
        unit(1, "tree", 0.30, True, 0.05),
        unit(2, "grass", 0.50, False, 0.10),  # above chance, not interpretable: after the interpretable ones
        unit(3, "door", 0.40, True, 0.40),   # interpretable but IoU == chance IoU: left out
        unit(4, "sky", 0.45, True, 0.20),
        unit(5, "tree", 0.20, False, None),  # chance not measured: allowed, last (lowest IoU)
        unit(6, "grass", float("nan"), False, None),
    ]
    layer = layer_of(units)
    assert [u.unit for u in layer.top_units(10)] == [4, 1, 2, 5]
    assert [u.unit for u in layer.top_units(2)] == [4, 1]
    result = DissectionResult({"l": layer}, VOCAB)
    rows = result.markdown_table("l", top=10).splitlines()[2:]
    assert [int(r.split("|")[1]) for r in rows] == [4, 1, 2, 5]
    assert "(not interpretable)" not in rows[0] + rows[1] and "(not interpretable)" in rows[2]


class _Writer:
    def __init__(self):
        self.images, self.texts = {}, {}

    def add_text(self, tag, text, step):
        self.texts[tag] = text

    def add_histogram(self, *args, **kwargs):
        pass

    def add_image(self, tag, image, step, dataformats="CHW"):
        self.images[tag] = image

    def add_custom_scalars(self, layout):
        self.layout = layout

    def flush(self):
        pass


def _tile(colour, size=4):
    return torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, size, size).clone()


def test_table_rows_are_strip_rows_and_heatmap_units():
    units = [unit(0, "sky", 0.70, False, 0.75), unit(1, "tree", 0.30, True, 0.05), unit(2, "grass", 0.5, False, 0.1),
             unit(3, "sky", 0.45, True, 0.2)]
    result = DissectionResult({"l": layer_of(units)}, VOCAB)
    # every unit's strip is one flat colour (its index) so the strip rows can be read back
    result.unit_images = {"l": {u.unit: _tile((10 * u.unit, 0, 0), 96)[None].repeat(2, 1, 1, 1) for u in units}}
    writer = _Writer()
    TensorBoardWriter(writer).write(RoundLogger(num_visualized_units=3).content(result, step=5))
    table = writer.texts["dissection/l/top_units"].splitlines()[2:]
    table_units = [int(r.split("|")[1]) for r in table]
    assert table_units == [3, 1, 2]
    strips = writer.images["dissection/l/unit_strips"]
    # each row: a header line (a 28 pixel font, + 4 px), then the 96 px frames; 2 px gaps
    from PIL import ImageFont

    header = sum(ImageFont.load_default(size=28).getmetrics()) + 4
    row = header + 96
    strip_units = [int(strips[0, (row + 2) * i + header + 48, 48]) // 10 for i in range(3)]
    assert strip_units == table_units and strips.shape[1] == 3 * row + 2 * 2
    assert writer.images["dissection/l/iou_heatmap"].dtype == torch.uint8


def test_heatmap_says_so_when_no_unit_is_above_chance():
    result = DissectionResult({"l": layer_of([unit(0, "sky", 0.1, False, 0.2)])}, VOCAB)
    writer = _Writer()
    content = RoundLogger(num_visualized_units=3).content(result, step=1)
    TensorBoardWriter(writer).write(content)
    said = "No unit of l has an IoU above its chance IoU (1 unit dissected)"
    assert writer.texts["dissection/l/top_units"].startswith(said)  # words, not an empty table
    # the one table every writer (W&B, MLflow, folder) writes: a single row that says it
    table = content.tables["dissection/l/top_units"]
    assert table.columns == ["note"] and len(table.rows) == 1 and table.rows[0][0].startswith(said)
    for kind in ("iou_heatmap", "unit_strips"):
        img = writer.images[f"dissection/l/{kind}"]
        assert (img == 255).all(0).float().mean() > 0.5 and (img < 100).all(0).any()  # dark text on white


# ------------------------------------------------------------------ heatmap
def _dark(region) -> int:
    """Pixels darker than mid-grey (anti-aliased text has few pixels of exactly the ink colour)."""
    return int((region.int().sum(0) < 3 * 128).sum())


def _ink(region, colour=(29, 35, 48)):
    return int((region == torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1)).all(0).sum())


def test_labelled_heatmap_cells_take_the_fixed_scale_colour():
    values = torch.tensor([[0.0, 0.1, 0.2], [0.3, 0.45, 0.9]])
    rows, cols = ["unit 7", "unit 12"], ["sky", "grass", "tree"]
    img = labelled_heatmap(values, rows, cols, cell=16)
    top, left = labelled_heatmap_grid(rows, cols)
    for i in range(2):
        for j in range(3):
            centre = img[:, top + i * 16 + 7, left + j * 16 + 7].tolist()
            assert tuple(centre) == viridis_like(float(values[i, j]), IOU_SCALE_MAX), (i, j)
    # fixed scale: the same IoU has the same colour whatever else the matrix holds
    other = labelled_heatmap(values * 0 + 0.2, rows, cols)
    assert other[:, top + 7, left + 7].tolist() == img[:, top + 7, left + 2 * 16 + 7].tolist()


def _pil_font():
    from PIL import ImageFont

    return ImageFont.load_default(size=14)  # font scale 2: a 14 pixel font


def _pil_width(text: str) -> int:
    import math

    return math.ceil(_pil_font().getlength(text))


def test_labelled_heatmap_has_labels_and_a_colour_bar():
    from PIL import Image, ImageDraw

    values = torch.full((2, 2), 0.25)
    short = labelled_heatmap(values, ["unit 1", "unit 2"], ["sky", "tree"])
    long = labelled_heatmap(values, ["unit 1", "unit 2 with a long name"], ["sky", "tree"])
    assert long.shape[2] - short.shape[2] == _pil_width("unit 2 with a long name") - _pil_width("unit 2")
    taller = labelled_heatmap(values, ["unit 1", "unit 2"], ["sky", "a long concept"])
    assert taller.shape[1] - short.shape[1] == _pil_width("a long concept") - _pil_width("tree")
    top, left = labelled_heatmap_grid(["unit 1", "unit 2"], ["sky", "tree"])
    assert _dark(short[:, top:top + 32, :left]) > 50  # row labels left of the grid
    assert _dark(short[:, :top, left:left + 32]) > 50  # column labels above it
    # "unit 1", read back from the pixels against Pillow drawing the same text in the same place
    ascent, descent = _pil_font().getmetrics()
    h_text, w_text = ascent + descent, _pil_width("unit 1")
    y, x = top + (16 - h_text) // 2, left - 6 - w_text
    reference = Image.new("RGB", (w_text, h_text), (255, 255, 255))
    ImageDraw.Draw(reference).text((0, 0), "unit 1", fill=(29, 35, 48), font=_pil_font())
    expected = torch.from_numpy(__import__("numpy").array(reference)).permute(2, 0, 1).int()
    drawn = short[:, y:y + h_text, x:x + w_text].int()
    assert (drawn - expected).abs().max() <= 1  # the same anti-aliased letters, up to rounding
    assert _ink(drawn.to(torch.uint8)) > 20
    # colour bar right of the grid: top = the top colour, bottom = the bottom colour, monotone in between
    bar_x = left + 2 * 16 + 16 + 7
    column = short[:, top:top + 120, bar_x].T.tolist()
    assert tuple(column[0]) == viridis_like(IOU_SCALE_MAX * (1 - 0.5 / 120), IOU_SCALE_MAX)
    assert tuple(column[-1]) == viridis_like(IOU_SCALE_MAX * 0.5 / 120, IOU_SCALE_MAX)
    assert _dark(short[:, top - 20:top + 130, bar_x + 8:]) > 100  # tick labels and title


def test_colour_bar_ticks_stand_clear_of_their_numbers():
    """A tick mark touching its number read as a minus sign ("-0.5+"): a white gap must part them."""
    img = labelled_heatmap(torch.full((2, 2), 0.25), ["unit 1", "unit 2"], ["sky", "tree"])
    top, left = labelled_heatmap_grid(["unit 1", "unit 2"], ["sky", "tree"])
    bar_right = left + 2 * 16 + 16 + 14  # first column right of the 14 pixel colour bar
    ink = (29, 35, 48)
    ticks = [y for y in range(top, top + 120) if tuple(img[:, y, bar_right].tolist()) == ink]
    assert len(ticks) == 6  # 0, 0.1, ..., 0.5+
    for y in ticks:
        end = bar_right
        while tuple(img[:, y, end + 1].tolist()) == ink:
            end += 1
        gap = img[:, y - 5:y + 6, end + 1:end + 7]  # the tick's height band, 6 columns right of the mark
        assert bool((gap == 255).all()), f"tick at row {y} touches its number"
        assert _dark(img[:, y - 8:y + 9, end + 7:end + 40]) > 5  # and the number is there


def test_iou_heatmap_image_orders_a_diagonal_and_names_units():
    units = [unit(0, "sky", 0.30, True, 0.0), unit(1, "tree", 0.40, True, 0.0), unit(2, "sky", 0.35, True, 0.0)]
    layer = layer_of(units)
    img = iou_heatmap_image(layer, VOCAB.names, layer.top_units(3))
    # rows: tree (unit 1), then sky units 2 and 0; columns tree, sky
    rows, cols = ["unit 1", "unit 2", "unit 0"], ["tree", "sky"]
    expected = labelled_heatmap(torch.tensor([[0.4, 0.0], [0.0, 0.35], [0.0, 0.3]]), rows, cols,
                                marks=[(0, 0), (1, 1), (2, 1)])
    assert torch.equal(img, expected)
    top, left = labelled_heatmap_grid(rows, cols)
    red = torch.tensor([224, 49, 49], dtype=torch.uint8)
    assert img[:, top, left + 3].tolist() == red.tolist()  # outlined label cell (0, 0)
    assert img[:, top, left + 16 + 3].tolist() != red.tolist()


# ------------------------------------------------------------------ units by round legend
def test_units_by_round_legend_lists_exactly_the_concepts_present():
    palette = {"sky": (90, 160, 230), "tree": (20, 120, 20), "grass": (60, 200, 60), "door": (200, 30, 30)}
    entries = [
        {"layers": {"l": {"labels": ["sky", "", "tree"]}}},
        {"layers": {"l": {"labels": ["sky", "grass", ""]}}},
        {"layers": {"other": {"labels": ["door"]}}},
    ]
    assert units_by_round_concepts(entries, "l") == ["grass", "sky", "tree"]
    img = units_by_round_image(entries, "l", palette)
    bare = units_by_round_image(entries, "l", palette, legend=False)
    assert torch.equal(img[:, : bare.shape[1], : bare.shape[2]], bare)
    key = img[:, :, bare.shape[2] + 8:]
    assert torch.equal(key[:, : 18 * 4 + 8], legend_image(
        [(n, palette[n]) for n in ("grass", "sky", "tree")], title="concepts (dark: none)", max_height=120)
        [:, : 18 * 4 + 8])
    found = {name for name, colour in palette.items()
             if (key == torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1)).all(0).sum() >= 100}
    assert found == {"grass", "sky", "tree"}  # door labels only another layer
    assert _ink(key) > 100


# ------------------------------------------------------------------ optional logger libraries
def test_wandb_and_mlflow_are_imported_only_when_their_logger_is_in_use(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger\n"
        "import lightning_dissect.callbacks.generator\n"
        "from lightning_dissect.loggers import round_writers\n"
        f"writers, _ = round_writers([TensorBoardLogger({str(tmp_path)!r}), CSVLogger({str(tmp_path)!r})])\n"
        "print(len(writers), 'wandb' in sys.modules, 'mlflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["2", "False", "False"]


def test_units_by_round_has_a_sensible_size_from_the_first_round():
    # one round of a 256-unit layer was a 1-pixel column 1,536 pixels tall
    palette = {"sky": (90, 160, 230), "grass": (60, 200, 60)}
    labels = ["sky"] * 3 + [""] * 250 + ["grass"] * 3
    img = units_by_round_image([{"layers": {"layer1": {"labels": labels}}}], "layer1", palette, legend=False)
    height, width = img.shape[1:]
    assert 256 <= width and height <= 512 + 40 and width * 3 >= height  # wide enough, not a sliver
    row = 512 // 256  # each unit's row: 2 pixels
    for unit, label in enumerate(labels):  # every unit's cell holds its label's colour, dark for none
        expected = palette[label] if label else (40, 40, 40)
        cells = img[:, unit * row:(unit + 1) * row, :width // 2]
        assert bool((cells == torch.tensor(expected, dtype=torch.uint8).view(3, 1, 1)).all()), unit
    # a caption under the map names the axes
    assert _dark(img[:, 512:, :]) > 50
    # a narrow layer keeps its 6 pixel rows; many rounds keep at least 2 pixels per column
    many = [{"layers": {"l": {"labels": ["sky", ""]}}}] * 300
    wide = units_by_round_image(many, "l", palette, legend=False)
    assert wide.shape[2] == 600 and bool((wide[:, :6, :] == torch.tensor((90, 160, 230), dtype=torch.uint8)
                                          .view(3, 1, 1)).all())


def test_unit_strips_are_labelled_with_unit_concept_iou_and_chance():
    from PIL import Image, ImageDraw, ImageFont

    from lightning_dissect.visual.round_pictures import unit_strip_grid

    units = [unit(0, "sky", 0.7234, True, 0.631), unit(1, "grass", 0.118, False, 0.114)]
    result = DissectionResult({"l": layer_of(units)}, VOCAB)
    frames = torch.full((6, 3, 32, 32), 128, dtype=torch.uint8)
    result.unit_images = {"l": {0: frames, 1: frames}}
    grid = unit_strip_grid(result, "l", [1, 0])
    font = ImageFont.load_default(size=28)  # legible once TensorBoard shows the grid at half size
    line_h = sum(font.getmetrics())
    headers = {1: ("unit 1 · grass · IoU 0.118 · chance 0.114 · not interpretable", (140, 146, 158)),
               0: ("unit 0 · sky · IoU 0.723 · chance 0.631", (29, 35, 48))}  # grey: not interpretable
    top = 0
    for u in (1, 0):
        text, ink = headers[u]
        reference = Image.new("RGB", (grid.shape[2], line_h + 4), (255, 255, 255))
        ImageDraw.Draw(reference).text((4, 2), text, fill=ink, font=font)
        expected = torch.from_numpy(__import__("numpy").array(reference)).permute(2, 0, 1).int()
        assert (grid[:, top:top + line_h + 4].int() - expected).abs().max() <= 1, u
        frames_top = top + line_h + 4
        assert bool((grid[:, frames_top:frames_top + 96, :96] == 128).all())  # then the frames
        top = frames_top + 96 + 2
    assert grid.shape[1] == top - 2


def test_every_custom_scalars_chart_matches_exactly_its_scalars():
    """Each chart of the layout, matched as TensorBoard does (``re.match`` of its regex on every tag of
    the run), shows exactly the scalars it is built from, and every scalar it is built from."""
    import re
    from types import SimpleNamespace

    units = [unit(0, "sky", 0.5, True, 0.1), unit(1, "tree", 0.4, True, 0.1), unit(2, "door", 0.3, True, 0.1)]
    result = DissectionResult({"l": layer_of(units), "l2": layer_of(units)}, VOCAB)
    previous = {"layers": {"l": {"labels": ["grass", "", "door"]}, "l2": {"labels": ["", "", ""]}}}
    record = SimpleNamespace(concept="sky", units=[0], baseline=0.2, drop=0.1, relative_drop=0.5, control_drop=0.02,
                             control_relative_drop=0.1)
    logger = RoundLogger(categories=VOCAB.categories)
    tags = set(logger.scalars(result, previous, {"l": [record]}))
    layout = logger.layout(["l", "l2"])
    assert set(layout) == {"dissection/l emergence", "dissection/l2 emergence"}
    section = layout["dissection/l emergence"]

    def shown(title):
        return {t for t in tags for regex in section[title][1] if re.compile(regex).match(t)}

    expected = {
        "units per concept": {f"dissection/l/units_per_concept/{c}" for c in ("sky", "tree", "door", "grass")},
        "interpretable units per category": {f"dissection/l/interpretable/{c}" for c in ("material", "object", "part")},
        "label churn": {f"dissection/l/churn/{k}" for k in ("gained", "lost", "relabelled")},
        "ablation: relative drop, units and random control": {"dissection/l/ablation/sky/relative_drop",
                                                               "dissection/l/ablation/sky/control_relative_drop"},
    }
    assert set(section) == set(expected)
    for title, tags_of_chart in expected.items():
        assert tags_of_chart <= tags, title  # the data exists
        assert shown(title) == tags_of_chart, title  # and the chart shows exactly it
