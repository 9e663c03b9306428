"""Thresholds at any scale: multiplying a layer's output by a positive constant leaves the dissection unchanged.

The reference is the same dissection without the factor: every unit's label must be the same and
its IoU the same (exactly for a power of two, whose product is exact in floating point; within
the threshold histogram's resolution for any other factor).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lightning_dissect import ConceptVocabulary, dissect_images

VOCABULARY = ConceptVocabulary(
    ("unlabeled", "top", "bottom", "left", "bright", "dark"),
    ("none", "object", "object", "object", "colour", "colour"),
)


class Scaled(nn.Module):
    """The reader's last layer times ``factor``, in ``dtype`` (what the dissection captures)."""

    def __init__(self, factor: float, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.factor, self.dtype = factor, dtype

    def forward(self, x):
        return (x.double() * self.factor).to(self.dtype)


def _data():
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(24, 3, 16, 16, generator=gen)
    rows = torch.arange(16).view(1, 16, 1).expand(24, 16, 16)
    cols = torch.arange(16).view(1, 1, 16).expand(24, 16, 16)
    horizon = torch.randint(4, 12, (24, 1, 1), generator=gen)
    objects = torch.where(rows < horizon, 1, torch.where(cols < 5, 3, 2))
    colours = torch.where(images.mean(1) > 0.5, 4, 5)
    return TensorDataset(images, torch.stack([objects, colours], 1))


def _reader(factor: float, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), Scaled(factor, dtype))


def _dissect(factor: float, mode: str, dtype: torch.dtype = torch.float32, **settings):
    result = dissect_images(
        _reader(factor, dtype), ["3"], _data(), vocabulary=VOCABULARY, threshold_mode=mode, num_levels=16, quantile=0.8,
        batch_size=8, progress=False, chance_baseline=False, interpretable="paper", **settings,
    )
    layer = result["3"]
    return [u.label for u in layer.units], torch.tensor([u.iou for u in layer.units], dtype=torch.float64), layer


@pytest.mark.parametrize("over", ["upsampled", "raw"])
@pytest.mark.parametrize("mode", ["quantile", "iqr"])
def test_any_positive_factor_leaves_labels_and_iou_unchanged(mode, over):
    labels, iou, _ = _dissect(1.0, mode, quantile_over=over)
    assert max(iou) > 0.1  # the units do detect something (big masks at the 0.8 level)
    for exponent in (-40, -23, 17, 40):  # powers of two: the very same numbers
        got_labels, got_iou, _ = _dissect(2.0**exponent, mode, quantile_over=over)
        assert got_labels == labels, exponent
        assert torch.equal(got_iou, iou), exponent
    for factor in (1e-12, 1e-7, 3.3e-3, 7.0, 1e6, 1e12):
        got_labels, got_iou, _ = _dissect(factor, mode, quantile_over=over)
        if mode == "quantile":
            assert got_labels == labels, factor
        else:
            # iqr: a unit whose two best (level, concept) pairs are within the histogram's
            # resolution of each other may take the other one (at most one unit of 12 here)
            assert sum(a != b for a, b in zip(got_labels, labels)) <= 1, factor
        # another factor moves a threshold within the histogram's resolution (2**-8 relative); in
        # iqr mode that can also move a unit to the neighbouring candidate level of nearly equal IQR
        tolerance = 0.02 if mode == "quantile" else 0.05
        assert float((got_iou - iou).abs().max()) <= tolerance, factor


@pytest.mark.parametrize(
    ("dtype", "factors"),
    [(torch.bfloat16, (1e-12, 1e-7, 1e12)), (torch.float16, (1e-3, 2.0**-10, 100.0))],
)
def test_half_precision_layers_at_any_scale(dtype, factors):
    labels, iou, _ = _dissect(1.0, "quantile", dtype)
    assert max(iou) > 0.1
    for factor in factors:  # fp16 ends at 65504; below 6e-5 its values lose bits (subnormal)
        got_labels, got_iou, _ = _dissect(factor, "quantile", dtype)
        assert got_labels == labels, factor
        # the layer's own rounding to 8 (bf16) or 11 (fp16) bits differs with the factor
        assert float((got_iou - iou).abs().max()) <= 0.05, factor
