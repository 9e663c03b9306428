"""Capture and edit the outputs of named layers, as context managers that always clean up.

Layers are named like :meth:`torch.nn.Module.named_modules` does (``"net.3"``,
``"generator.block2.conv"``). Hooks are registered on the unwrapped module (``torch.compile``'s
``_orig_mod`` and DDP's ``module`` are looked through) and removed on exit, also when the body
raises.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import torch
from torch import Tensor, nn

from lightning_dissect._utils.checks import argument_name
from lightning_dissect.engine.layouts import LayerLayout, default_part, patch_size_of
from lightning_dissect.functional.upsample import resample_mask

__all__ = [
    "OutputSelector",
    "Selector",
    "Captured",
    "LayerEdit",
    "unwrap_model",
    "resolve_layer",
    "layer_names",
    "capture_layers",
    "edit_layers",
    "apply_edit",
    "check_editable",
]

class Selector:
    """Picks a tensor from a layer's output *and* writes an edited tensor back into it.

    An int or str selector does both for tuples, lists and dicts. For any other structure give
    both directions; a plain callable ``output -> Tensor`` can capture but not edit, and editing
    with one is refused at the dry run.

    Args:
        select: ``output -> Tensor``.
        replace: ``(output, edited) -> new output``.

    Examples:
        >>> class Block(nn.Module):
        ...     def forward(self, x):
        ...         return {"features": x, "skip": x}
        >>> sel = Selector(lambda out: out["features"], lambda out, t: {**out, "features": t})
        >>> net = nn.Sequential(Block())
        >>> with edit_layers(net, {"0": LayerEdit(alpha=1.0, value=0.0)}, sel):
        ...     out = net(torch.ones(1, 2, 2, 2))
        >>> float(out["features"].sum()), float(out["skip"].sum())
        (0.0, 8.0)
    """

    def __init__(self, select: Callable[[Any], Tensor], replace: Callable[[Any, Tensor], Any]) -> None:
        if not callable(select) or not callable(replace):
            raise TypeError("Selector needs two callables: select(output) and replace(output, edited)")
        self.select = select
        self.replace = replace

    def __call__(self, output: Any) -> Tensor:
        """The selected tensor of ``output``."""
        return self.select(output)

    def __repr__(self) -> str:
        return f"Selector({getattr(self.select, '__name__', self.select)!r})"


OutputSelector = Union[int, str, Selector, LayerLayout, Callable[[Any], Tensor], None]
"""Which tensor of a layer's output to use: ``None`` (the output is a tensor; of a tuple, its item 0;
of a dict or ``ModelOutput``, its ``last_hidden_state``), an index into a tuple/list, a key into a
dict, a :class:`Selector` (capture and edit), a callable ``output -> Tensor`` (capture only), or a
:class:`~lightning_dissect.engine.layouts.LayerLayout` that also says where the units are
(tokens, channels-last)."""


class Captured(dict):
    """``layer -> tensor`` of the latest forward pass, and ``calls``: how often each layer ran."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}


def unwrap_model(model: nn.Module) -> nn.Module:
    """Look through ``torch.compile`` (``_orig_mod``) and DDP/DataParallel (``module``) wrappers.

    Examples:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> unwrap_model(net) is net
        True
    """
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            break
    return model


def layer_names(model: nn.Module) -> list[str]:
    """All dotted module names of ``model`` (the unwrapped one), excluding the root."""
    return [name for name, _ in unwrap_model(model).named_modules() if name]


def resolve_layer(model: nn.Module, name: str, *, argument: str = "layers") -> nn.Module:
    """Find the submodule called ``name``; an unknown name lists the closest existing ones.

    Examples:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        >>> resolve_layer(net, "1")
        ReLU()
        >>> resolve_layer(net, "2")
        Traceback (most recent call last):
        ...
        ValueError: unknown layer '2' in `layers`; closest existing names: '0', '1'
    """
    modules = dict(unwrap_model(model).named_modules())
    if name in modules and name != "":
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.3) or names[:5]
    listed = ", ".join(repr(n) for n in close) if close else "(the model has no submodules)"
    raise ValueError(f"unknown layer {name!r} in {argument_name(argument)}; closest existing names: {listed}")


def _select(output: Any, selector: OutputSelector, name: str) -> Tensor:
    selector = _part(output, selector)
    if selector is None:
        value = output
    elif callable(selector):
        value = selector(output)
    else:
        try:
            value = output[selector]
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(
                f"layer {name!r}: selector {selector!r} does not apply to its output of type "
                f"{type(output).__name__}"
            ) from err
    if not isinstance(value, Tensor):
        raise TypeError(
            f"layer {name!r} produced {type(output).__name__}, not a Tensor; pass a `selector` "
            "(an index, a key or a callable) to pick the tensor to use"
        )
    return value


