"""Layer capture and edit hooks."""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import pytest
import torch
from torch import nn

from lightning_dissect.engine.hooks import (
    LayerEdit,
    apply_edit,
    capture_layers,
    edit_layers,
    layer_names,
    resolve_layer,
    unwrap_model,
)

Pair = namedtuple("Pair", ["features", "extra"])


class TupleOut(nn.Module):
    def forward(self, x):
        return x * 2, x + 1


class DictOut(nn.Module):
    def forward(self, x):
        return {"features": x * 3, "aux": x.sum()}


class NamedOut(nn.Module):
    def forward(self, x):
        return Pair(x - 1, x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 1)
        self.block = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 1))
        self.pair = TupleOut()
        self.dict = DictOut()
        self.named = NamedOut()

    def forward(self, x):
        x = self.block(self.stem(x))
        a, _ = self.pair(x)
        b = self.dict(a)["features"]
        return self.named(b).features


def no_hooks(model):
    return all(len(m._forward_hooks) == 0 for m in model.modules())


def test_capture_and_remove(gen):
    net = Net()
    x = torch.randn(2, 2, 4, 4, generator=gen)
    with capture_layers(net, ["stem", "block.1"]) as captured:
        assert len(net.stem._forward_hooks) == 1
        out = net(x)
    assert no_hooks(net)
    assert torch.equal(captured["stem"], net.stem(x))
    assert torch.equal(captured["block.1"], net.block(net.stem(x)))
    assert not captured["stem"].requires_grad  # detached
    assert torch.equal(out, net(x))  # capture does not change the output
    with capture_layers(net, "stem", detach=False) as captured:
        net(x)
    assert captured["stem"].requires_grad


def test_capture_with_selectors(gen):
    net = Net()
    x = torch.randn(1, 2, 4, 4, generator=gen)
    selectors = {"pair": 1, "dict": "features", "named": lambda out: out.extra}
    with capture_layers(net, ["pair", "dict", "named"], selector=selectors) as captured:
        net(x)
    h = net.block(net.stem(x))
    assert torch.equal(captured["pair"], h + 1)
    assert torch.equal(captured["dict"], h * 2 * 3)
    assert torch.equal(captured["named"], h * 6)
    assert no_hooks(net)


class NoTensorFirst(nn.Module):
    def forward(self, x):
        return None, x


def test_tuple_output_without_selector_gives_item_0_or_a_clear_error(gen):
    net = Net()
    x = torch.randn(1, 2, 4, 4, generator=gen)
    with capture_layers(net, ["pair", "dict"]) as captured:
        net(x)
    h = net.block(net.stem(x))
    assert torch.equal(captured["pair"], h * 2)  # a tuple's item 0 (Hugging Face layers, (x, rgb) blocks)
    assert torch.equal(captured["dict"], h * 2 * 3)  # a dict's first tensor
    assert no_hooks(net)
    odd = nn.Sequential(NoTensorFirst())
    with pytest.raises(TypeError, match="pass a `selector`"):
        with capture_layers(odd, ["0"]):
            odd(x)
    assert no_hooks(odd)
    with pytest.raises(ValueError, match="selector 'nope' does not apply"):
        with capture_layers(net, ["dict"], selector="nope"):
            net(torch.randn(1, 2, 4, 4, generator=gen))
    assert no_hooks(net)


def test_hooks_removed_on_exception(gen):
    net = Net()
    with pytest.raises(RuntimeError, match="boom"):
        with capture_layers(net, ["stem", "block.0"]):
            raise RuntimeError("boom")
    assert no_hooks(net)
    with pytest.raises(RuntimeError, match="boom"):
        with edit_layers(net, {"stem": LayerEdit()}):
            net(torch.randn(1, 2, 4, 4, generator=gen))
            raise RuntimeError("boom")
    assert no_hooks(net)


def test_unknown_layer_lists_closest_names():
    net = Net()
    with pytest.raises(ValueError, match=r"unknown layer 'blok.1' in `layers`.*'block.1'"):
        with capture_layers(net, ["stem", "blok.1"]):
            pass
    assert no_hooks(net)  # nothing registered when a name is wrong
    with pytest.raises(ValueError, match=r"unknown layer 'stm' in `edits`.*'stem'"):
        with edit_layers(net, {"stm": LayerEdit()}):
            pass
    with pytest.raises(ValueError, match="unknown layer"):
        resolve_layer(net, "")
    assert resolve_layer(net, "block.1") is net.block[1]
    assert "block.1" in layer_names(net) and "" not in layer_names(net)


def test_unwrap_compiled_like_wrapper():
    net = Net()

    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    assert unwrap_model(Wrapper(net)) is net
    assert resolve_layer(Wrapper(net), "stem") is net.stem


