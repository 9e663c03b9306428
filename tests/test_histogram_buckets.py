"""``unit_histogram`` bucket counts against a value-by-value loop over the bucket edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_dissect.functional.quantiles import (
    LogHistogramSpec,
    accumulate_anchored_histogram,
    anchored_spec,
    magnitude_exponents,
    unit_histogram,
)


def loop_histogram(values: np.ndarray, spec: LogHistogramSpec):
    """Place every value by comparing its magnitude with the float64 bucket edges."""
    lower, upper = (edge.numpy() for edge in spec.bucket_edges())
    per_sign = spec.buckets_per_sign
    positive_low = lower[per_sign + 1 :]  # ascending lower edges of the positive buckets
    counts = np.zeros((values.shape[0], spec.num_buckets), dtype=np.int64)
    overflow = np.zeros(values.shape[0], dtype=np.int64)
    for u, row in enumerate(values):
        for value in row:
            magnitude = abs(float(value))
            if magnitude < positive_low[0]:
                index = spec.zero_bucket
            else:
                k = int(np.searchsorted(positive_low, magnitude, side="right")) - 1
                if magnitude >= upper[-1]:  # beyond the top bucket
                    overflow[u] += 1
                    k = per_sign - 1
                index = spec.zero_bucket + 1 + k if value > 0 else spec.zero_bucket - 1 - k
            counts[u, index] += 1
    return counts, overflow


@pytest.mark.parametrize(
    "spec", [LogHistogramSpec(), LogHistogramSpec(0.05, 1e-3, 1e3), LogHistogramSpec(0.2, 1e-30, 1e30)]
)
def test_unit_histogram_matches_loop(gen, spec):
    magnitude = torch.exp(torch.empty(4, 300).uniform_(-80, 80, generator=gen))
    sign = torch.where(torch.rand(4, 300, generator=gen) < 0.5, -1.0, 1.0)
    values = (magnitude * sign).float()
    edges = torch.cat(spec.bucket_edges()).float()  # values exactly on (rounded) bucket edges
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 1e-45, -1e-45, 3e38, -3e38])
    pool = torch.cat([edges, torch.nextafter(edges, torch.zeros_like(edges)), special])
    mask = torch.rand(values.shape, generator=gen) < 0.4
    values[mask] = pool[torch.randint(0, len(pool), (int(mask.sum()),), generator=gen)]
    want_counts, want_overflow = loop_histogram(values.numpy(), spec)
    for chunk in (1, 333, 1 << 20):
        counts, overflow = unit_histogram(values, spec, chunk_elements=chunk)
        np.testing.assert_array_equal(counts.numpy(), want_counts)
        np.testing.assert_array_equal(overflow.numpy(), want_overflow)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_anchored_histogram_matches_loop_on_exactly_scaled_values(gen, dtype):
    """The fused anchored histogram equals the loop over ``x * 2**-e``, scaled exactly in float64."""
    spec = anchored_spec(dynamic_range=2.0**40)
    scales = [2.0**-130, 1e-30, 1e-7, 1.0, 3.0, 1e12, 2.0**100]  # the first reaches into subnormals
    rows = []
    for scale in scales:
        row = torch.randn(200, generator=gen, dtype=torch.float64) * scale
        row[torch.rand(200, generator=gen) < 0.3] = 0.0
        row[::17] = row[::17] * 2.0**-45  # below the window of the row's largest value
        rows.append(row)
    values = torch.stack(rows).to(dtype)
    values[1, 3] = -0.0
    values[4, 5], values[5, 6] = float("inf"), float("-inf")
    exponents = magnitude_exponents(values.float())
    scaled = values.double().numpy() * np.exp2(-exponents.double().numpy())[:, None]  # exact
    want_counts, want_overflow = loop_histogram(scaled, spec)
    counts = torch.zeros(len(scales), spec.num_buckets, dtype=torch.int64)
    overflow = torch.zeros(len(scales), dtype=torch.int64)
    for start in range(0, len(scales), 3):  # several calls add up
        accumulate_anchored_histogram(values[start : start + 3], exponents[start : start + 3], spec,
                                      counts[start : start + 3], overflow[start : start + 3])
    np.testing.assert_array_equal(counts.numpy(), want_counts)
    np.testing.assert_array_equal(overflow.numpy(), want_overflow)
    accumulate_anchored_histogram(values, exponents, spec, counts, overflow)
    np.testing.assert_array_equal(counts.numpy(), 2 * want_counts)


def test_anchored_histogram_of_nonnegative_values_skips_the_sign_with_the_same_counts(gen):
    """Non-negative rows (with +0.0, -0.0, tiny values and +inf) counted without the sign: the loop's counts."""
    spec = anchored_spec()
    values = (torch.rand(5, 400, generator=gen, dtype=torch.float64) * torch.tensor([[1e-20], [1e-3], [1.0],
                                                                                        [7.0], [1e20]])).float()
    values[values < values.median(1, keepdim=True).values] = 0.0
    values[0, :7] = -0.0
    values[2, 9] = float("inf")
    values[3, ::13] *= 2.0**-50  # below the window
    exponents = magnitude_exponents(values)
    scaled = values.double().numpy() * np.exp2(-exponents.double().numpy())[:, None]
    want_counts, want_overflow = loop_histogram(scaled, spec)
    counts = torch.zeros(5, spec.num_buckets, dtype=torch.int64)
    overflow = torch.zeros(5, dtype=torch.int64)
    accumulate_anchored_histogram(values, exponents, spec, counts, overflow, nonnegative=True)
    np.testing.assert_array_equal(counts.numpy(), want_counts)
    np.testing.assert_array_equal(overflow.numpy(), want_overflow)


def test_rank_buckets_match_a_numpy_search_over_the_whole_cumulative_histogram(gen):
    """The two-step search (blocks, then the bucket inside one) finds the bucket a full cumulative search finds."""
    import numpy as np

    from lightning_dissect.functional.quantiles import _rank_buckets

    levels = torch.tensor([0.0, 0.001, 0.5, 0.995, 0.999, 1.0], dtype=torch.float64)
    for trial in range(60):
        units, buckets = int(torch.randint(1, 5, (1,), generator=gen)), int(torch.randint(1, 600, (1,), generator=gen))
        sparse = torch.rand(units, buckets, generator=gen) < 0.1
        counts = torch.randint(0, 4, (units, buckets), generator=gen) * sparse
        if trial % 6 == 0:
            counts[0] = 0  # a unit that saw nothing
        if trial % 4 == 0:
            counts[:, -1] += 2  # counts in the last bucket (the overflow column)
        index, total = _rank_buckets(counts, levels)
        for u in range(units):
            cumulative = np.cumsum(counts[u].numpy())
            n = int(cumulative[-1])
            assert int(total[u]) == n
            for q, level in enumerate(levels.tolist()):
                rank = max(1, int(np.ceil(level * n * (1.0 - 1e-12))))
                expected = min(int(np.searchsorted(cumulative, rank, side="left")), buckets - 1)
                assert int(index[u, q]) == expected
