"""The picture glue (grey to RGB, enlarging, stacking rows, a strip as PNG) against NumPy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_dissect.visual.visualize import as_rgb, encode_png, enlarge, image_strip, stack_rows, strip_png


def _frames(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def test_as_rgb_repeats_a_grey_channel_and_keeps_rgb():
    grey = _frames(2, 1, 5, 4)
    want = np.repeat(grey.numpy(), 3, axis=1)
    assert np.array_equal(as_rgb(grey).numpy(), want)
    assert np.array_equal(as_rgb(grey[0]).numpy(), want[0])
    rgb = _frames(2, 3, 5, 4, seed=1)
    assert as_rgb(rgb) is rgb


@pytest.mark.parametrize("height", [8, 32, 48, 95, 96, 128])
def test_enlarge_by_the_largest_whole_factor_below_96(height):
    frames = _frames(2, 3, height, height + 3)
    factor = max(1, 96 // height)
    want = frames.numpy().repeat(factor, axis=2).repeat(factor, axis=3)
    got = enlarge(frames)
    assert np.array_equal(got.numpy(), want)
    assert got.shape[-2] <= max(96, height)


def test_stack_rows_pads_white_and_separates_rows():
    rows = [_frames(3, 2, 5), _frames(3, 4, 3, seed=1), _frames(3, 1, 6, seed=2)]
    gap = 2
    width = 6
    want = np.full((3, 2 + 4 + 1 + 2 * gap, width), 255, dtype=np.uint8)
    top = 0
    for row in rows:
        r = row.numpy()
        want[:, top : top + r.shape[1], : r.shape[2]] = r
        top += r.shape[1] + gap
    assert np.array_equal(stack_rows(rows, gap=gap).numpy(), want)
    with pytest.raises(ValueError, match="at least one row"):
        stack_rows([])


def test_strip_png_is_the_strip_of_the_frames():
    tiles = _frames(3, 3, 4, 4)
    assert strip_png(tiles) == encode_png(image_strip(list(tiles), gap=2))
    assert strip_png(tiles[0]) == encode_png(tiles[0])
    assert strip_png(tiles[:0]) is None