def test_edit_rule_per_unit_alpha(gen):
    r = torch.randn(2, 4, 3, 3, generator=gen)
    alpha = torch.tensor([0.0, 0.25, 1.0, 0.5])
    value = torch.tensor([1.0, 2.0, 3.0, -4.0])
    out = apply_edit(r, LayerEdit(alpha=alpha, value=value))
    for u in range(4):
        a, v = float(alpha[u]), float(value[u])
        torch.testing.assert_close(out[:, u], r[:, u] * (1 - a) + v * a, rtol=0, atol=1e-6)
    # scalar alpha / value and a (U, h, w) value
    full = torch.randn(4, 3, 3, generator=gen)
    out = apply_edit(r, LayerEdit(alpha=0.5, value=full))
    torch.testing.assert_close(out, r * 0.5 + full[None] * 0.5)
    with pytest.raises(ValueError, match="3 entries but the layer has 4 units"):
        apply_edit(r, LayerEdit(alpha=torch.ones(3)))


def test_edit_with_spatial_mask_other_resolution(gen):
    r = torch.randn(2, 3, 4, 4, generator=gen)
    alpha = torch.tensor([1.0, 0.5, 0.0])
    value = 2.0
    # a mask at 8x8: area-pooled to 4x4 (mean of each 2x2 block)
    mask = (torch.rand(8, 8, generator=gen) > 0.5).float()
    pooled = mask.reshape(4, 2, 4, 2).mean((1, 3))
    out = apply_edit(r, LayerEdit(alpha=alpha, value=value, mask=mask))
    for u in range(3):
        m = float(alpha[u]) * pooled
        torch.testing.assert_close(out[:, u], r[:, u] * (1 - m) + value * m)
    # a coarser (2x2) boolean mask per sample: nearest-upsampled
    coarse = torch.tensor([[[True, False], [False, True]], [[False, False], [True, True]]])
    up = coarse.float().repeat_interleave(2, 1).repeat_interleave(2, 2)  # (B, 4, 4)
    out = apply_edit(r, LayerEdit(alpha=alpha, value=value, mask=coarse))
    for u in range(3):
        m = float(alpha[u]) * up
        torch.testing.assert_close(out[:, u], r[:, u] * (1 - m) + value * m)
    with pytest.raises(ValueError, match="`mask` must be"):
        apply_edit(r, LayerEdit(mask=torch.ones(2, 2, 4, 4)))


def test_edit_layers_in_forward(gen):
    net = Net()
    x = torch.randn(2, 2, 4, 4, generator=gen)
    alpha = torch.tensor([1.0, 0.0, 1.0, 0.0])
    with edit_layers(net, {"block.1": LayerEdit(alpha=alpha, value=0.0)}):
        with capture_layers(net, ["block.1"]) as captured:
            net(x)
    assert no_hooks(net)
    h = net.block(net.stem(x))
    assert (captured["block.1"][:, [0, 2]] == 0).all()
    assert torch.equal(captured["block.1"][:, [1, 3]], h[:, [1, 3]])


@pytest.mark.parametrize(
    ("layer", "selector", "pick"),
    [("pair", 0, lambda o: o[0]), ("dict", "features", lambda o: o["features"]),
     ("named", 0, lambda o: o.features)],
)
def test_edit_tuple_and_dict_outputs(gen, layer, selector, pick):
    net = Net()
    x = torch.randn(1, 2, 4, 4, generator=gen)
    seen = {}

    def keep(_m, _i, out):
        seen["out"] = out

    handle = getattr(net, layer).register_forward_hook(keep)
    try:
        with edit_layers(net, {layer: LayerEdit(alpha=1.0, value=5.0)}, selector=selector):
            net(x)
    finally:
        handle.remove()
    assert no_hooks(net)
    # our hook ran after `keep`, so check the replaced output by recomputing through the module
    module = getattr(net, layer)
    with edit_layers(net, {layer: LayerEdit(alpha=1.0, value=5.0)}, selector={layer: selector}):
        out = module(torch.randn(1, 4, 4, 4, generator=gen))
    assert (pick(out) == 5.0).all()
    assert type(out) is type(seen["out"])
    if isinstance(out, dict):
        assert set(out) == {"features", "aux"}
    with pytest.raises(TypeError, match="callable"):
        with edit_layers(net, {layer: LayerEdit()}, selector=lambda o: pick(o)):
            module(torch.randn(1, 4, 4, 4, generator=gen))
    assert no_hooks(net)


def test_edit_ordered_dict_keeps_type():
    class OD(nn.Module):
        def forward(self, x):
            return OrderedDict(a=x, b=x)

    net = nn.Sequential(OD())
    with edit_layers(net, {"0": LayerEdit(alpha=1.0, value=1.0)}, selector="b"):
        out = net(torch.zeros(1, 2, 2, 2))
    assert isinstance(out, OrderedDict) and (out["b"] == 1).all() and (out["a"] == 0).all()
