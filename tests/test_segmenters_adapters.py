"""Plumbing of the torchvision and transformers adapters (no downloads, random weights)."""

import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lightning_dissect.segmenters import Segmenter, TorchvisionSegmenter, TransformersSegmenter
from lightning_dissect.segmenters._adapter import IMAGENET_MEAN, IMAGENET_STD
from lightning_dissect.segmenters.torchvision_adapter import VOC_CLASSES
from lightning_dissect.segmenters.transformers_adapter import ade20k_categories


class Recorder(nn.Module):
    """Returns fixed class scores; records what it was given."""

    def __init__(self, num_classes=21, favourite=5, as_dict=True, stride=1, hf=False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.num_classes, self.favourite, self.as_dict, self.stride = (
            num_classes, favourite, as_dict, stride,
        )
        self.hf = hf
        self.inputs = []

    def forward(self, x=None, pixel_values=None):
        x = pixel_values if self.hf else x
        self.inputs.append(x.detach().clone())
        b, _, h, w = x.shape
        scores = torch.zeros(b, self.num_classes, h // self.stride, w // self.stride)
        scores[:, self.favourite] = 1.0
        scores = scores + self.weight
        if self.hf:
            return SimpleNamespace(logits=scores)
        return {"out": scores, "aux": scores} if self.as_dict else scores


def images(n=5, size=16, low=-1.0, high=1.0):
    g = torch.Generator().manual_seed(0)
    return low + (high - low) * torch.rand(n, 3, size, size, generator=g)


# ---------------------------------------------------------------- torchvision
def test_torchvision_plumbing_shapes_batching_and_labels():
    model = Recorder(stride=8)
    seg = TorchvisionSegmenter(model, resolution=8, batch_size=2, input_size=32)
    assert isinstance(seg, Segmenter)
    assert seg.vocabulary.names == VOC_CLASSES and seg.vocabulary.unlabeled_index == 0
    assert seg.vocabulary.category_names == ("object",)
    out = seg(images(5))
    assert out.shape == (5, 8, 8) and out.dtype == torch.int64 and (out == 5).all()
    assert [x.shape[0] for x in model.inputs] == [2, 2, 1]  # batching
    assert all(x.shape[-2:] == (32, 32) for x in model.inputs)  # resized to the input size
    assert not model.training


def test_torchvision_value_range_to_imagenet_normalisation():
    model = Recorder(as_dict=False)
    seg = TorchvisionSegmenter(model, value_range=(0, 255))
    x = torch.full((1, 3, 4, 4), 127.5)
    assert seg(x).shape == (1, 4, 4)  # plain tensor outputs are accepted too
    expected = (0.5 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(model.inputs[0][0, :, 0, 0], expected)
    with pytest.raises(ValueError, match=r"values in \[-1, 1\] given where \[0, 255\]"):
        seg(torch.linspace(-1, 1, 48).view(1, 3, 4, 4))


def test_torchvision_background_handling_and_bad_outputs():
    seg = TorchvisionSegmenter(Recorder(favourite=0), background_as_unlabeled=False)
    assert seg.vocabulary.names[:2] == ("unlabeled", "background")
    assert seg.vocabulary.num_concepts == 22
    assert (seg(images(2)) == 1).all()  # VOC background is label 1, label 0 is never produced
    assert (TorchvisionSegmenter(Recorder(favourite=0))(images(2)) == 0).all()
    with pytest.raises(ValueError, match=r"expected \(B, 21, h, w\)"):
        TorchvisionSegmenter(Recorder(num_classes=7))(images(1))
    with pytest.raises(TypeError, match="nn.Module"):
        TorchvisionSegmenter(lambda x: x)


def test_torchvision_device_handling():
    model = Recorder()
    out = TorchvisionSegmenter(model, device="cpu")(images(2))
    assert out.device.type == "cpu" and model.inputs[0].device.type == "cpu"
    if torch.cuda.is_available():
        model = Recorder()
        x = images(2)
        out = TorchvisionSegmenter(model, device="cuda")(x)
        assert out.device == x.device and model.inputs[0].device.type == "cuda"


def test_torchvision_missing_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(ImportError, match=r"TorchvisionSegmenter needs torchvision: pip install "
                                          r"'lightning-dissect\[torchvision\]'"):
        TorchvisionSegmenter.from_name("deeplabv3_resnet50")


# ---------------------------------------------------------------- transformers
def test_ade20k_table():
    table = ade20k_categories()
    assert len(table) == 150
    assert set(table.values()) == {"object", "stuff"}
    assert table["wall"] == table["grass"] == "stuff"
    assert table["person"] == table["car"] == "object"


def test_transformers_vocabulary_from_config_shift_by_one():
    model = Recorder(num_classes=3, favourite=2, stride=4, hf=True)
    model.config = SimpleNamespace(id2label={"0": "wall", "1": "windowpane, window", "2": "person"})
    seg = TransformersSegmenter(model, resolution=(8, 4))
    assert seg.vocabulary.names == ("unlabeled", "wall", "windowpane, window", "person")
    assert seg.vocabulary.categories == ("none", "stuff", "object", "object")
    assert seg.vocabulary.unlabeled_index == 0
    out = seg(images(3))
    assert out.shape == (3, 8, 4) and (out == 3).all()  # model class 2 → label 3
    assert isinstance(seg, Segmenter)


def test_transformers_processor_normalisation_and_errors():
    model = Recorder(num_classes=2, hf=True, favourite=0)
    processor = SimpleNamespace(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    seg = TransformersSegmenter(model, processor=processor, class_names=["a", "b"], input_size=8)
    x = images(1)
    assert (seg(x) == 1).all()
    assert model.inputs[0].shape == (1, 3, 8, 8)
    ref = torch.nn.functional.interpolate(x, size=8, mode="bilinear", antialias=True)
    assert torch.allclose(model.inputs[0], ref, atol=1e-5)  # [-1,1] → [0,1] → (x-.5)/.5
    with pytest.raises(ValueError, match="id2label"):
        TransformersSegmenter(nn.Conv2d(3, 2, 1))


def test_transformers_mask_classification_outputs():
    class MaskFormerLike(nn.Module):
        def forward(self, pixel_values):
            b, _, h, w = pixel_values.shape
            cls = torch.full((b, 2, 4), -9.0)  # 2 queries, 3 classes + "no object"
            cls[:, 0, 2] = 9.0  # query 0 says class 2
            cls[:, 1, 3] = 9.0  # query 1 says "no object"
            masks = torch.full((b, 2, h // 4, w // 4), -9.0)
            masks[:, 0, :, : w // 8] = 9.0  # query 0 covers the left half
            masks[:, 1] = 9.0
            return {"class_queries_logits": cls, "masks_queries_logits": masks}

    seg = TransformersSegmenter(MaskFormerLike(), class_names=["x", "y", "z"])
    out = seg(images(2, size=16))
    assert out.shape == (2, 16, 16)
    assert (out[:, :, :6] == 3).all()  # class 2 → label 3 on the left


def test_transformers_missing_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"TransformersSegmenter needs transformers: pip install "
                                          r"'lightning-dissect\[transformers\]'"):
        TransformersSegmenter.from_pretrained("nvidia/segformer-b0-finetuned-ade-512-512")


@pytest.mark.skip(reason="needs downloaded pretrained weights; no network in the test environment")
def test_transformers_pretrained_segformer():  # pragma: no cover
    seg = TransformersSegmenter.from_pretrained("nvidia/segformer-b0-finetuned-ade-512-512")
    assert seg.vocabulary.num_concepts == 151
