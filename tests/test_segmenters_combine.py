"""adapt_input, merge_segmenters and the channel/range errors, against plain loop references."""

import numpy as np
import pytest
import torch

from lightning_dissect import ConceptVocabulary
from lightning_dissect.metrics import UnitConceptIoU
from lightning_dissect.segmenters import (
    CallableSegmenter,
    MergedSegmenter,
    Segmenter,
    adapt_input,
    merge_segmenters,
    validate_images,
)


def rand(shape, low=0.0, high=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(*shape, generator=g)


# ---------------------------------------------------------------- errors that name the fix
def test_range_error_names_generate_and_adapt_input():
    # [-1, 1] images given to a [0, 1] segmenter ([0, 1] images lie inside [-1, 1]: not detectable)
    with pytest.raises(ValueError, match=r"given where \[0, 1\] is declared") as err:
        validate_images(rand((2, 3, 4, 4), -1, 1), (0, 1), name="generator output")
    msg = str(err.value)
    assert "`generator output` has values in" in msg
    assert "`generate=` that maps the generator's images to (0, 1)" in msg
    assert "adapt_input(segmenter, value_range=(-1, 1))" in msg
    with pytest.raises(ValueError, match=r"adapt_input\(segmenter, value_range=\(0, 255\)\)"):
        validate_images(rand((1, 3, 4, 4), 0, 255), (-1, 1))


def test_channel_errors_name_the_fix():
    fix = r"1 channel\(s\).*takes 3 \(RGB\).*generate=.*adapt_input\(segmenter, channels=1\)"
    with pytest.raises(ValueError, match=fix):
        validate_images(rand((2, 1, 4, 4)), (0, 1))
    with pytest.raises(ValueError, match=r"3 channel\(s\).*takes 1.*adapt_input\(segmenter, channels=3\)"):
        validate_images(rand((2, 3, 4, 4)), (0, 1), channels=1)
    validate_images(rand((2, 1, 4, 4)), (0, 1), channels=1)
    with pytest.raises(ValueError, match=r"values in .* given where \[0, 0.5\]"):
        validate_images(rand((2, 1, 4, 4)), (0, 0.5), channels=1)
    with pytest.raises(ValueError, match="`channels`"):
        validate_images(rand((2, 3, 4, 4)), channels=0)


def test_segmenter_call_rejects_grey_images_with_the_fix():
    vocab = ConceptVocabulary(("unlabeled", "bright"), ("none", "colour"))
    seg = CallableSegmenter(lambda x: (x.mean(1) > 0).long(), vocab)
    with pytest.raises(ValueError, match=r"adapt_input\(segmenter, channels=1\)"):
        seg(rand((1, 1, 4, 4)))


# ---------------------------------------------------------------- adapt_input
class Spy:
    """Records the images it is given; labels = 1 where the first channel is above its middle."""

    def __init__(self, value_range=(-1.0, 1.0), channels=3):
        self.vocabulary = ConceptVocabulary(("unlabeled", "on"), ("none", "colour"))
        self.value_range = value_range
        self.channels = channels
        self.multilabel = False
        self.seen = []

    def __call__(self, images):
        validate_images(images, self.value_range, channels=self.channels)
        self.seen.append(images.clone())
        return (images[:, 0] > sum(self.value_range) / 2).long()


def test_adapt_input_maps_range_and_grey_to_rgb():
    spy = Spy()
    seg = adapt_input(spy, value_range=(0, 1), channels=1)
    assert isinstance(seg, Segmenter) and seg.value_range == (0.0, 1.0) and seg.channels == 1
    assert seg.vocabulary is spy.vocabulary and seg.multilabel is False
    x = rand((2, 1, 3, 5))
    out = seg(x)
    given = spy.seen[0]
    assert given.shape == (2, 3, 3, 5)
    xs = x.numpy()
    for b in range(2):
        for c in range(3):
            for i in range(3):
                for j in range(5):
                    assert abs(given[b, c, i, j].item() - (2 * xs[b, 0, i, j] - 1)) < 1e-6
    np.testing.assert_array_equal(out.numpy(), (xs[:, 0] > 0.5).astype(np.int64))
    with pytest.raises(ValueError, match=r"given where \[0, 1\]"):
        seg(rand((1, 1, 2, 2), 0, 255))


def test_adapt_input_rgb_to_grey_and_defaults():
    spy = Spy(value_range=(0.0, 255.0), channels=1)
    seg = adapt_input(spy, value_range=(-1, 1), channels=3)
    x = rand((1, 3, 2, 2), -1, 1)
    seg(x)
    grey = ((x + 1) / 2 * 255).numpy()
    expected = 0.299 * grey[:, 0] + 0.587 * grey[:, 1] + 0.114 * grey[:, 2]
    np.testing.assert_allclose(spy.seen[0][:, 0].numpy(), expected, rtol=1e-5, atol=1e-4)
    same = adapt_input(Spy())
    assert same.value_range == (-1.0, 1.0) and same.channels == 3
    with pytest.raises(ValueError, match="cannot map 2-channel"):
        adapt_input(Spy(), channels=2)
    with pytest.raises(ValueError, match="low < high"):
        adapt_input(Spy(), value_range=(1, 0))
    with pytest.raises(TypeError, match="`segmenter`"):
        adapt_input(object())


# ---------------------------------------------------------------- merge_segmenters
OBJECTS = ConceptVocabulary(
    ("unlabeled", "house", "window", "sky"), ("none", "object", "part", "stuff"), 0, (None, None, 1, None)
)
COLOURS = ConceptVocabulary(("nothing", "red", "sky"), ("none", "colour", "colour"), 0)
PARTS = ConceptVocabulary(("sky", "door"), ("material", "part"), None)  # no unlabeled entry


def objects_fn(x):  # (B, 3, H, W) in [-1, 1] → labels 0..3 at full size
    return ((x[:, 0] + 1) * 2).clamp(0, 3.999).long()


def colours_fn(x):  # [0, 1] → labels 0..2 at half size
    return ((x[:, 1, ::2, ::2]) * 3).clamp(0, 2.999).long()


def parts_fn(x):  # multi-label, 2 channels at double size, labels 0..1
    y = (x > 0).long()[:, :2]
    return y.repeat_interleave(2, -2).repeat_interleave(2, -1)


def make_three():
    return (
        CallableSegmenter(objects_fn, OBJECTS),
        CallableSegmenter(colours_fn, COLOURS, value_range=(0, 1)),
        CallableSegmenter(parts_fn, PARTS, multilabel=True),
    )


def nearest_loop(labels, size):
    h, w = labels.shape
    out = np.zeros(size, dtype=np.int64)
    for i in range(size[0]):
        for j in range(size[1]):
            out[i, j] = labels[min(int((i + 0.5) * h / size[0]), h - 1), min(int((j + 0.5) * w / size[1]), w - 1)]
    return out


def test_merged_vocabulary_prefixes_categories_parents():
    merged = merge_segmenters(*make_three())
    v = merged.vocabulary
    assert v.names == ("unlabeled", "house", "window", "sky", "red", "seg1/sky", "seg2/sky", "door")
    assert v.categories == ("none", "object", "part", "stuff", "colour", "colour", "material", "part")
    assert v.unlabeled_index == 0
    assert v.parents == (None, None, 1, None, None, None, None, None)
    custom = MergedSegmenter(*make_three(), prefixes=("obj", "col", "part"))
    assert custom.vocabulary.names[5:7] == ("col/sky", "part/sky")
    assert merged.multilabel and merged.value_range == (-1.0, 1.0) and merged.channels == 3


@pytest.mark.parametrize("resolution", [None, 6, (4, 10)])
def test_merged_labels_match_a_loop_reference(resolution):
    merged = merge_segmenters(*make_three(), resolution=resolution)
    x = rand((2, 3, 8, 8), -1, 1, seed=3)
    out = merged(x)
    size = (8, 8) if resolution is None else ((6, 6) if resolution == 6 else resolution)
    assert out.shape == (2, 4, *size) and out.dtype == torch.int64
    xs = x.numpy()
    names = merged.vocabulary.names
    for b in range(2):
        # objects: single label, full size, its own indices map by name
        obj = np.clip(((xs[b, 0] + 1) * 2), 0, 3.999).astype(np.int64)
        ref0 = np.vectorize(lambda k: 0 if k == 0 else names.index(OBJECTS.names[k]))(obj)
        col = np.clip(((xs[b, 1, ::2, ::2] + 1) / 2) * 3, 0, 2.999).astype(np.int64)
        ref1 = np.vectorize(lambda k: 0 if k == 0 else names.index(("-", "red", "seg1/sky")[k]))(col)
        np.testing.assert_array_equal(out[b, 0].numpy(), nearest_loop(ref0, size))
        np.testing.assert_array_equal(out[b, 1].numpy(), nearest_loop(ref1, size))
        for c in range(2):
            part = (xs[b, c] > 0).astype(np.int64).repeat(2, 0).repeat(2, 1)
            ref = np.where(part == 0, names.index("seg2/sky"), names.index("door"))
            np.testing.assert_array_equal(out[b, 2 + c].numpy(), nearest_loop(ref, size))


def test_merged_output_feeds_unit_concept_iou():
    merged = merge_segmenters(*make_three(), resolution=4)
    labels = merged(rand((2, 3, 8, 8), -1, 1, seed=5))
    num_concepts = merged.vocabulary.num_concepts
    metric = UnitConceptIoU(num_units=2, num_concepts=num_concepts, thresholds=torch.tensor([0.5, 0.5]))
    acts = rand((2, 2, 4, 4), seed=6)  # same size as the labels: no upsampling
    metric.update(acts, labels)
    iou = metric.compute()
    assert iou.shape == (2, num_concepts)
    # reference: a pixel has concept c if any label channel holds c
    for u in range(2):
        on = acts[:, u].numpy() > 0.5
        for c in range(1, num_concepts):
            has = (labels.numpy() == c).any(1)
            inter, union = (on & has).sum(), (on | has).sum()
            assert abs(float(iou[u, c]) - (inter / union if union else 0.0)) < 1e-6


def test_merge_errors():
    objects, colours, _ = make_three()
    with pytest.raises(ValueError, match="at least one"):
        merge_segmenters()
    with pytest.raises(TypeError, match=r"`segmenters\[1\]`"):
        merge_segmenters(objects, lambda x: x)
    grey = CallableSegmenter(colours_fn, COLOURS, value_range=(0, 1), channels=1)
    with pytest.raises(ValueError, match="different channel counts.*adapt_input"):
        merge_segmenters(objects, grey)
    with pytest.raises(ValueError, match="`prefixes` has 1"):
        merge_segmenters(objects, colours, prefixes=("a",))
    with pytest.raises(ValueError, match="not unique"):
        merge_segmenters(objects, objects, objects, prefixes=("a", "b", "b"))
