"""``.plot()`` of the metrics: what is drawn is checked against NumPy references of the same data."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lightning_dissect.metrics import ConceptPixelFraction, UnitConceptIoU, UnitQuantiles  # noqa: E402
from lightning_dissect.visual.colours import IOU_SCALE_MAX  # noqa: E402

NAMES = ["none", "sky", "tree", "grass", "door"]


def _texts(labels):
    return [t.get_text() for t in labels]


def test_iou_heatmap_shows_the_best_units_on_a_diagonal():
    iou = torch.tensor([
        [0.00, 0.10, 0.02, 0.00, 0.00],  # unit 0: sky 0.10
        [0.00, 0.00, 0.40, 0.05, 0.00],  # unit 1: tree 0.40
        [0.00, 0.30, 0.00, 0.00, 0.01],  # unit 2: sky 0.30
        [0.00, 0.00, 0.00, 0.00, 0.00],  # unit 3: nothing
        [0.00, 0.02, 0.00, 0.20, 0.00],  # unit 4: grass 0.20
    ])
    metric = UnitConceptIoU(num_units=5, num_concepts=5, thresholds=torch.zeros(5))
    fig, ax = metric.plot(iou, concept_names=NAMES, max_units=4)
    # NumPy reference: the 4 units with the highest best IoU; columns = their best concepts by
    # first appearance (units by best IoU), then other concepts with IoU > 0 among them
    a = iou.numpy()
    best = a.max(1)
    top = sorted(range(5), key=lambda u: (-best[u], u))[:4]
    cols = []
    for u in top:
        if a[u].argmax() not in cols:
            cols.append(int(a[u].argmax()))
    rest = a[top].max(0)
    cols += [c for c in sorted(range(5), key=lambda c: (-rest[c], c)) if c not in cols and rest[c] > 0]
    rows = sorted(top, key=lambda u: (cols.index(int(a[u].argmax())), -best[u], u))
    assert rows == [1, 2, 0, 4] and cols == [2, 1, 3, 4]
    assert _texts(ax.get_yticklabels()) == [f"unit {u}" for u in rows]
    assert _texts(ax.get_xticklabels()) == [NAMES[c] for c in cols]
    image = ax.images[0]
    np.testing.assert_allclose(np.asarray(image.get_array()), a[rows][:, cols])
    assert image.get_clim() == (0.0, IOU_SCALE_MAX)
    # each unit's best concept is outlined: row i, column of argmax
    outlined = sorted((round(p.get_y() + 0.5), round(p.get_x() + 0.5)) for p in ax.patches)
    assert outlined == sorted((i, cols.index(int(a[u].argmax()))) for i, u in enumerate(rows))
    plt.close(fig)


def test_iou_heatmap_of_levels_takes_each_units_best_or_a_chosen_level():
    iou = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(0))
    metric = UnitConceptIoU(num_units=3, num_concepts=5, thresholds=torch.zeros(3, 4))
    fig, ax = metric.plot(iou, max_units=3, max_concepts=5)
    shown = np.asarray(ax.images[0].get_array())
    rows = [int(t.get_text().split()[1]) for t in ax.get_yticklabels()]
    cols = [int(t.get_text()) for t in ax.get_xticklabels()]
    # NumPy reference: each unit's row at one level, that of its best (level, concept) IoU
    a = iou.numpy()
    best_level = [int(np.argmax(a[u])) // a.shape[2] for u in range(3)]
    reference = np.stack([a[u, best_level[u]] for u in range(3)])
    np.testing.assert_allclose(shown, reference[rows][:, cols], rtol=1e-6)
    fig2, ax2 = metric.plot(iou, level=2, max_units=3, max_concepts=5)
    rows2 = [int(t.get_text().split()[1]) for t in ax2.get_yticklabels()]
    cols2 = [int(t.get_text()) for t in ax2.get_xticklabels()]
    np.testing.assert_allclose(np.asarray(ax2.images[0].get_array()), iou.numpy()[:, 2][rows2][:, cols2], rtol=1e-6)
    with pytest.raises(ValueError, match="concept_names"):
        metric.plot(iou, concept_names=["a"])
    plt.close("all")


def test_iou_heatmap_of_levels_does_not_mix_levels_within_a_unit():
    # unit 0: best IoU sky 0.5 at level 1; tree peaks at level 0 (0.4) where sky is only 0.1
    iou = torch.tensor([[[0.0, 0.1, 0.4], [0.0, 0.5, 0.05]],
                        [[0.0, 0.2, 0.0], [0.0, 0.0, 0.3]]])
    metric = UnitConceptIoU(num_units=2, num_concepts=3, thresholds=torch.zeros(2, 2), ignore_index=0)
    fig, ax = metric.plot(iou, concept_names=["none", "sky", "tree"])
    rows = [int(t.get_text().split()[1]) for t in ax.get_yticklabels()]
    cols = [["none", "sky", "tree"].index(t.get_text()) for t in ax.get_xticklabels()]
    a = iou.numpy()
    reference = np.stack([a[u, int(np.argmax(a[u])) // a.shape[2]] for u in range(2)])
    np.testing.assert_allclose(reference, [[0.0, 0.5, 0.05], [0.0, 0.0, 0.3]], rtol=1e-6)
    assert rows == [0, 1] and cols == [1, 2]
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), reference[rows][:, cols], rtol=1e-6)
    plt.close(fig)


def test_quantile_profile_draws_one_line_per_level():
    gen = torch.Generator().manual_seed(1)
    acts = torch.randn(6, 4, 3, 3, generator=gen).relu()
    metric = UnitQuantiles(num_units=4, quantiles=[0.5, 0.9])
    metric.update(acts)
    fig, ax = metric.plot()
    values = metric.compute().numpy()
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["q = 0.5", "q = 0.9"]
    for j, line in enumerate(lines):
        np.testing.assert_allclose(line.get_xdata(), np.arange(4))
        np.testing.assert_allclose(line.get_ydata(), values[:, j])
    # the values drawn are the per-unit order statistics within the histogram's accuracy
    flat = acts.permute(1, 0, 2, 3).reshape(4, -1).numpy()
    for u in range(4):
        exact = np.sort(flat[u])[int(np.ceil(0.9 * flat.shape[1])) - 1]
        assert abs(lines[1].get_ydata()[u] - exact) <= 0.005 * abs(exact) + 1e-6
    fig2, ax2 = metric.plot(sort=True)
    np.testing.assert_allclose(ax2.get_lines()[1].get_ydata(), np.sort(values[:, 1])[::-1])
    plt.close("all")


def test_concept_fractions_as_bars_with_standard_errors():
    gen = torch.Generator().manual_seed(2)
    segs = torch.randint(0, 5, (7, 6, 6), generator=gen)
    segs[:, 0] = 0
    segs[segs == 4] = 1  # "door" never occurs: no bar
    metric = ConceptPixelFraction(num_concepts=5, ignore_index=0)
    metric.update(segs)
    fig, ax = metric.plot(concept_names=NAMES)
    s = segs.numpy()
    counts = np.array([(s == c).sum() for c in range(5)], dtype=float)
    counts[0] = 0
    fractions = counts / s.size
    order = [c for c in sorted(range(5), key=lambda c: (-fractions[c], c)) if fractions[c] > 0]
    assert _texts(ax.get_yticklabels()) == [NAMES[c] for c in order]
    np.testing.assert_allclose([p.get_width() for p in ax.patches], fractions[order])
    # error bars: standard error of the per-image fraction (every image has 36 pixels)
    per_image = np.stack([[(img == c).mean() for c in range(5)] for img in s])
    se = per_image.std(0, ddof=1) / np.sqrt(len(s))
    from matplotlib.container import ErrorbarContainer

    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)][0]
    segments = bars.lines[2][0].get_segments()
    np.testing.assert_allclose([seg[1][0] - seg[0][0] for seg in segments], 2 * se[order], rtol=1e-9)
    plt.close(fig)


def test_plot_draws_into_given_axes_and_needs_matplotlib(monkeypatch):
    metric = ConceptPixelFraction(num_concepts=3)
    metric.update(torch.tensor([[[1, 2]]]))
    fig, ax = plt.subplots()
    assert metric.plot(ax=ax) == (fig, ax)
    plt.close(fig)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ModuleNotFoundError, match=r"lightning-dissect\[plot\]"):
        metric.plot()
