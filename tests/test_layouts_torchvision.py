"""torchvision's ``vit_b_16`` and ``swin_t`` and timm's ``vit_tiny_patch16_224``, random weights, no glue.

Marked ``torchvision``: torchvision does not load beside the main environment's torch, so
``scripts/dev.sh test`` runs these in ``.venv-tv`` (timm needs torchvision too). Images are 32
pixels: a 2x2 patch grid for the ViTs, 8x8 and 4x4 maps for Swin's first stages.
"""

from __future__ import annotations

import pytest
import torch

from lightning_dissect import dissect_images
from lightning_dissect.engine.hooks import capture_layers
from lightning_dissect.interventions import ablate, intervene
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter

pytestmark = pytest.mark.torchvision

WORLD = SceneWorld(32)
SEGMENTER = SyntheticSceneSegmenter(WORLD)


@pytest.fixture(scope="module")
def scenes():
    images, _ = WORLD.render(6, seed=2)
    return (images + 1) / 2


def build(factory):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return factory().eval()


def dissected(model, layers, scenes):
    return dissect_images(model, layers, scenes, SEGMENTER, batch_size=3, quantile=0.9, progress=False)


def test_torchvision_vit_b_16_blocks_are_768_units_over_the_patch_grid(scenes):
    models = pytest.importorskip("torchvision.models")
    model = build(lambda: models.vit_b_16(weights=None, image_size=32))
    layers = ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    result = dissected(model, layers, scenes)
    for name in layers:
        assert result[name].num_units == 768
        assert result[name].layout == "tokens:prefix=1,grid=2x2"
    # an ablation on a block changes the output; ablating no unit changes nothing
    # (its classification head starts at zero: compare the encoder's output)
    with torch.no_grad(), capture_layers(model, ["encoder.ln"]) as base:
        model(scenes)
    with torch.no_grad(), intervene(model, {layers[0]: ablate([], num_units=768)}), \
            capture_layers(model, ["encoder.ln"]) as same:
        model(scenes)
    with torch.no_grad(), intervene(model, {layers[0]: ablate(list(range(384)), num_units=768)}), \
            capture_layers(model, [layers[0], "encoder.ln"]) as cut:
        model(scenes)
    assert torch.equal(same["encoder.ln"], base["encoder.ln"])
    assert not torch.allclose(cut["encoder.ln"], base["encoder.ln"])
    assert bool((cut[layers[0]][:, 1:, :384] == 0).all())


def test_torchvision_swin_t_stages_are_channels_last_units(scenes):
    models = pytest.importorskip("torchvision.models")
    model = build(lambda: models.swin_t(weights=None))
    layers = ["features.1", "features.3"]
    result = dissected(model, layers, scenes)
    assert result["features.1"].num_units == 96  # not 8 "units" of 8x96 maps
    assert result["features.3"].num_units == 192
    assert {result[n].layout for n in layers} == {"channels-last"}
    with torch.no_grad():
        base = model(scenes)
        with intervene(model, {"features.3": ablate(list(range(96)), num_units=192)}), \
                capture_layers(model, ["features.3"]) as cut:
            ablated = model(scenes)
    assert not torch.allclose(ablated, base)
    assert bool((cut["features.3"][..., :96] == 0).all())  # the channels, on the last axis


def test_timm_vit_tiny_blocks_are_192_units(scenes):
    timm = pytest.importorskip("timm")
    model = build(lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32))
    result = dissected(model, ["blocks.0", "blocks.1"], scenes)
    for name in ("blocks.0", "blocks.1"):
        assert result[name].num_units == 192
        assert result[name].layout == "tokens:prefix=1,grid=2x2"
    with torch.no_grad():
        base = model(scenes)
        with intervene(model, {"blocks.0": ablate([], num_units=192)}):
            assert torch.equal(model(scenes), base)
        with intervene(model, {"blocks.0": ablate(list(range(96)), num_units=192)}):
            assert not torch.allclose(model(scenes), base)
