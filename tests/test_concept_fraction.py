"""``ConceptPixelFraction`` against an independent NumPy loop over pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_dissect.metrics import ConceptPixelFraction
from lightning_dissect.metrics.concept_fraction import (
    concept_pixel_counts,
    per_image_concept_fractions,
)


def reference_counts(seg: np.ndarray, num_concepts: int, ignore_index=None, mask=None):
    """Per-image concept pixel counts and pixel totals by a plain loop (the definition)."""
    if seg.ndim == 3:
        seg = seg[:, None]
    batch, _, height, width = seg.shape
    counts = np.zeros((batch, num_concepts), dtype=np.int64)
    totals = np.zeros(batch, dtype=np.int64)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                if mask is not None and not mask[y, x]:
                    continue
                totals[b] += 1
                seen = set()
                for label in seg[b, :, y, x].tolist():
                    if label == ignore_index or label in seen:
                        continue
                    seen.add(label)
                    counts[b, label] += 1
    return counts, totals


def reference_fraction(seg, num_concepts, ignore_index=None, mask=None):
    counts, totals = reference_counts(seg, num_concepts, ignore_index, mask)
    return counts.sum(0) / max(1, totals.sum())


def test_single_label_matches_loop(nprng):
    seg = nprng.integers(0, 5, size=(6, 7, 9))
    metric = ConceptPixelFraction(5)
    for part in np.array_split(seg, 3):
        metric.update(torch.from_numpy(part))
    result = metric.compute()
    assert result.dtype == torch.float64 and result.shape == (5,)
    np.testing.assert_array_equal(result.numpy(), reference_fraction(seg, 5))
    assert float(result.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("ignore_index", [None, 0, 255])
def test_multilabel_with_repeats_and_ignore_index(nprng, ignore_index):
    seg = nprng.integers(0, 4, size=(5, 3, 6, 6))
    seg[:, 1] = np.where(nprng.random((5, 6, 6)) < 0.5, seg[:, 0], seg[:, 1])  # repeats
    if ignore_index == 255:
        seg[:, 2, :2] = 255
    metric = ConceptPixelFraction(4, ignore_index=ignore_index)
    metric.update(torch.from_numpy(seg))
    expected = reference_fraction(seg, 4, ignore_index)
    np.testing.assert_array_equal(metric.compute().numpy(), expected)
    if ignore_index == 0:
        assert float(metric.compute()[0]) == 0.0
    # ignored pixels count toward the total: the fractions need not sum to 1
    assert int(metric.total_pixels) == 5 * 36


def test_region_mask_any_resolution(nprng):
    seg = nprng.integers(0, 3, size=(4, 8, 8))
    fine = torch.zeros(16, 16)
    fine[:8, 4:] = 1.0  # pooled to 8x8: rows 0-3, cols 2-7
    coarse = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # nearest-upsampled: rows 0-3, cols 0-3
    for mask, ref in ((fine, np.s_[:4, 2:]), (coarse, np.s_[:4, :4])):
        ref_mask = np.zeros((8, 8), dtype=bool)
        ref_mask[ref] = True
        metric = ConceptPixelFraction(3)
        metric.update(torch.from_numpy(seg), mask=mask)
        np.testing.assert_array_equal(
            metric.compute().numpy(), reference_fraction(seg, 3, mask=ref_mask)
        )
        counts, totals = concept_pixel_counts(torch.from_numpy(seg), 3, mask=mask)
        ref_counts, ref_totals = reference_counts(seg, 3, mask=ref_mask)
        np.testing.assert_array_equal(counts.numpy(), ref_counts)
        np.testing.assert_array_equal(totals.numpy(), ref_totals)


def test_per_image_fractions_and_standard_error(nprng):
    seg = nprng.integers(0, 3, size=(10, 5, 5))
    per_image = per_image_concept_fractions(torch.from_numpy(seg), 3)
    counts, totals = reference_counts(seg, 3)
    np.testing.assert_allclose(per_image.numpy(), counts / totals[:, None], rtol=0, atol=1e-15)
    metric = ConceptPixelFraction(3)
    metric.update(torch.from_numpy(seg[:4]))
    metric.update(torch.from_numpy(seg[4:]))
    expected = per_image.numpy().std(0, ddof=1) / np.sqrt(10)
    np.testing.assert_allclose(metric.standard_error().numpy(), expected, rtol=1e-10)
    # the mean of per-image fractions equals the pooled fraction at a fixed size
    np.testing.assert_allclose(metric.compute().numpy(), per_image.numpy().mean(0), rtol=1e-12)


def test_empty_and_validation():
    metric = ConceptPixelFraction(3)
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert metric.compute().tolist() == [0.0, 0.0, 0.0]
    assert torch.isnan(metric.standard_error()).all()
    with pytest.raises(ValueError, match="outside"):
        metric.update(torch.full((1, 2, 2), 3))
    with pytest.raises(TypeError, match="integer"):
        metric.update(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="must be"):
        metric.update(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="mask"):
        metric.update(torch.zeros(2, 4, 4, dtype=torch.long), mask=torch.ones(3, 4, 4))
    with pytest.raises(ValueError, match="num_concepts"):
        ConceptPixelFraction(0)
    with pytest.raises(TypeError, match="ignore_index"):
        ConceptPixelFraction(3, ignore_index=1.5)  # type: ignore[arg-type]


def test_states_are_integer_sums():
    metric = ConceptPixelFraction(2)
    for name in ("concept_pixels", "total_pixels", "num_images", "concept_pixels_sq"):
        assert getattr(metric, name).dtype == torch.int64
        assert metric._reductions[name] is not None
    assert metric.full_state_update is False