_NOT_EDITABLE = (
    "editing a layer whose output is selected by a plain callable is not possible: pass an int or str "
    "selector, or Selector(select, replace) that also writes the edited tensor back"
)


def check_editable(selector: OutputSelector | Mapping[str, OutputSelector], layer: str) -> None:
    """Refuse, before any work, a selector that cannot write an edited tensor back into ``layer``'s output.

    Interventions edit layers: a plain callable selector only reads (it cannot put the edited
    tensor back), so it is refused at once, not after the first generator calls.

    Examples:
        >>> check_editable(0, "block"), check_editable(Selector(lambda o: o[0], lambda o, t: (t,)), "block")
        (None, None)
        >>> check_editable(lambda out: out[0], "block")
        Traceback (most recent call last):
        ...
        TypeError: layer 'block': editing a layer whose output is selected by a plain callable is not possible: ...
    """
    chosen = _selector_for(selector, layer)
    if callable(chosen) and not isinstance(chosen, Selector):
        raise TypeError(f"layer {layer!r}: {_NOT_EDITABLE}")


def _part(output: Any, selector: OutputSelector) -> Any:
    """The selector proper: a layout's ``part``; with none, where a tuple's / dict's tensor is."""
    if isinstance(selector, LayerLayout):
        selector = selector.part
    if selector is None and not isinstance(output, Tensor):
        selector = default_part(output)
    return selector


def _replace(output: Any, selector: OutputSelector, value: Tensor) -> Any:
    selector = _part(output, selector)
    if selector is None:
        return value
    if isinstance(selector, Selector):
        return selector.replace(output, value)
    if callable(selector):
        raise TypeError(_NOT_EDITABLE)
    if isinstance(output, tuple):
        items = list(output)
        items[selector] = value  # type: ignore[index]
        return type(output)(items) if not hasattr(output, "_fields") else type(output)(*items)
    if isinstance(output, list):
        items = list(output)
        items[selector] = value  # type: ignore[index]
        return items
    if isinstance(output, dict):
        out = dict(output)
        out[selector] = value
        return type(output)(out) if type(output) is not dict else out
    raise TypeError(f"cannot replace item {selector!r} of a {type(output).__name__}")


def _selector_for(selector: OutputSelector | Mapping[str, OutputSelector], name: str) -> Any:
    if isinstance(selector, Mapping):
        return selector.get(name)
    return selector


@contextmanager
def capture_layers(
    model: nn.Module,
    layers: Sequence[str],
    selector: OutputSelector | Mapping[str, OutputSelector] = None,
    *,
    detach: bool = True,
) -> Iterator[Captured]:
    """Record the output of each named layer during forward passes inside the block.

    Args:
        model: Any module (compiled / DDP-wrapped modules are unwrapped).
        layers: Dotted layer names.
        selector: How to get a tensor from a layer's output, or a mapping layer → selector.
        detach: Store detached copies (an in-place operation after the layer, such as
            ``nn.LeakyReLU(inplace=True)``, would otherwise overwrite what was captured).

    Yields:
        A :class:`Captured` dict filled with ``name -> tensor`` of the latest forward pass; its
        ``calls`` count how often each layer ran.

    Examples:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
        >>> with capture_layers(net, ["1"]) as captured:
        ...     _ = net(torch.randn(5, 3))
        >>> captured["1"].shape
        torch.Size([5, 4])
    """
    if isinstance(layers, str):
        layers = [layers]
    modules = {name: resolve_layer(model, name) for name in layers}
    captured = Captured()
    handles = []

    def make_hook(name: str) -> Callable[..., None]:
        sel = _selector_for(selector, name)

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            value = _select(output, sel, name)
            # a copy: an in-place op after the layer (LeakyReLU(inplace=True)) would change the stored values
            captured[name] = value.detach().clone() if detach else value
            captured.calls[name] = captured.calls.get(name, 0) + 1

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class LayerEdit:
    """An edit ``r ← r·(1 − α·m) + v·α·m`` of one layer's ``(B, U, h, w)`` output.

    Attributes:
        alpha: Per-unit strength in ``[0, 1]``: a scalar or a ``(U,)`` tensor (0 leaves a unit
            alone, 1 replaces it).
        value: The value ``v`` written in: a scalar, ``(U,)``, ``(U, h, w)`` or ``(B, U, h, w)``.
            0 is the paper's ablation.
        mask: Optional spatial mask ``m`` in ``[0, 1]`` at any resolution: ``(H, W)``,
            ``(B, H, W)`` or ``(B, 1, H, W)``; it is area-pooled (or, when coarser, nearest-
            upsampled) to the layer's ``(h, w)``.
    """

    alpha: float | Tensor = 1.0
    value: float | Tensor = 0.0
    mask: Tensor | None = None


