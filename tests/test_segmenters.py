"""Segmenter protocol, vocabulary, validation and the synthetic scene segmenter."""

import json

import pytest
import torch

from lightning_dissect import ConceptVocabulary
from lightning_dissect.segmenters import (
    CallableSegmenter,
    SceneWorld,
    Segmenter,
    SyntheticSceneSegmenter,
    resample_labels,
    validate_images,
    validate_segmentation,
)

VOCAB = ConceptVocabulary(
    names=("unlabeled", "house", "window", "sky"),
    categories=("none", "object", "part", "material"),
    parents=(None, None, 1, None),
)


@pytest.fixture(scope="module")
def world32():
    return SceneWorld(32)


@pytest.fixture(scope="module")
def scenes32(world32):
    return world32.render(2000, seed=123)


# ---------------------------------------------------------------- vocabulary
def test_vocabulary_basics_and_roundtrip():
    assert VOCAB.num_concepts == 4
    assert VOCAB.index("sky") == 3
    assert VOCAB.category_names == ("material", "object", "part")
    with pytest.raises(KeyError, match="tree"):
        VOCAB.index("tree")
    data = json.loads(json.dumps(VOCAB.to_dict()))
    assert ConceptVocabulary.from_dict(data) == VOCAB
    assert VOCAB.parent_table().tolist() == [0, 0, 1, 0]
    no_unlabeled = ConceptVocabulary(("a", "b"), ("object", "object"), unlabeled_index=None)
    assert ConceptVocabulary.from_dict(no_unlabeled.to_dict()) == no_unlabeled
    assert hash(VOCAB) == hash(ConceptVocabulary.from_dict(data))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(names=("a", "b"), categories=("none",)), "categories"),
        (dict(names=("a", "a"), categories=("none", "object")), "twice"),
        (dict(names=("a", "b"), categories=("none", "object"), unlabeled_index=2), "unlabeled"),
        (dict(names=("a", "b"), categories=("object", "object")), "category"),
        (dict(names=("a", "b"), categories=("none", "object"), parents=(None,)), "parents"),
        (dict(names=("a", "b"), categories=("none", "object"), parents=(None, 1)), "parent"),
        (dict(names=("a", "b"), categories=("none", "object"), parents=(None, 5)), "parent"),
        (dict(names=(), categories=()), "at least one"),
    ],
)
def test_vocabulary_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConceptVocabulary(**kwargs)


# ---------------------------------------------------------------- validate_images
def test_validate_images_accepts_good_batches():
    validate_images(torch.zeros(2, 3, 8, 8))
    validate_images(torch.rand(1, 3, 5, 7, dtype=torch.float64))  # [0, 1] lies inside [-1, 1]
    validate_images(torch.full((1, 3, 2, 2), 1.0015))  # within the 1e-3·width tolerance
    validate_images(torch.rand(1, 3, 4, 4) * 255, value_range=(0, 255))


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.zeros(3, 8, 8), "4-D batch .*unsqueeze"),
        (torch.zeros(8, 8), "4-D batch"),
        (torch.zeros(2, 1, 8, 8), r"1 channel.*takes 3 \(RGB\).*adapt_input\(segmenter, channels=1\)"),
        (torch.zeros(2, 8, 8, 3), "channels-last"),
        (torch.zeros(0, 3, 8, 8), "empty batch"),
        (torch.full((1, 3, 2, 2), float("nan")), "NaN or Inf"),
        (torch.full((1, 3, 2, 2), float("inf")), "NaN or Inf"),
        (
            torch.linspace(0, 255, 12).view(1, 3, 2, 2),
            r"values in \[0, 255\] given where \[-1, 1\] is declared",
        ),
        (torch.full((1, 3, 2, 2), -1.01), "values in"),
    ],
)
def test_validate_images_errors(images, match):
    with pytest.raises(ValueError, match=match):
        validate_images(images, (-1, 1))


def test_validate_images_type_and_range_errors():
    with pytest.raises(TypeError, match="torch.Tensor"):
        validate_images([[1.0]])
    with pytest.raises(TypeError, match="`images` must be a floating-point.*uint8"):
        validate_images(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="low < high"):
        validate_images(torch.zeros(1, 3, 2, 2), (1, -1))
    with pytest.raises(ValueError, match=r"^`fakes` "):
        validate_images(torch.zeros(1, 3, 2), name="fakes")


