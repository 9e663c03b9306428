"""A Broden-format folder read as it is: ``BrodenDataset(root, categories=None)``.

A Broden folder (NetDissect's data set, and anything written in its format) holds:

* ``index.csv``: one row per image: ``image`` (a path under ``images/``), ``split``, the image size
  ``ih, iw``, the segmentation size ``sh, sw`` and one column per category holding
  ``;``-separated entries: a PNG (path under ``images/``) of that category's pixel labels, or an
  integer, an image-level label (a scene, a texture) that covers the whole image;
* ``category.csv``: the categories (column ``name``);
* ``label.csv``: the labels (``number``, ``name``, ...); number 0 means "no label";
* ``c_<category>.csv``: the labels of each category with their ``coverage``.

A label PNG encodes label ``R + 256 * G`` in its red and green channels. An item is
``(image, labels)``: the image a float RGB tensor ``(3, ih, iw)`` in ``[0, 1]`` (torchvision's
convention) and the labels an int64 ``(L, sh, sw)`` tensor, one channel per PNG or image-level
label of the chosen categories, padded with 0 ("no label") to the largest ``L`` of the folder.
Images are in ``index.csv`` order; rows without any label of the chosen categories are left out
(as NetDissect-Lite does). Each concept's category is its *primary* category, the chosen category
in which it covers the most pixels (its ``coverage`` in ``c_<category>.csv``), as NetDissect-Lite
assigns it.

Only the CSVs are read when the dataset is built; each item's files are read when the item is, so
memory does not grow with the number of images and a ``DataLoader`` with workers streams it.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_dissect._utils.checks import argument_name
from lightning_dissect.vocabulary import NO_CATEGORY, ConceptVocabulary

__all__ = ["BrodenDataset", "BrodenFileNotFoundError", "BrodenWarning"]

_META = ("image", "split", "ih", "iw", "sh", "sw")


class BrodenWarning(UserWarning):
    """A Broden row that is read in a way its author may not expect (named in the message)."""


class BrodenFileNotFoundError(FileNotFoundError, ValueError):
    """A file that ``index.csv`` names is not in ``images/`` (the message names the row and the file).

    Also a ``ValueError``, as every other bad row of the folder is.
    """


def _integer(row: dict[str, Any], column: str, path: Path, line: int) -> int:
    """``row[column]`` as an int, or an error naming the file, line and column."""
    text = row.get(column)
    try:
        return int(str(text).strip())
    except ValueError:
        raise ValueError(
            f"{path} line {line}: column `{column}` must be an integer, got {text!r}"
            + (" (the row has fewer fields than the header)" if text is None else "")
        ) from None


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - Pillow is a dependency
        raise ImportError("reading a Broden folder needs Pillow: pip install 'pillow>=10.1'") from err
    return Image


def _rows(path: Path, argument: str) -> list[dict[str, str]]:
    if not path.is_file():
        raise ValueError(
            f"{argument_name(argument)}: {path.name} not found in {path.parent} (a Broden folder holds index.csv, "
            "category.csv, label.csv and c_<category>.csv)"
        )
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _read_vocabulary(root: Path, categories: Sequence[str], root_name: str) -> ConceptVocabulary:
    """One concept per ``label.csv`` number, each with its primary category (largest coverage) among ``categories``."""
    labels = _rows(root / "label.csv", root_name)
    numbers: dict[int, str] = {}
    for line, row in enumerate(labels, start=2):
        number = _integer(row, "number", root / "label.csv", line)
        if number < 0 or number in numbers:
            raise ValueError(
                f"{root / 'label.csv'} line {line}: label number {number} is "
                + ("negative" if number < 0 else "listed twice")
            )
        numbers[number] = row.get("name") or f"label {number}"
    if not numbers:
        raise ValueError(f"{root / 'label.csv'} lists no label")
    size = max(numbers) + 1
    coverage = [[0.0] * size for _ in categories]
    member = [[False] * size for _ in categories]
    for g, cat in enumerate(categories):
        for line, row in enumerate(_rows(root / f"c_{cat}.csv", root_name), start=2):
            n = _integer(row, "number", root / f"c_{cat}.csv", line)
            if n < size:
                member[g][n] = True
                try:
                    coverage[g][n] = float(row.get("coverage") or 0.0)
                except ValueError:
                    raise ValueError(
                        f"{root / f'c_{cat}.csv'} line {line}: column `coverage` must be a number, "
                        f"got {row.get('coverage')!r}"
                    ) from None
    names, cats = [], []
    for n in range(size):
        name = numbers.get(n, f"label {n}")
        if n == 0:
            names.append(name or "-")
            cats.append(NO_CATEGORY)
            continue
        best = [(coverage[g][n], g) for g in range(len(categories)) if member[g][n]]
        cats.append(categories[max(best)[1]] if best else NO_CATEGORY)
        names.append(name if name not in names else f"{name} ({n})")
    return ConceptVocabulary(tuple(names), tuple(cats), unlabeled_index=0)


_Item = tuple[int, str, tuple[int, int], tuple[int, int], list[str | int]]


def _read_index(
    root: Path, categories: Sequence[str], size: int, split: str | None, root_name: str
) -> list[_Item]:
    """The ``index.csv`` rows with labels of ``categories``: ``(line, image, image size, label size, entries)``."""
    items: list[_Item] = []
    index = _rows(root / "index.csv", root_name)
    if index:
        missing = [c for c in (*_META, *categories) if c not in index[0]]
        if missing:
            raise ValueError(f"{root / 'index.csv'} lacks the column(s) {missing}")
    for line, row in enumerate(index, start=2):
        if None in row or None in row.values():  # csv.DictReader's marks of extra / missing fields
            header = sum(key is not None for key in row)
            fields = header - sum(value is None for value in row.values()) + len(row.get(None) or ())
            raise ValueError(f"{root / 'index.csv'} line {line}: {fields} fields, the header has {header}")
        if split is not None and row.get("split") != split:
            continue
        entries: list[str | int] = []
        for cat in categories:
            for part in (row.get(cat) or "").split(";"):
                part = part.strip()
                if not part:
                    continue
                if part.isdigit():
                    value = int(part)
                    if value >= size:
                        raise ValueError(
                            f"{root / 'index.csv'} line {line} ({row['image']}): image-level {cat} label "
                            f"{value} is not in {root / 'label.csv'} (numbers 0..{size - 1})"
                        )
                    if value:
                        entries.append(value)
                else:
                    entries.append(part)
        if not entries:
            continue  # no label of the chosen categories (NetDissect-Lite leaves these out)
        index_path = root / "index.csv"
        if not row.get("image"):
            raise ValueError(f"{index_path} line {line}: column `image` is empty")
        image_size = (_integer(row, "ih", index_path, line), _integer(row, "iw", index_path, line))
        label_size = (_integer(row, "sh", index_path, line), _integer(row, "sw", index_path, line))
        if min(*image_size, *label_size) < 1:
            raise ValueError(
                f"{index_path} line {line} ({row['image']}): sizes must be positive, got image {image_size}, "
                f"segmentation {label_size}"
            )
        if image_size[0] % label_size[0] or image_size[1] % label_size[1]:
            raise ValueError(
                f"{root / 'index.csv'} line {line} ({row['image']}): segmentation size {label_size} is not "
                f"an integer fraction of the image size {image_size}"
            )
        items.append((line, row["image"], image_size, label_size, entries))
    return items


class BrodenDataset(Dataset):
    """The images and labels of a Broden-format folder, with their :attr:`vocabulary`.

    Args:
        root: The folder holding ``index.csv``, ``category.csv``, ``label.csv``,
            ``c_<category>.csv`` and ``images/``.
        categories: The categories to read (e.g. ``["object", "part"]``); ``None``: every one of
            ``category.csv``.
        split: Keep only the rows of this ``split`` (``None``: all).
        names: How errors name the arguments ``root`` and ``categories`` (e.g. the command line's
            ``{"root": "--broden", "categories": "--categories"}``); each defaults to its own name.

    Attributes:
        vocabulary: One concept per ``label.csv`` number (index = number; 0 is "no label"), each
            with its primary category among ``categories``.
        labels_source: Where the labels come from, named in error messages.

    Raises:
        ValueError: A missing CSV or column, an unknown category, a row whose numbers do not parse,
            an image-level label that ``label.csv`` does not list (each naming the file, line and
            value). When an item is read: a label PNG at another size than ``sh, sw`` or holding a
            label that ``label.csv`` does not list, a file that cannot be read
            (:class:`BrodenFileNotFoundError`, also a ``ValueError``, for a missing one). An image
            at another size than ``ih, iw`` is read at its own size with a :class:`BrodenWarning`.

    Examples:
        >>> import tempfile
        >>> from lightning_dissect.engine.broden import write_example_broden
        >>> root = write_example_broden(tempfile.mkdtemp(), num_images=3)
        >>> data = BrodenDataset(root)
        >>> image, labels = data[0]
        >>> tuple(image.shape), labels.dtype, len(data), data.vocabulary.category_names
        ((3, 16, 16), torch.int64, 3, ('color', 'object', 'part', 'scene'))
    """

    def __init__(
        self,
        root: str | Path,
        categories: Sequence[str] | None = None,
        *,
        split: str | None = None,
        names: Mapping[str, str] | None = None,
    ) -> None:
        root_name, categories_name = ((names or {}).get(key, key) for key in ("root", "categories"))
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"{argument_name(root_name)}: {self.root} is not a folder")
        available = [r["name"] for r in _rows(self.root / "category.csv", root_name)]
        if categories is None:
            chosen = list(available)
        else:
            if isinstance(categories, str):
                categories = [c for c in categories.split(",") if c]
            chosen = list(categories)
            unknown = [c for c in chosen if c not in available]
            if unknown or not chosen:
                raise ValueError(
                    f"{argument_name(categories_name)}: {unknown or chosen} not in {self.root / 'category.csv'}, "
                    f"which lists {available}"
                )
            chosen = [c for c in available if c in chosen]  # category.csv order
        self.categories = tuple(chosen)
        self.vocabulary = _read_vocabulary(self.root, self.categories, root_name)
        self.labels_source = f"{self.root / 'label.csv'} (--broden)"
        self._items = _read_index(self.root, self.categories, len(self.vocabulary), split, root_name)
        if not self._items:
            raise ValueError(
                f"{self.root / 'index.csv'} has no image with labels of the categories {list(self.categories)}"
            )
        self.depth = max(len(item[4]) for item in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def _read(self, name: str, line: int) -> Any:
        """The file ``images/name`` as an RGB Pillow image, or an error naming the row and the file."""
        path = self.root / "images" / name
        if not path.is_file():
            raise BrodenFileNotFoundError(f"{self.root / 'index.csv'} line {line}: {path} not found")
        try:
            with _pillow().open(path) as file:
                return file.convert("RGB")
        except OSError as err:
            raise ValueError(
                f"{self.root / 'index.csv'} line {line}: {path} cannot be read as an image ({err})"
            ) from err

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        line, name, image_size, label_size, entries = self._items[index]
        rgb = self._read(name, line)
        if rgb.size != (image_size[1], image_size[0]):
            warnings.warn(
                f"{self.root / 'index.csv'} line {line}: {name} is {rgb.size[1]}x{rgb.size[0]}, the index says "
                f"{image_size[0]}x{image_size[1]} (ih, iw); read at its own size",
                BrodenWarning,
                stacklevel=2,
            )
        image = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
        image = image.view(rgb.size[1], rgb.size[0], 3).permute(2, 0, 1).float().div_(255.0)
        labels = torch.zeros(self.depth, *label_size, dtype=torch.int64)
        count = self.vocabulary.num_concepts
        for channel, entry in enumerate(entries):
            if isinstance(entry, int):
                labels[channel] = entry  # an image-level label covers the whole image
                continue
            png = self._read(entry, line)
            if png.size != (label_size[1], label_size[0]):
                raise ValueError(
                    f"{self.root / 'index.csv'} line {line}: {entry} is {png.size[1]}x{png.size[0]}, the index "
                    f"says the segmentation is {label_size[0]}x{label_size[1]} (sh, sw)"
                )
            data = torch.frombuffer(bytearray(png.tobytes()), dtype=torch.uint8)
            data = data.view(label_size[0], label_size[1], 3)
            value = data[..., 0].to(torch.int64) + 256 * data[..., 1].to(torch.int64)
            top = int(value.max())
            if top >= count:
                raise ValueError(
                    f"{self.root / 'images' / entry} (index.csv line {line}) holds label {top}, which "
                    f"{self.root / 'label.csv'} does not list (numbers 0..{count - 1})"
                )
            labels[channel] = value
        return image, labels

    def __repr__(self) -> str:
        return f"BrodenDataset({str(self.root)!r}, {len(self)} images, categories={list(self.categories)})"


def write_example_broden(
    root: str | Path,
    num_images: int = 8,
    *,
    image_size: int = 16,
    label_size: int = 8,
    concepts_per_category: int = 3,
    labels_per_image: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a small Broden-format folder (for examples, tests and benchmarks); return its path.

    Categories: ``object`` and ``part`` (one PNG each, parts only on every other image),
    ``color`` (two PNGs: several labels per pixel) and ``scene`` (an image-level label).
    ``concepts_per_category`` labels per category; each pixel of a PNG takes one of them at
    random, or, with ``labels_per_image``, one of that many drawn for the image (as in Broden,
    where an image holds a few of the category's labels).

    Examples:
        >>> import tempfile
        >>> root = write_example_broden(tempfile.mkdtemp(), num_images=2)
        >>> sorted(p.name for p in root.iterdir())
        ['c_color.csv', 'c_object.csv', 'c_part.csv', 'c_scene.csv', 'category.csv', 'images', 'index.csv', 'label.csv']
    """
    Image = _pillow()
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    categories = ("color", "object", "part", "scene")
    numbers = {cat: list(range(1 + g * concepts_per_category, 1 + (g + 1) * concepts_per_category))
               for g, cat in enumerate(categories)}
    _write_example_tables(root, numbers, num_images)
    ratio = image_size // label_size
    with (root / "index.csv").open("w", newline="") as f:
        f.write("image,split,ih,iw,sh,sw," + ",".join(categories) + "\n")
        for i in range(num_images):
            stem = f"img{i:04d}"
            maps = {}
            for cat in ("object", "part", "color"):
                # the second colour PNG holds the first colour label: the first one never repeats it in a pixel
                pool = numbers[cat][1:] if cat == "color" else numbers[cat]
                if labels_per_image is not None and labels_per_image < len(pool):
                    drawn = torch.randperm(len(pool), generator=gen)[:labels_per_image]
                    pool = [pool[int(j)] for j in drawn]
                pick = torch.randint(0, len(pool), (label_size, label_size), generator=gen)
                choice = torch.tensor(pool)[pick]
                blocks = torch.randint(0, 3, (1,), generator=gen).item()
                if blocks:  # some unlabeled pixels
                    choice[: blocks * label_size // 4] = 0
                maps[cat] = choice
            colour2 = torch.where(torch.rand(label_size, label_size, generator=gen) < 0.5, numbers["color"][0], 0)
            pixels = maps["object"].float() / max(1, numbers["part"][-1])
            pixels = pixels.repeat_interleave(ratio, 0).repeat_interleave(ratio, 1)
            rgb = torch.stack([pixels, torch.rand(image_size, image_size, generator=gen), 1 - pixels], -1)
            picture = Image.fromarray((rgb * 255).round().to(torch.uint8).numpy())
            picture.save(root / "images" / f"{stem}.jpg", quality=95)
            files = {}
            for key, value in (*maps.items(), ("color2", colour2)):
                png = torch.stack([value % 256, value // 256, torch.zeros_like(value)], -1).to(torch.uint8)
                Image.fromarray(png.numpy()).save(root / "images" / f"{stem}_{key}.png")
                files[key] = f"{stem}_{key}.png"
            part = files["part"] if i % 2 == 0 else ""
            scene = str(numbers["scene"][int(torch.randint(0, concepts_per_category, (1,), generator=gen))])
            f.write(f"{stem}.jpg,train,{image_size},{image_size},{label_size},{label_size},"
                    f"{files['color']};{files['color2']},{files['object']},{part},{scene}\n")
    return root


def _write_example_tables(root: Path, numbers: Mapping[str, list[int]], num_images: int) -> None:
    """``category.csv``, ``label.csv`` and ``c_<category>.csv`` of :func:`write_example_broden`."""
    categories = tuple(numbers)
    concepts_per_category = len(next(iter(numbers.values())))
    with (root / "category.csv").open("w", newline="") as f:
        f.write("name,first,last,count,frequency\n")
        for cat in categories:
            f.write(f"{cat},{numbers[cat][0]},{numbers[cat][-1]},{concepts_per_category},{num_images}\n")
    with (root / "label.csv").open("w", newline="") as f:
        f.write("number,name,category,frequency,coverage,syns\n-\n".replace("-\n", "0,-,,0,0,\n"))
        for cat in categories:
            for j, n in enumerate(numbers[cat]):
                f.write(f"{n},{cat}-{j},{cat}({j + 1}),1,1.0,\n")
    for cat in categories:
        with (root / f"c_{cat}.csv").open("w", newline="") as f:
            f.write("code,number,name,frequency,coverage\n")
            for j, n in enumerate(numbers[cat]):
                f.write(f"{j + 1},{n},{cat}-{j},1,1.0\n")