def _per_unit(x: float | Tensor, r: Tensor) -> Tensor:
    t = torch.as_tensor(x, dtype=r.dtype, device=r.device)
    if t.ndim == 0:
        return t
    if t.ndim == 1:
        if t.shape[0] != r.shape[1]:
            raise ValueError(f"per-unit tensor has {t.shape[0]} entries but the layer has {r.shape[1]} units")
        return t.view(1, -1, *([1] * (r.ndim - 2)))
    if t.ndim == r.ndim - 1:
        return t.unsqueeze(0)
    return t


def _pooled_mask(mask: Tensor, r: Tensor) -> Tensor:
    return resample_mask(mask.to(r.device), tuple(r.shape[-2:]), dtype=r.dtype)


def apply_edit(r: Tensor, edit: LayerEdit) -> Tensor:
    """Return ``r·(1 − α·m) + v·α·m`` (a new tensor).

    Examples:
        >>> r = torch.ones(1, 2, 2, 2)
        >>> apply_edit(r, LayerEdit(alpha=torch.tensor([1.0, 0.0]), value=0.0))[0, :, 0, 0]
        tensor([0., 1.])
    """
    alpha = _per_unit(edit.alpha, r)
    value = _per_unit(edit.value, r)
    weight = alpha
    if edit.mask is not None:
        if r.ndim != 4:
            raise ValueError("a spatial `mask` needs a (B, U, h, w) layer output")
        weight = alpha * _pooled_mask(edit.mask, r)
    return r * (1 - weight) + value * weight


@contextmanager
def edit_layers(
    model: nn.Module,
    edits: Mapping[str, LayerEdit],
    selector: OutputSelector | Mapping[str, OutputSelector] = None,
    *,
    layouts: Mapping[str, LayerLayout] | None = None,
    image_size: Sequence[int] | None = None,
) -> Iterator[None]:
    """Apply :class:`LayerEdit`\\ s to named layers during forward passes inside the block.

    Each layer is edited in its :class:`~lightning_dissect.engine.layouts.LayerLayout`: token and
    channels-last outputs are turned into ``(B, U, h, w)`` maps, edited, and written back in their
    own layout (prefix tokens untouched). ``layouts`` gives resolved layouts by layer; any other
    layer's layout is the one its selector declares, resolved from the output's shape and
    ``image_size`` (default: the size of the images the model is called on, when it reads
    images), and added to ``layouts`` when that is a ``dict``.

    Examples:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU())
        >>> with edit_layers(net, {"1": LayerEdit(alpha=1.0, value=0.0)}):
        ...     out = net(torch.randn(1, 1, 3, 3))
        >>> float(out.detach().abs().sum())
        0.0
    """
    modules = {name: resolve_layer(model, name, argument="edits") for name in edits}
    handles = []
    seen: dict[str, Any] = {}  # the size of the images the model was called on, when it reads images

    def record_input(_module: nn.Module, args: Any, kwargs: Any) -> None:
        images = [v for v in (*args, *kwargs.values()) if isinstance(v, Tensor) and v.ndim == 4]
        seen["size"] = tuple(images[0].shape[-2:]) if images else None

    def make_hook(name: str, edit: LayerEdit) -> Callable[..., Any]:
        sel = _selector_for(selector, name)
        known = (layouts or {}).get(name)

        def hook(module: nn.Module, _inputs: Any, output: Any) -> Any:
            r = _select(output, sel, name)
            layout = known
            if layout is None or not layout.resolved:
                declared = sel if isinstance(sel, LayerLayout) else LayerLayout()
                layout = declared.resolve(
                    r.shape, image_size=image_size if image_size is not None else seen.get("size"),
                    patch_size=patch_size_of(model), module=module, layer=name,
                )
                if isinstance(layouts, dict):
                    layouts[name] = layout
            edited = layout.from_maps(apply_edit(layout.to_maps(r), edit), r)
            return _replace(output, sel, edited)

        return hook

    try:
        if image_size is None and any(name not in (layouts or {}) for name in modules):
            handles.append(unwrap_model(model).register_forward_pre_hook(record_input, with_kwargs=True))
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name, edits[name])))
        yield
    finally:
        for handle in handles:
            handle.remove()
