"""``BrodenDataset``: bad folders named by file, line and option; items read under workers and shards.

The items are checked against a plain NumPy / Pillow decoding of the folder (label ``R + 256 G``),
not against the dataset's own output.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lightning_dissect import BrodenDataset
from lightning_dissect.engine.broden import BrodenFileNotFoundError, BrodenWarning, write_example_broden
from lightning_dissect.engine.images import ImageRunner, ImageSet


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    return write_example_broden(tmp_path_factory.mktemp("broden") / "b", num_images=6, image_size=16, label_size=8)


@pytest.fixture
def root(example, tmp_path) -> Path:
    """A fresh copy of the example folder, to break."""
    return Path(shutil.copytree(example, tmp_path / "copy"))


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _write_csv(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        writer.writerows(rows)


def _edit_index(root: Path, line: int, **values: str) -> None:
    """Set columns of ``index.csv`` line ``line`` (line 2 is the first row)."""
    header, rows = _read_csv(root / "index.csv")
    rows[line - 2].update(values)
    _write_csv(root / "index.csv", header, rows)


def _png(path: Path, labels: np.ndarray) -> None:
    rgb = np.stack([labels % 256, labels // 256, np.zeros_like(labels)], -1).astype(np.uint8)
    Image.fromarray(rgb).save(path)


def test_items_decode_the_folder_as_numpy_reads_it(example):
    data = BrodenDataset(example)
    _, rows = _read_csv(example / "index.csv")
    assert len(data) == len(rows)
    for i, row in enumerate(rows):
        image, labels = data[i]
        expected = np.asarray(Image.open(example / "images" / row["image"]).convert("RGB"), dtype=np.float64) / 255
        np.testing.assert_allclose(image.double().numpy(), expected.transpose(2, 0, 1), atol=1e-7)
        channels = []
        for cat in data.categories:  # category.csv order, then the PNGs in their column's order
            for part in filter(None, row[cat].split(";")):
                if part.isdigit():
                    channels.append(np.full((int(row["sh"]), int(row["sw"])), int(part)))
                else:
                    png = np.asarray(Image.open(example / "images" / part).convert("RGB")).astype(np.int64)
                    channels.append(png[..., 0] + 256 * png[..., 1])
        while len(channels) < labels.shape[0]:
            channels.append(np.zeros_like(channels[0]))
        np.testing.assert_array_equal(labels.numpy(), np.stack(channels))


@pytest.mark.parametrize("name", ["index.csv", "category.csv", "label.csv", "c_part.csv"])
def test_a_missing_csv_is_named_with_the_argument(root, name):
    (root / name).unlink()
    with pytest.raises(ValueError, match=rf"`root`: {name} not found in {root}"):
        BrodenDataset(root)


def test_a_root_that_is_not_a_folder(tmp_path):
    with pytest.raises(ValueError, match=rf"`root`: {tmp_path / 'nothing'} is not a folder"):
        BrodenDataset(tmp_path / "nothing")


def test_unknown_categories_name_the_option_and_category_csv(root):
    with pytest.raises(ValueError, match=r"`categories`: \['sky'\] not in .*category\.csv, which lists"):
        BrodenDataset(root, ["object", "sky"])


@pytest.mark.parametrize("column", ["image", "object"])
def test_missing_index_columns_are_named(root, column):
    header, rows = _read_csv(root / "index.csv")
    header.remove(column)
    for row in rows:
        del row[column]
    _write_csv(root / "index.csv", header, rows)
    with pytest.raises(ValueError, match=rf"index\.csv lacks the column\(s\) \['{column}'\]"):
        BrodenDataset(root)


def test_a_missing_image_or_label_png_names_the_row_and_the_file(root):
    _, rows = _read_csv(root / "index.csv")
    (root / "images" / rows[1]["image"]).unlink()
    (root / "images" / rows[2]["object"]).unlink()
    data = BrodenDataset(root)  # only the CSVs are read here
    with pytest.raises(BrodenFileNotFoundError, match=rf"index\.csv line 3: .*{rows[1]['image']} not found"):
        data[1]
    with pytest.raises(ValueError, match=rf"index\.csv line 4: .*{rows[2]['object']} not found"):
        data[2]  # also a ValueError, as every bad row
    data[0]


def test_an_unreadable_png_names_the_row_and_the_file(root):
    _, rows = _read_csv(root / "index.csv")
    (root / "images" / rows[0]["object"]).write_bytes(b"not a png")
    with pytest.raises(ValueError, match=rf"index\.csv line 2: .*{rows[0]['object']} cannot be read as an image"):
        BrodenDataset(root)[0]


def test_an_image_level_label_outside_label_csv_names_the_row(root):
    _edit_index(root, 4, scene="99")
    with pytest.raises(ValueError, match=r"index\.csv line 4 \(img0002\.jpg\): image-level scene label 99 is not in "
                                         r".*label\.csv \(numbers 0\.\.12\)"):
        BrodenDataset(root)


def test_a_png_label_outside_label_csv_names_the_png_and_label_csv(root):
    _, rows = _read_csv(root / "index.csv")
    labels = np.full((8, 8), 1)
    labels[3, 4] = 300  # R=44, G=1
    _png(root / "images" / rows[3]["object"], labels)
    data = BrodenDataset(root)
    with pytest.raises(ValueError, match=rf"{rows[3]['object']} \(index\.csv line 5\) holds label 300, which "
                                         r".*label\.csv does not list \(numbers 0\.\.12\)"):
        data[3]


def test_an_image_at_another_size_warns_naming_the_row(root):
    _, rows = _read_csv(root / "index.csv")
    Image.new("RGB", (32, 32)).save(root / "images" / rows[0]["image"])
    with pytest.warns(BrodenWarning, match=r"index\.csv line 2: img0000\.jpg is 32x32, the index says 16x16 "
                                           r"\(ih, iw\); read at its own size"):
        image, _ = BrodenDataset(root)[0]
    assert tuple(image.shape) == (3, 32, 32)


def test_a_label_png_at_another_size_names_the_file_and_the_columns(root):
    _, rows = _read_csv(root / "index.csv")
    _png(root / "images" / rows[0]["part"], np.ones((4, 4), dtype=np.int64))
    with pytest.raises(ValueError, match=rf"index\.csv line 2: {rows[0]['part']} is 4x4, the index says the "
                                         r"segmentation is 8x8 \(sh, sw\)"):
        BrodenDataset(root)[0]


def test_a_segmentation_size_that_does_not_divide_the_image(root):
    _edit_index(root, 3, sh="5", sw="5")
    with pytest.raises(ValueError, match=r"index\.csv line 3 \(img0001\.jpg\): segmentation size \(5, 5\) is not an "
                                         r"integer fraction of the image size \(16, 16\)"):
        BrodenDataset(root)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"ih": "sixteen"}, r"index\.csv line 3: column `ih` must be an integer, got 'sixteen'"),
        ({"sw": "0"}, r"index\.csv line 3 \(img0001\.jpg\): sizes must be positive"),
        ({"image": ""}, r"index\.csv line 3: column `image` is empty"),
    ],
)
def test_bad_index_rows_are_named(root, edit, message):
    _edit_index(root, 3, **edit)
    with pytest.raises(ValueError, match=message):
        BrodenDataset(root)


def test_a_short_index_row_is_named(root):
    lines = (root / "index.csv").read_text().splitlines()
    lines[2] = ",".join(lines[2].split(",")[:3])  # image, split, ih
    (root / "index.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"index\.csv line 3: 3 fields, the header has 10"):
        BrodenDataset(root)
    lines[2] = lines[3] + ",extra"
    (root / "index.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"index\.csv line 3: 11 fields, the header has 10"):
        BrodenDataset(root)


@pytest.mark.parametrize(
    ("name", "column", "value", "message"),
    [
        ("label.csv", "number", "x", r"label\.csv line 3: column `number` must be an integer, got 'x'"),
        ("label.csv", "number", "2", r"label\.csv line 3: label number 2 is listed twice"),
        ("c_object.csv", "number", "", r"c_object\.csv line 3: column `number` must be an integer, got ''"),
        ("c_object.csv", "coverage", "lots", r"c_object\.csv line 3: column `coverage` must be a number, got 'lots'"),
    ],
)
def test_bad_label_rows_are_named(root, name, column, value, message):
    header, rows = _read_csv(root / name)
    rows[1][column] = value
    if value == "2":  # the row after the one numbered 2
        rows[2][column] = value
        message = message.replace("line 3", "line 4")
    _write_csv(root / name, header, rows)
    with pytest.raises(ValueError, match=message):
        BrodenDataset(root)


def test_workers_read_the_same_items(example):
    data = BrodenDataset(example)
    alone = [data[i] for i in range(len(data))]
    loader = DataLoader(data, batch_size=2, num_workers=2)
    images, labels = zip(*loader)
    assert torch.equal(torch.cat(images), torch.stack([a[0] for a in alone]))
    assert torch.equal(torch.cat(labels), torch.stack([a[1] for a in alone]))


def test_ranks_read_disjoint_shards_that_cover_the_folder_in_index_order(example, monkeypatch):
    data = BrodenDataset(example)
    source = ImageSet(data, vocabulary=data.vocabulary)
    runner = ImageRunner(torch.nn.Identity(), distributed=True)
    shards = []
    for rank in range(4):  # 6 images over 4 ranks: shards of 2, 2, 1, 1
        monkeypatch.setattr(ImageRunner, "rank_world", property(lambda self, r=rank: (r, 4)))
        shards.append(runner.shard(source).tolist())
    assert [i for shard in shards for i in shard] == list(range(len(data)))
    assert sorted(len(s) for s in shards) == [1, 1, 2, 2]
    for shard in shards:
        images, labels = source[shard]
        assert torch.equal(labels, torch.stack([data[i][1] for i in shard]))


def make_reader() -> torch.nn.Module:
    """A small convolutional reader of RGB images (the command line loads it as tests.test_broden:make_reader)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, 6, 3, 2, 1))


