"""The adapters against the real libraries: tiny random-weight models, saved and loaded offline.

transformers (SegFormer, UPerNet, Mask2Former) runs in the main test environment; the torchvision
tests (marker ``torchvision``) run in a second one (``scripts/dev.sh test`` builds ``.venv-tv``).
In CI (``LIGHTNING_DISSECT_REQUIRE_EXTRAS=1``) a missing library fails these tests.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_dissect.segmenters import Segmenter, TorchvisionSegmenter, TransformersSegmenter
from lightning_dissect.segmenters.transformers_adapter import ade20k_categories

ADE = list(ade20k_categories())[:6]  # wall, building, sky, floor, tree, ceiling
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def images(n=2, size=32):
    g = torch.Generator().manual_seed(7)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1  # [-1, 1]


def normalise(x, mean, std):
    """[-1, 1] → [0, 1] → (x - mean) / std, in NumPy."""
    a = (x.numpy().astype(np.float64) + 1) / 2
    a = (a - np.asarray(mean)[None, :, None, None]) / np.asarray(std)[None, :, None, None]
    return torch.from_numpy(a).float()


@pytest.fixture
def transformers(monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True, raising=False)
    return transformers


def labelled(config_kwargs):
    return dict(
        num_labels=len(ADE), id2label=dict(enumerate(ADE)), label2id={n: i for i, n in enumerate(ADE)},
        **config_kwargs,
    )  # fmt: skip


def build(factory):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return factory().eval()


def check_vocabulary(seg):
    assert isinstance(seg, Segmenter)
    assert seg.vocabulary.names == ("unlabeled", *ADE)
    assert seg.vocabulary.unlabeled_index == 0
    table = ade20k_categories()
    assert seg.vocabulary.categories == ("none", *(table[n] for n in ADE))


def test_segformer_saved_and_loaded_offline(transformers, tmp_path):
    config = transformers.SegformerConfig(**labelled(dict(
        num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
        num_attention_heads=[1, 1], decoder_hidden_size=16,
    )))  # fmt: skip
    model = build(lambda: transformers.SegformerForSemanticSegmentation(config))
    processor = transformers.SegformerImageProcessor(
        image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3], size={"height": 32, "width": 32}
    )
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    seg = TransformersSegmenter.from_pretrained(str(tmp_path), resolution=16)
    check_vocabulary(seg)
    assert seg.input_size == (32, 32)
    x = images()
    out = seg(x)
    # reference: the processor's own normalisation, the model's logits, its post-processing
    arrays = [((img.numpy() + 1) / 2).transpose(1, 2, 0) for img in x]
    pixel_values = processor(
        images=arrays, do_rescale=False, do_resize=False, return_tensors="pt"
    ).pixel_values
    assert torch.allclose(pixel_values, normalise(x, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]), atol=1e-5)
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
        ref = processor.post_process_semantic_segmentation(
            transformers.modeling_outputs.SemanticSegmenterOutput(logits=logits), target_sizes=[(16, 16)] * 2
        )
    expected = torch.stack(ref) + 1  # model class k is label k + 1
    assert out.shape == (2, 16, 16) and out.dtype == torch.int64
    assert torch.equal(out, expected)
    assert len(out.unique()) > 1  # random weights still give several classes


def test_segformer_concept_scores_are_the_softmax_of_its_logits(transformers, tmp_path):
    """``concept_scores``: per-pixel class probabilities (NumPy softmax of the resized logits), whose
    arg-max is the label ``seg(x)`` gives; the "unlabeled" entry, no model class, scores 0."""
    config = transformers.SegformerConfig(**labelled(dict(
        num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
        num_attention_heads=[1, 1], decoder_hidden_size=16,
    )))  # fmt: skip
    model = build(lambda: transformers.SegformerForSemanticSegmentation(config))
    with torch.no_grad():  # random weights give near-uniform probabilities: make the classes distinct
        model.decode_head.classifier.weight.mul_(100.0)
    processor = transformers.SegformerImageProcessor(
        image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3], size={"height": 32, "width": 32}
    )
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    seg = TransformersSegmenter.from_pretrained(str(tmp_path), resolution=16)
    x = images(3)
    scores = seg.concept_scores(x)
    assert scores.shape == (3, len(ADE) + 1, 16, 16) and scores.dtype == torch.float32
    # reference: the processor's normalisation, the model's logits upsampled as post-processing
    # does (bilinear), a softmax over the classes in NumPy (float64)
    arrays = [((img.numpy() + 1) / 2).transpose(1, 2, 0) for img in x]
    pixel_values = processor(images=arrays, do_rescale=False, do_resize=False, return_tensors="pt").pixel_values
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
    up = F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False).double().numpy()
    e = np.exp(up - up.max(1, keepdims=True))
    probabilities = e / e.sum(1, keepdims=True)
    np.testing.assert_allclose(scores[:, 1:].detach().numpy(), probabilities, atol=1e-5)
    assert torch.equal(scores[:, 0], torch.zeros(3, 16, 16))
    np.testing.assert_allclose(scores.detach().sum(1).numpy(), 1.0, atol=1e-5)
    labels = seg(x)
    assert torch.equal(scores.argmax(1), labels)
    assert torch.equal(labels, torch.from_numpy(probabilities.argmax(1)) + 1)
    assert len(labels.unique()) > 1


def test_upernet_saved_and_loaded_offline(transformers, tmp_path):
    backbone = transformers.ConvNextConfig(
        num_channels=3, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    config = transformers.UperNetConfig(**labelled(dict(
        backbone_config=backbone, hidden_size=16, use_auxiliary_head=False, pool_scales=[1, 2],
    )))  # fmt: skip
    model = build(lambda: transformers.UperNetForSemanticSegmentation(config))
    model.save_pretrained(tmp_path)  # no image processor saved: ImageNet mean and std
    seg = TransformersSegmenter.from_pretrained(str(tmp_path))
    check_vocabulary(seg)
    assert seg.input_size is None
    x = images()
    out = seg(x)
    with torch.no_grad():
        logits = model(pixel_values=normalise(x, IMAGENET_MEAN, IMAGENET_STD)).logits
    assert logits.shape[-2:] == (32, 32)
    assert out.shape == (2, 32, 32)
    assert torch.equal(out, logits.argmax(1) + 1)


def test_mask2former_saved_and_loaded_offline(transformers, tmp_path):
    pytest.importorskip("scipy")  # Mask2Former's matcher needs it
    backbone = transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
        window_size=2, out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    config = transformers.Mask2FormerConfig(**labelled(dict(
        backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
        encoder_feedforward_dim=32, dim_feedforward=32, num_queries=4, encoder_layers=1,
        decoder_layers=2, num_attention_heads=2, common_stride=4, use_pretrained_backbone=False,
    )))  # fmt: skip
    model = build(lambda: transformers.Mask2FormerForUniversalSegmentation(config))
    model.save_pretrained(tmp_path)
    seg = TransformersSegmenter.from_pretrained(str(tmp_path), resolution=(16, 24))
    check_vocabulary(seg)
    x = images()
    out = seg(x)
    with torch.no_grad():
        o = model(pixel_values=normalise(x, IMAGENET_MEAN, IMAGENET_STD))
    # reference: Σ_q softmax(class)[:K] · sigmoid(mask upsampled), one query at a time
    cls = o.class_queries_logits.double().softmax(-1).numpy()
    masks = F.interpolate(o.masks_queries_logits, size=(16, 24), mode="bilinear", align_corners=False)
    masks = masks.double().sigmoid().numpy()
    scores = np.zeros((2, len(ADE), 16, 24))
    for b in range(2):
        for q in range(cls.shape[1]):
            for k in range(len(ADE)):
                scores[b, k] += cls[b, q, k] * masks[b, q]
    assert out.shape == (2, 16, 24)
    np.testing.assert_array_equal(out.numpy(), scores.argmax(1) + 1)


def test_from_pretrained_missing_folder_offline(transformers, tmp_path):
    with pytest.raises(OSError):
        TransformersSegmenter.from_pretrained(str(tmp_path / "nothing-here"))


@pytest.mark.torchvision
@pytest.mark.parametrize("name", ["deeplabv3_mobilenet_v3_large", "fcn_resnet50", "lraspp_mobilenet_v3_large"])
def test_torchvision_architectures_random_weights(name):
    pytest.importorskip("torchvision.models.segmentation")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        seg = TorchvisionSegmenter.from_name(name, batch_size=1)
    assert isinstance(seg, Segmenter)
    assert seg.vocabulary.num_concepts == 21 and seg.vocabulary.unlabeled_index == 0
    x = images(2, size=40)
    out = seg(x)
    with torch.no_grad():
        scores = seg.model(normalise(x, IMAGENET_MEAN, IMAGENET_STD))["out"]
    assert scores.shape == (2, 21, 40, 40)
    assert out.shape == (2, 40, 40) and out.dtype == torch.int64
    assert torch.equal(out, scores.argmax(1))  # VOC label k is label k (background = unlabeled)
    up = TorchvisionSegmenter(seg.model, resolution=80)(x)
    expected = F.interpolate(scores, size=(80, 80), mode="bilinear", align_corners=False).argmax(1)
    assert torch.equal(up, expected)


@pytest.mark.torchvision
def test_torchvision_unknown_builder():
    pytest.importorskip("torchvision.models.segmentation")
    with pytest.raises(ValueError, match="builder"):
        TorchvisionSegmenter.from_name("resnet_nonexistent")