# ---------------------------------------------------------------- validate_segmentation
def test_validate_segmentation_accepts_labels():
    validate_segmentation(torch.zeros(2, 4, 4, dtype=torch.long), VOCAB, 2)
    validate_segmentation(torch.full((2, 2, 4, 4), 3, dtype=torch.int32), VOCAB, 2, multilabel=True)
    validate_segmentation(torch.zeros(0, 4, 4, dtype=torch.long), VOCAB)


@pytest.mark.parametrize(
    "labels, kwargs, match",
    [
        (torch.zeros(2, 4, dtype=torch.long), {}, r"\(B, H, W\) labels or \(B, L, H, W\)"),
        (torch.zeros(3, 4, 4, dtype=torch.long), {}, "batch size 3 but the images given have 2"),
        (torch.full((2, 4, 4), 4), {}, "\\[4, 4\\].*outside its vocabulary of 4 concepts"),
        (torch.full((2, 4, 4), -1), {}, "outside its vocabulary"),
        (torch.zeros(2, 4, 4, dtype=torch.long), {"multilabel": True}, "multi-label"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.long), {"multilabel": False}, "single-label"),
    ],
)
def test_validate_segmentation_errors(labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        validate_segmentation(labels, VOCAB, batch_size=2, **kwargs)


# ---------------------------------------------------------------- CallableSegmenter
def test_callable_segmenter_wraps_and_validates():
    seg = CallableSegmenter(lambda x: (x[:, 0] > 0).long() * 3, VOCAB)
    assert isinstance(seg, Segmenter)
    out = seg(torch.ones(2, 3, 4, 4))
    assert out.shape == (2, 4, 4) and (out == 3).all() and out.dtype == torch.int64
    with pytest.raises(ValueError, match="values in"):
        seg(torch.full((1, 3, 4, 4), 255.0))
    with pytest.raises(ValueError, match="outside its vocabulary"):
        CallableSegmenter(lambda x: torch.full(x.shape[:1] + x.shape[2:], 9), VOCAB)(
            torch.zeros(1, 3, 4, 4)
        )
    with pytest.raises(ValueError, match="batch size"):
        CallableSegmenter(lambda x: torch.zeros(5, 4, 4, dtype=torch.long), VOCAB)(
            torch.zeros(1, 3, 4, 4)
        )
    with pytest.raises(TypeError, match="integer .*labels"):
        CallableSegmenter(lambda x: x[:, 0], VOCAB)(torch.zeros(1, 3, 4, 4))
    with pytest.raises(TypeError):
        CallableSegmenter("not callable", VOCAB)
    with pytest.raises(ValueError, match="resolution"):
        CallableSegmenter(lambda x: x, VOCAB, resolution=0)


def test_callable_segmenter_resolution_and_range():
    seg = CallableSegmenter(
        lambda x: (x[:, 0] > 127).long(), VOCAB, value_range=(0, 255), resolution=(2, 4)
    )
    x = torch.zeros(1, 3, 8, 8)
    x[..., :4, :] = 255.0
    assert seg(x).tolist() == [[[1, 1, 1, 1], [0, 0, 0, 0]]]


# ---------------------------------------------------------------- resample_labels
def test_resample_labels_rules():
    x = torch.randint(0, 5, (3, 2, 12, 12))
    assert torch.equal(resample_labels(x, (12, 12), 5), x)
    # integer factor: the mode of each block, ties to the lowest label
    blocks = x.view(3, 2, 4, 3, 4, 3).permute(0, 1, 2, 4, 3, 5).reshape(3, 2, 4, 4, 9)
    counts = torch.nn.functional.one_hot(blocks, 5).sum(-2)
    assert torch.equal(resample_labels(x, (4, 4), 5), counts.argmax(-1))
    # upsampling: nearest sample
    up = resample_labels(x, (24, 36), 5)
    assert torch.equal(up, x.repeat_interleave(2, -2).repeat_interleave(3, -1))
    # non-integer factor: each cell holds the pixels whose centres fall in it
    y = torch.arange(5).view(1, 1, 5).expand(1, 5, 5)
    assert resample_labels(y, (5, 2), 5)[0, 0].tolist() == [0, 2]  # cells {0, 1}, {2, 3, 4}
    z = resample_labels(torch.randint(0, 7, (2, 10, 7)), (3, 11), 7)
    assert z.shape == (2, 3, 11)


# ---------------------------------------------------------------- SyntheticSceneSegmenter
def test_segmenter_is_exact_on_the_world_32(world32, scenes32):
    images, labels = scenes32
    seg = SyntheticSceneSegmenter(world32)
    assert isinstance(seg, Segmenter)
    assert seg.value_range == (-1.0, 1.0) and not seg.multilabel
    out = seg(images)
    assert out.dtype == torch.int64 and out.shape == labels.shape
    assert torch.equal(out, labels)


def test_segmenter_is_exact_on_the_world_64():
    world = SceneWorld(64)
    images, labels = world.render(1000, seed=9)
    assert torch.equal(SyntheticSceneSegmenter(world)(images), labels)
    # the segmenter does not care which world size built it
    assert torch.equal(SyntheticSceneSegmenter(32)(images[:50]), labels[:50])


def test_painting_a_base_colour_segments_as_that_concept(world32):
    seg = SyntheticSceneSegmenter(world32)
    k = torch.arange(1, world32.num_concepts)
    images = world32.palette[k].view(-1, 3, 1, 1).expand(-1, 3, 2, 2).contiguous()
    assert (seg(images) == k.view(-1, 1, 1)).all()
    # far from every base colour: unlabeled; unless max_distance is infinite
    black = torch.full((1, 3, 2, 2), -1.0)
    assert (seg(black) == 0).all()
    assert (SyntheticSceneSegmenter(world32, max_distance=float("inf"))(black) > 0).all()


@pytest.mark.parametrize("sigma, bound", [(0.02, 0.9999), (0.05, 0.995)])
def test_segmenter_robust_to_small_noise(world32, scenes32, sigma, bound):
    images, labels = scenes32
    g = torch.Generator().manual_seed(0)
    noisy = (images[:500] + sigma * torch.randn(images[:500].shape, generator=g)).clamp(-1, 1)
    agreement = (SyntheticSceneSegmenter(world32)(noisy) == labels[:500]).float().mean()
    assert agreement >= bound


def test_segmenter_resolution(world32, scenes32):
    images, labels = scenes32[0][:64], scenes32[1][:64]
    for res, size in [(16, (16, 16)), (8, (8, 8)), ((16, 8), (16, 8)), (64, (64, 64))]:
        out = SyntheticSceneSegmenter(world32, resolution=res)(images)
        assert out.shape == (64, *size)
        assert torch.equal(out, resample_labels(labels, size, world32.num_concepts))
    half = SyntheticSceneSegmenter(world32, resolution=16)(images)
    assert (half == labels[:, ::2, ::2]).float().mean() > 0.9


def test_segmenter_multilabel(world32, scenes32):
    images, labels = scenes32[0][:32], scenes32[1][:32]
    seg = SyntheticSceneSegmenter(world32, multilabel=True)
    out = seg(images)
    assert seg.multilabel and out.shape == (32, 2, 32, 32)
    assert torch.equal(out, world32.multilabel(labels))
    out16 = SyntheticSceneSegmenter(world32, resolution=16, multilabel=True)(images)
    low = resample_labels(labels, (16, 16), world32.num_concepts)
    assert torch.equal(out16, world32.multilabel(low))
    validate_segmentation(out16, world32.vocabulary, 32, multilabel=True)


def test_segmenter_dtypes_grad_and_errors(world32, scenes32):
    images, labels = scenes32[0][:8], scenes32[1][:8]
    seg = SyntheticSceneSegmenter(world32)
    assert torch.equal(seg(images.double()), labels)
    assert (seg(images.bfloat16()) == labels).float().mean() > 0.99
    out = seg(images.clone().requires_grad_(True))
    assert not out.requires_grad
    with torch.inference_mode():
        assert torch.equal(seg(images), labels)
    with pytest.raises(ValueError, match=r"values in \[\d+, 255\] given where \[-1, 1\]"):
        seg(((images + 1) * 127.5).round())
    with pytest.raises(ValueError, match="4-D"):
        seg(images[0])
    with pytest.raises(ValueError, match="empty batch"):
        seg(images[:0])
    with pytest.raises(ValueError, match="max_distance"):
        SyntheticSceneSegmenter(world32, max_distance=0)
    with pytest.raises(TypeError):
        SyntheticSceneSegmenter("world")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_segmenter_on_cuda(world32, scenes32):
    images = scenes32[0][:64]
    out = SyntheticSceneSegmenter(world32, resolution=16, multilabel=True)(images.cuda())
    assert out.device.type == "cuda"
    ref = SyntheticSceneSegmenter(world32, resolution=16, multilabel=True)(images)
    assert torch.equal(out.cpu(), ref)