def test_command_line_reads_a_broden_folder_with_a_preset(example, tmp_path, capsys):
    from lightning_dissect.cli import main

    out = tmp_path / "out"
    code = main([
        "dissect", "--network", "tests.test_broden:make_reader", "--layers", "2", "--broden", str(example),
        "--categories", "object,scene", "--preset", "netdissect", "--quantile", "0.99", "--batch-size", "4",
        "--visualize-units", "0", "--quiet", "--output", str(out),
    ])
    assert code == 0, capsys.readouterr().err
    from lightning_dissect.result import DissectionResult

    result = DissectionResult.from_json(out / "dissect.json")
    # the preset's settings, except the quantile typed beside it
    assert result.settings["quantile"] == 0.99 and result.settings["quantile_over"] == "raw"
    assert result.settings["unit_area"] == "category" and result.settings["num_samples"] == 6
    assert result.metadata["broden"] == str(example) and result.metadata["categories"] == ["object", "scene"]
    assert {u.label for u in result["2"].units} <= {"-", *(f"{c}-{j}" for c in ("object", "scene") for j in range(3))}


def test_command_line_names_a_missing_broden_file_in_one_line(root, capsys):
    from lightning_dissect.cli import main

    _, rows = _read_csv(root / "index.csv")
    (root / "images" / rows[4]["object"]).unlink()
    code = main(["dissect", "--network", "tests.test_broden:make_reader", "--layers", "2", "--broden", str(root),
                 "--batch-size", "2", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "index.csv line 6" in err and f"{rows[4]['object']} not found" in err
