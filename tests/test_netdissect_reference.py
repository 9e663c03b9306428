"""The ``netdissect`` preset against a plain NumPy implementation of NetDissect-Lite's counting rules.

The reference is written from NetDissect-Lite's documented algorithm (Bau et al. 2017 and its
README), reading the Broden-format folder with its own CSV / PNG code:

* a unit's threshold is the 0.995 quantile of its *raw* activation maps over all images;
* each map is upsampled bilinearly (pixel centres aligned) to the label resolution and
  thresholded (strictly greater);
* per label ``c``: ``both[u, c]`` the active pixels carrying ``c``, ``truth[c]`` the pixels carrying
  ``c`` (label 0 is "no label"; an image-level label covers the whole image);
* a unit's area in an image counts toward a category when its active pixels there overlap a label
  of the category; ``IoU = both / (area[u, category(c)] + truth[c] - both)``;
* a unit's label: the best label of each category (the first on a tie), then the best category
  (the last on a tie); IoU 0 everywhere gives label 0.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lightning_dissect import BrodenDataset, dissect_images
from lightning_dissect.engine.broden import write_example_broden

QUANTILE = 0.995
ACCURACY = 2.0**-8  # the threshold histogram's documented relative error at the default relative_accuracy


def _read_folder(root):
    """Images (N, 3, H, W) float in [0, 1], per image a list of (category, label map or int), label -> category."""
    with open(root / "category.csv") as f:
        categories = [r["name"] for r in csv.DictReader(f)]
    primary = {}
    for g, cat in enumerate(categories):
        with open(root / f"c_{cat}.csv") as f:
            for r in csv.DictReader(f):
                n, cov = int(r["number"]), float(r["coverage"])
                if n not in primary or (cov, g) > primary[n]:
                    primary[n] = (cov, g)
    images, labels = [], []
    with open(root / "index.csv") as f:
        for row in csv.DictReader(f):
            rgb = np.asarray(Image.open(root / "images" / row["image"]).convert("RGB"), dtype=np.float64) / 255.0
            images.append(rgb.transpose(2, 0, 1))
            entries = []
            for cat in categories:
                for part in filter(None, row[cat].split(";")):
                    if part.isdigit():
                        entries.append(int(part))
                    else:
                        png = np.asarray(Image.open(root / "images" / part).convert("RGB")).astype(np.int64)
                        entries.append(png[..., 0] + 256 * png[..., 1])
            labels.append((entries, (int(row["sh"]), int(row["sw"]))))
    category_of = {n: g for n, (_, g) in primary.items()}
    return np.stack(images), labels, categories, category_of


def _bilinear(x, size):
    """(h, w) -> size, bilinear with pixel centres aligned and the border replicated."""
    h, w = x.shape
    H, W = size

    def weights(n_in, n_out):
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        m = np.zeros((n_out, n_in))
        m[np.arange(n_out), lo] += 1 - (pos - lo)
        m[np.arange(n_out), hi] += pos - lo
        return m

    return weights(h, H) @ x @ weights(w, W).T


def _reference(acts, labels, categories, category_of, num_labels, thresholds):
    units = acts.shape[1]
    both = np.zeros((units, num_labels))
    truth = np.zeros(num_labels)
    area = np.zeros((units, len(categories)))
    cat = np.array([category_of.get(n, -1) for n in range(num_labels)])
    for i, (entries, size) in enumerate(labels):
        maps = [np.full(size, e) if isinstance(e, int) else e for e in entries]
        for m in maps:
            truth += np.bincount(m.ravel(), minlength=num_labels)
        truth[0] = 0
        for u in range(units):
            mask = _bilinear(acts[i, u], size) > thresholds[u]
            if not mask.any():
                continue
            hit = np.zeros(len(categories), bool)
            for m in maps:
                counted = np.bincount(m[mask], minlength=num_labels)
                counted[0] = 0
                both[u] += counted
                for n in np.nonzero(counted)[0]:
                    hit[cat[n]] = True
            area[u] += mask.sum() * hit
    unit_area = np.where(cat >= 0, area[:, np.maximum(cat, 0)], 0)
    union = unit_area + truth - both
    iou = np.where(union > 0, both / np.where(union > 0, union, 1), 0.0)
    label = np.zeros(units, int)
    for u in range(units):
        best_score, best = 0.0, 0
        for g in range(len(categories)):
            members = np.nonzero(cat == g)[0]
            c = members[np.argmax(iou[u, members])]  # the first best label of the category
            if iou[u, c] > 0 and iou[u, c] >= best_score:  # the last best category
                best_score, best = iou[u, c], c
        label[u] = best
    return iou, label


@pytest.mark.parametrize("categories", [None, ["object", "part", "scene"]])
def test_netdissect_preset_reproduces_netdissect_lite(tmp_path, categories):
    root = write_example_broden(tmp_path / "broden", num_images=14, image_size=32, label_size=16, seed=4)
    torch.manual_seed(0)
    reader = nn.Sequential(
        nn.Conv2d(3, 10, 3, padding=1), nn.ReLU(), nn.Conv2d(10, 10, 3, stride=4, padding=1), nn.ReLU()
    )
    data = BrodenDataset(root, categories)
    result = dissect_images(reader, ["3"], data, preset="netdissect", batch_size=5, progress=False)
    units = result["3"].units

    images, labels, names, category_of = _read_folder(root)
    if categories is not None:  # the reference reads the chosen categories only
        keep = [g for g, n in enumerate(names) if n in categories]
        with open(root / "index.csv") as f:
            rows = list(csv.DictReader(f))
        labels = []
        for row in rows:
            entries = []
            for n in [names[g] for g in keep]:
                for part in filter(None, row[n].split(";")):
                    if part.isdigit():
                        entries.append(int(part))
                    else:
                        png = np.asarray(Image.open(root / "images" / part).convert("RGB")).astype(np.int64)
                        entries.append(png[..., 0] + 256 * png[..., 1])
            labels.append((entries, (int(row["sh"]), int(row["sw"]))))
        remap = {old: new for new, old in enumerate(keep)}
        category_of = {n: remap[g] for n, g in category_of.items() if g in remap}
        names = [names[g] for g in keep]
    with torch.no_grad():
        acts = reader(torch.from_numpy(images).float()).double().numpy()

    # thresholds: the 0.995 quantile of the raw maps, within the histogram's documented error
    raw = acts.transpose(1, 0, 2, 3).reshape(acts.shape[1], -1)
    k = max(1, math.ceil(QUANTILE * raw.shape[1] * (1 - 1e-12)))
    exact = np.sort(raw, 1)[:, k - 1]
    ours = np.array([u.level for u in units])
    assert np.all(np.abs(ours - exact) <= ACCURACY * np.abs(exact) + 1e-12)

    # at equal thresholds: every label and every IoU
    iou, label = _reference(acts, labels, names, category_of, data.vocabulary.num_concepts, ours)
    assert [u.concept_index for u in units] == label.tolist()
    assert np.abs(result["3"].iou.double().numpy() - iou).max() <= 1e-6
    assert np.abs(np.array([u.iou for u in units]) - iou[np.arange(len(units)), label]).max() <= 1e-6
    assert sum(u.iou > 0 for u in units) >= len(units) // 2  # the units do overlap the labels
    # the paper's cut
    assert [u.interpretable for u in units] == [bool(iou[j, label[j]] > 0.04) for j in range(len(units))]


def test_netdissect_chance_iou_uses_the_per_category_area_of_the_paired_labels(tmp_path):
    """The chance IoU: each image's maps against the previous image's labels, under the same area rule."""
    root = write_example_broden(tmp_path / "broden", num_images=9, image_size=32, label_size=16, seed=7)
    torch.manual_seed(1)
    reader = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, stride=4, padding=1))
    data = BrodenDataset(root)
    # units on a fifth of the pixels: the rules' areas differ (at the top 0.5 % they rarely do here)
    result = dissect_images(reader, ["2"], data, preset="netdissect", quantile=0.8, batch_size=4, progress=False)
    images, labels, names, category_of = _read_folder(root)
    with torch.no_grad():
        acts = reader(torch.from_numpy(images).float()).double().numpy()
    thresholds = np.array([u.level for u in result["2"].units])
    paired = labels[-1:] + labels[:-1]  # image i against the labels of image i - 1, image 0 against the last
    chance, _ = _reference(acts, paired, names, category_of, data.vocabulary.num_concepts, thresholds)
    own, _ = _reference(acts, labels, names, category_of, data.vocabulary.num_concepts, thresholds)
    assert result["2"].chance_iou is not None
    assert np.abs(result["2"].chance_iou.double().numpy() - chance).max() <= 1e-6
    assert np.abs(result["2"].iou.double().numpy() - own).max() <= 1e-6
    assert np.abs(chance - own).max() > 1e-3  # the pairing does change the counts
    # the area over all images (the rule of unit_area="all") would give another chance IoU
    all_images = dissect_images(reader, ["2"], data, preset="netdissect", quantile=0.8, unit_area="all", batch_size=4,
                                progress=False)["2"].chance_iou.double().numpy()
    assert np.abs(all_images - chance).max() > 1e-3
