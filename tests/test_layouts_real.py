"""Real vision transformers, built offline with random weights, dissected with no glue.

Hugging Face's ``ViTModel``, ``Dinov2Model`` and ``Dinov2WithRegistersModel`` (small configs) run
here; torchvision's ``vit_b_16`` and ``swin_t`` and timm's ``vit_tiny_patch16_224`` are in
``tests/test_layouts_torchvision.py`` (marker ``torchvision``, run in ``.venv-tv``). Each layer
must report its true number of units and the layout it was read in; an ablation on a block must
change the network's output, and ablating no unit must change nothing.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_dissect import dissect_images
from lightning_dissect.engine.hooks import capture_layers, edit_layers
from lightning_dissect.interventions import ablate, intervene
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter

WORLD = SceneWorld(32)


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def scenes():
    images, _ = WORLD.render(8, seed=4)
    return (images + 1) / 2  # [0, 1], as image folders read


def build(factory):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return factory().eval()


def blocks(model: nn.Module, count: int = 2) -> list[str]:
    """The names of the first ``count`` transformer blocks (``layers.N`` or ``encoder.layer.N``)."""
    names = [n for n, _ in model.named_modules() if n.split(".")[-1].isdigit() and n.split(".")[-2].startswith("layer")]
    return names[:count]


def small(config_class, **extra):
    return config_class(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                        image_size=32, patch_size=8, **extra)


CASES = {
    "vit": ("ViTModel", "ViTConfig", {}, 1),
    "dinov2": ("Dinov2Model", "Dinov2Config", {}, 1),
    "dinov2-registers": ("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig", {"num_register_tokens": 4}, 5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hugging_face_vision_transformers_dissect_with_no_glue(transformers, scenes, case):
    model_name, config_name, extra, prefix = CASES[case]
    config = small(getattr(transformers, config_name), **extra)
    model = build(lambda: getattr(transformers, model_name)(config))
    layers = blocks(model)
    assert len(layers) == 2
    result = dissect_images(model, layers, scenes, SyntheticSceneSegmenter(WORLD), batch_size=4, quantile=0.9,
                            progress=False)
    for name in layers:
        layer = result[name]
        assert layer.num_units == config.hidden_size  # D units, not the tokens
        assert layer.layout == f"tokens:prefix={prefix},grid=4x4"
        assert layer.iou.shape == (config.hidden_size, WORLD.vocabulary.num_concepts)


@pytest.mark.parametrize("case", ["vit", "dinov2"])
def test_ablating_a_block_changes_the_output_and_no_unit_changes_nothing(transformers, scenes, case):
    model_name, config_name, extra, _ = CASES[case]
    model = build(lambda: getattr(transformers, model_name)(small(getattr(transformers, config_name), **extra)))
    layer = blocks(model, 1)[0]
    with torch.no_grad():
        base = model(pixel_values=scenes).last_hidden_state
        with intervene(model, {layer: ablate([], num_units=24)}):
            untouched = model(pixel_values=scenes).last_hidden_state
        with intervene(model, {layer: ablate(list(range(12)), num_units=24)}), capture_layers(model, [layer]) as cut:
            ablated = model(pixel_values=scenes).last_hidden_state
    assert torch.equal(untouched, base)
    assert not torch.allclose(ablated, base)
    tokens = cut[layer]
    assert bool((tokens[:, 1:, :12] == 0).all())  # the patch tokens' first 12 features
    assert bool((tokens[:, 0, :12] != 0).any())  # the class token is not a patch: left alone


def test_a_model_output_and_a_tuple_are_read_and_written_back(transformers):
    output_class = transformers.modeling_outputs.BaseModelOutput

    class Tokens(nn.Module):
        def forward(self, x):
            return output_class(last_hidden_state=x * 2)

    class Pair(nn.Module):
        def forward(self, x):
            return (x + 1, None)

    net = nn.Sequential(Tokens())
    pair = nn.Sequential(Pair())
    x = torch.rand(2, 1 + 4 * 4, 6) + 0.5
    with edit_layers(net, {"0": ablate([0, 2], num_units=6)}):
        out = net(x)
    assert isinstance(out, output_class)
    assert bool((out.last_hidden_state[:, 1:, [0, 2]] == 0).all())
    assert torch.equal(out.last_hidden_state[:, 0], x[:, 0] * 2)
    with edit_layers(pair, {"0": ablate([1], num_units=6)}):
        got = pair(x)
    assert isinstance(got, tuple) and got[1] is None
    assert bool((got[0][:, 1:, 1] == 0).all()) and torch.equal(got[0][:, 0], x[:, 0] + 1)
