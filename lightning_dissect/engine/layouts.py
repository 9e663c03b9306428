"""Layer layouts: where a layer's output keeps its units, and how it becomes ``(B, U, h, w)`` maps.

Dissection counts units over maps ``(B, U, h, w)``. Layers hold them in one of three layouts:

* ``channels-first`` ``(B, C, H, W)``: convolutional networks (and ``(B, U)`` vectors, read as
  ``(B, U, 1, 1)``);
* ``channels-last`` ``(B, H, W, C)``: Swin stages, some ConvNeXt blocks, JAX ports;
* ``tokens`` ``(B, T, D)`` with ``T = prefix + h·w``: vision transformers (a class token, maybe
  register tokens, then the patch grid row by row). The ``D`` features are the units, over the
  ``h × w`` patch grid; the prefix tokens are left out.

A :class:`LayerLayout` says which, and converts both ways: :meth:`LayerLayout.to_maps` gives the
maps, :meth:`LayerLayout.from_maps` writes edited maps back into the layer's own layout (prefix
tokens untouched), so ablation and insertion edit the right units.

By default (``LayerLayout()``, ``"auto"``) the layout is resolved from the first output the layer
gives, with :meth:`LayerLayout.resolve`: the image size, the network's patch size and the layer's
own modules decide; an ambiguous token layout is refused with a message naming the option, never
guessed. A layout is declared wherever a ``selector`` is taken (``dissect``, ``dissect_images``,
the callbacks, interventions, causal units): ``selector=LayerLayout.tokens(prefix=5)``, or a
mapping ``{layer: layout}``; on the command line ``--layout [LAYER=]SPEC``.

Examples:
    >>> tokens = torch.randn(2, 1 + 4 * 4, 8)             # a class token, then a 4x4 patch grid
    >>> layout = LayerLayout().resolve(tokens.shape, image_size=(32, 32), patch_size=8)
    >>> layout.spec, tuple(layout.to_maps(tokens).shape)
    ('tokens:prefix=1,grid=4x4', (2, 8, 4, 4))
"""

from __future__ import annotations

import abc
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "LayerLayout",
    "LayerShapeError",
    "LayoutError",
    "LayoutReading",
    "MAX_PREFIX_TOKENS",
    "parse_layout",
    "parse_layouts",
    "default_part",
    "patch_size_of",
    "channels_last_images_hint",
    "token_grids",
]

#: An automatic token layout tries up to this many prefix tokens (class, distillation and
#: register tokens); a longer prefix is declared with ``LayerLayout.tokens(prefix=...)``.
MAX_PREFIX_TOKENS = 16

_KINDS = ("auto", "channels-first", "channels-last", "tokens")
_OPTION = (
    "declare it with selector=LayerLayout.{call} (lightning_dissect.engine.layouts; a mapping "
    "{{layer: layout}} for one layer), or on the command line --layout {layer}={spec}"
)


class LayoutError(ValueError):
    """A layer's output does not fit the declared layout, or its layout cannot be told from its shape."""


class LayerShapeError(ValueError):
    """A layer's output is not a ``(B, U, h, w)`` map of units (raised after a successful forward)."""


@dataclass(frozen=True)
class LayerLayout:
    """Where a layer's output keeps its units (see the module docs).

    Attributes:
        kind: ``"auto"``, ``"channels-first"``, ``"channels-last"`` or ``"tokens"``.
        prefix: Tokens before the patch grid (class, distillation, register tokens); ``None``:
            found by :meth:`resolve`.
        grid: ``(h, w)`` of the patch grid; ``None``: found by :meth:`resolve`.
        part: Which item of a tuple / dict output holds the tensor (an index or a key);
            ``None``: the output itself, or for a tuple its item 0 and for a dict (a Hugging Face
            ``ModelOutput``) its ``last_hidden_state`` (see :func:`default_part`).

    Examples:
        >>> LayerLayout.tokens(prefix=5).spec
        'tokens:prefix=5'
        >>> LayerLayout.parse("tokens:prefix=1,grid=12x16") == LayerLayout.tokens(prefix=1, grid=(12, 16))
        True
        >>> maps = LayerLayout.channels_last().to_maps(torch.zeros(2, 7, 7, 96))
        >>> tuple(maps.shape)
        (2, 96, 7, 7)
    """

    kind: str = "auto"
    prefix: int | None = None
    grid: tuple[int, int] | None = None
    part: int | str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"layout kind must be one of {', '.join(_KINDS)}; got {self.kind!r}")
        if self.prefix is not None:
            if isinstance(self.prefix, bool) or not isinstance(self.prefix, int) or self.prefix < 0:
                raise ValueError(f"`prefix` must be a non-negative int (tokens before the grid), got {self.prefix!r}")
        if self.grid is not None:
            grid = tuple(self.grid)
            if len(grid) != 2 or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grid):
                raise ValueError(f"`grid` must be two positive ints (h, w), got {self.grid!r}")
            object.__setattr__(self, "grid", (int(grid[0]), int(grid[1])))
        if self.kind != "tokens" and (self.prefix is not None or self.grid is not None):
            raise ValueError(f"`prefix` and `grid` belong to a token layout, not to {self.kind!r}")
        if self.part is not None and (isinstance(self.part, bool) or not isinstance(self.part, (int, str))):
            raise TypeError(f"`part` must be an index or a key of the layer's output, got {self.part!r}")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def channels_first(cls, *, part: int | str | None = None) -> LayerLayout:
        """``(B, C, H, W)`` maps (or ``(B, C)`` vectors): ``C`` units."""
        return cls("channels-first", part=part)

    @classmethod
    def channels_last(cls, *, part: int | str | None = None) -> LayerLayout:
        """``(B, H, W, C)`` maps: ``C`` units."""
        return cls("channels-last", part=part)

    @classmethod
    def tokens(
        cls, prefix: int | None = None, grid: Sequence[int] | None = None, *, part: int | str | None = None
    ) -> LayerLayout:
        """``(B, prefix + h·w, D)`` tokens: ``D`` units over the ``h × w`` grid (unset parts are found)."""
        return cls("tokens", prefix=prefix, grid=None if grid is None else tuple(grid), part=part)  # type: ignore[arg-type]

    @classmethod
    def parse(cls, text: str) -> LayerLayout:
        """A layout from its :attr:`spec`: ``auto``, ``channels-first``, ``channels-last`` or ``tokens[:options]``.

        Token options: ``prefix=N`` and ``grid=HxW``, comma-separated.

        Examples:
            >>> LayerLayout.parse("channels-last")
            LayerLayout(kind='channels-last', prefix=None, grid=None, part=None)
            >>> LayerLayout.parse("tokens:grid=14x14").grid
            (14, 14)
        """
        if not isinstance(text, str):
            raise TypeError(f"a layout is a string such as 'tokens:prefix=1', got {type(text).__name__}")
        kind, _, rest = text.strip().partition(":")
        kind = kind.strip().lower().replace("_", "-")
        if kind not in _KINDS:
            raise ValueError(
                f"unknown layout {text!r}: use auto, channels-first, channels-last or tokens[:prefix=N][,grid=HxW]"
            )
        options: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, _, value = item.partition("=")
            key = key.strip()
            try:
                if key == "prefix":
                    options["prefix"] = int(value)
                elif key == "grid":
                    h, w = re.split(r"[x×*]", value.strip().lower())
                    options["grid"] = (int(h), int(w))
                else:
                    raise ValueError
            except ValueError:
                raise ValueError(
                    f"layout {text!r}: cannot read {item!r}; token options are prefix=N and grid=HxW "
                    "(e.g. tokens:prefix=1,grid=14x14)"
                ) from None
        return cls(kind, **options)

    # ------------------------------------------------------------------ description
    @property
    def spec(self) -> str:
        """The text form, as :meth:`parse` reads it (and the result's JSON stores it)."""
        if self.kind != "tokens":
            return self.kind
        options = []
        if self.prefix is not None:
            options.append(f"prefix={self.prefix}")
        if self.grid is not None:
            options.append(f"grid={self.grid[0]}x{self.grid[1]}")
        return "tokens" + (":" + ",".join(options) if options else "")

    @property
    def resolved(self) -> bool:
        """Everything is known: the maps can be made without looking at the output."""
        if self.kind == "tokens":
            return self.prefix is not None and self.grid is not None
        return self.kind != "auto"

    def __str__(self) -> str:
        return self.spec

    # ------------------------------------------------------------------ resolution
    def resolve(
        self,
        shape: Sequence[int],
        *,
        image_size: Sequence[int] | None = None,
        patch_size: int | None = None,
        module: nn.Module | None = None,
        layer: str = "layer",
    ) -> LayerLayout:
        """The fully known layout of an output of ``shape`` (this one when it is already resolved).

        Args:
            shape: Shape of the layer's output tensor (batch first).
            image_size: ``(H, W)`` of the images the network reads or makes: maps keep the
                image's aspect ratio, and a patch grid is the image cut into patches.
            patch_size: The network's patch size, when it has one (:func:`patch_size_of`).
            module: The layer's module: its own convolutions, norms and linear maps tell which
                axis holds the channels when the shape cannot.
            layer: The layer's name, for messages.

        Returns:
            A resolved :class:`LayerLayout` (same ``part``).

        Raises:
            LayoutError: The output does not fit the declared layout, or a token layout is
                ambiguous or impossible; the message names the option that declares it.

        Examples:
            >>> LayerLayout().resolve((2, 56, 56, 96), image_size=(224, 224)).spec
            'channels-last'
            >>> LayerLayout().resolve((2, 96, 56, 56), image_size=(224, 224)).spec
            'channels-first'
            >>> LayerLayout().resolve((2, 1 + 5 * 5, 8), image_size=(40, 40)).spec  # no patch size: ambiguous
            Traceback (most recent call last):
            ...
            lightning_dissect.engine.layouts.LayoutError: layer 'layer': its output (2, 26, 8) ...
        """
        shape = tuple(int(s) for s in shape)
        size = None if image_size is None else (int(image_size[-2]), int(image_size[-1]))
        kind = self.kind
        if kind == "auto":
            if len(shape) == 3:
                kind = "tokens"
            elif len(shape) == 4:
                kind = _channels_axis(shape, size, module, layer)
            else:
                return replace(self, kind="channels-first")
        if kind == "channels-first":
            if len(shape) not in (2, 4):
                raise LayoutError(
                    f"layer {layer!r}: its output {shape} is not (B, C, H, W) maps or (B, C) vectors as declared "
                    "(channels-first)"
                )
            return replace(self, kind=kind)
        if kind == "channels-last":
            if len(shape) != 4:
                raise LayoutError(
                    f"layer {layer!r}: its output {shape} is not (B, H, W, C) maps as declared (channels-last)"
                )
            return replace(self, kind=kind)
        return self._resolve_tokens(shape, size, patch_size, layer)

    def _resolve_tokens(
        self, shape: tuple[int, ...], size: tuple[int, int] | None, patch: int | None, layer: str
    ) -> LayerLayout:
        if len(shape) != 3:
            raise LayoutError(f"layer {layer!r}: its output {shape} is not (B, T, D) tokens as declared (tokens)")
        count = shape[1]
        if self.grid is not None:
            h, w = self.grid
            prefix = count - h * w if self.prefix is None else self.prefix
            if prefix < 0 or prefix + h * w != count:
                raise LayoutError(
                    f"layer {layer!r}: its output has {count} tokens, which is not "
                    f"{'' if self.prefix is None else f'{prefix} prefix tokens + '}a {h}x{w} grid as declared "
                    f"({self.spec})"
                )
            return replace(self, kind="tokens", prefix=prefix)
        found = token_grids(count, size, patch, prefix=self.prefix)
        if len(found) == 1:
            prefix, h, w = found[0]
            return replace(self, kind="tokens", prefix=prefix, grid=(h, w))
        described = f"its output {shape}"
        if size is not None:
            described += f" for {size[0]}x{size[1]} images"
        if patch is not None:
            described += f" with patches of {patch}"
        example = LayerLayout.tokens(prefix=1 if self.prefix is None else self.prefix)
        hint = _OPTION.format(call="tokens(prefix=..., grid=(h, w))", layer=layer, spec=example.spec)
        if not found:
            where = "" if size is None else f" of {size[0]}x{size[1]} images"
            where += "" if patch is None else f" cut into patches of {patch}"
            raise LayoutError(
                f"layer {layer!r} output has shape {shape}: not (B, U, h, w) maps, nor a grid of tokens (B, prefix + "
                f"h·w, D){where} with up to {MAX_PREFIX_TOKENS if self.prefix is None else self.prefix} prefix "
                f"tokens{' and at least 16 patches (no patch size is known)' if patch is None else ''}; if it is "
                f"tokens, {hint}"
            )
        options = ", ".join(f"prefix={p} and a {h}x{w} grid" for p, h, w in found[:4])
        more = f" (and {len(found) - 4} more)" if len(found) > 4 else ""
        raise LayoutError(
            f"layer {layer!r}: {described} can be read as tokens in several ways: {options}{more}; nothing is "
            f"guessed: {hint}"
        )

    # ------------------------------------------------------------------ conversion
    def to_maps(self, value: Tensor) -> Tensor:
        """The ``(B, U, h, w)`` maps of an output in this (resolved) layout (``(B, U)`` gives ``(B, U, 1, 1)``).

        Examples:
            >>> tokens = torch.arange(2 * 5 * 3.0).view(2, 5, 3)   # 1 prefix token + a 2x2 grid, 3 units
            >>> maps = LayerLayout.tokens(prefix=1, grid=(2, 2)).to_maps(tokens)
            >>> maps[0, 0].tolist()                                 # unit 0 over the grid, row by row
            [[3.0, 6.0], [9.0, 12.0]]
        """
        if not self.resolved:
            raise LayoutError(f"layout {self.spec!r} is not resolved: call resolve() with the output's shape first")
        if self.kind == "channels-first":
            return value[:, :, None, None] if value.ndim == 2 else value
        if self.kind == "channels-last":
            return value.permute(0, 3, 1, 2)
        h, w = self.grid  # type: ignore[misc]
        patches = value[:, self.prefix :]
        return patches.reshape(value.shape[0], h, w, value.shape[2]).permute(0, 3, 1, 2)

    def from_maps(self, maps: Tensor, value: Tensor) -> Tensor:
        """Write ``(B, U, h, w)`` maps back into ``value``'s layout: a new tensor, prefix tokens kept.

        Examples:
            >>> layout = LayerLayout.tokens(prefix=1, grid=(2, 2))
            >>> tokens = torch.randn(2, 5, 3)
            >>> torch.equal(layout.from_maps(layout.to_maps(tokens), tokens), tokens)
            True
            >>> edited = layout.from_maps(torch.zeros(2, 3, 2, 2), tokens)
            >>> torch.equal(edited[:, 0], tokens[:, 0]), float(edited[:, 1:].abs().sum())
            (True, 0.0)
        """
        if self.kind == "channels-first":
            return maps.reshape(value.shape) if value.ndim == 2 else maps
        if self.kind == "channels-last":
            return maps.permute(0, 2, 3, 1)
        patches = maps.permute(0, 2, 3, 1).reshape(maps.shape[0], -1, maps.shape[1])
        return torch.cat([value[:, : self.prefix].to(patches.dtype), patches], dim=1)


def token_grids(
    count: int, image_size: Sequence[int] | None = None, patch_size: int | None = None, *, prefix: int | None = None
) -> list[tuple[int, int, int]]:
    """Every ``(prefix, h, w)`` with ``prefix + h·w = count`` that the images can have made.

    With an image size ``(H, W)``, a grid must be the image cut into square patches of one size
    ``s`` (``h = H // s``, ``w = W // s``; ``s`` is ``patch_size`` when known); without one, the
    grid must be square. A grid has more cells than prefix tokens, and at least 4 (16 when the
    patch size is not known: a short sequence is not taken for a tiny grid). Prefixes up to
    :data:`MAX_PREFIX_TOKENS` are tried unless one is given.

    Examples:
        >>> token_grids(197, (224, 224))                 # ViT-B/16: a class token and 14x14 patches
        [(1, 14, 14)]
        >>> token_grids(261, (224, 224), 14)             # DINOv2 with 4 registers
        [(5, 16, 16)]
        >>> token_grids(12 * 16 + 1, (192, 256), 16)     # a rectangular grid
        [(1, 12, 16)]
    """
    size = None if image_size is None else (int(image_size[-2]), int(image_size[-1]))
    prefixes = range(0, min(MAX_PREFIX_TOKENS, count - 1) + 1) if prefix is None else [int(prefix)]
    found = []
    for p in prefixes:
        n = count - p
        if n < (4 if patch_size is not None else 16) or n <= p:
            continue
        for h in range(1, n + 1):
            if n % h:
                continue
            w = n // h
            if _grid_fits(h, w, size, patch_size):
                found.append((p, h, w))
    return found


def _grid_fits(h: int, w: int, size: tuple[int, int] | None, patch: int | None) -> bool:
    if size is None:
        return h == w
    height, width = size
    if patch is not None:
        return height // patch == h and width // patch == w
    # a patch size s with height // s == h and width // s == w
    low = max(height // (h + 1) + 1, width // (w + 1) + 1, 1)
    high = min(height // h, width // w)
    return low <= high


def _aspect_fits(h: int, w: int, size: tuple[int, int]) -> bool:
    """Maps ``h × w`` keep the aspect ratio of ``size`` images (to within one cell)."""
    height, width = size
    return abs(h * width - w * height) <= max(height, width)


_FIRST_MODULES = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)


def _channel_sizes(module: nn.Module | None) -> tuple[set[int], set[int]]:
    """Channel counts of ``module``'s channels-first parts (convolutions, 2-D norms) and channels-last ones.

    A ``LayerNorm`` over the last axis is the channels-last sign (Swin, ConvNeXt's blocks inside);
    linear maps are not: convolutional blocks have them too (style affines, squeeze-excitation).
    """
    first: set[int] = set()
    last: set[int] = set()
    if module is None:
        return first, last
    for sub in module.modules():
        if isinstance(sub, (nn.Conv2d, nn.ConvTranspose2d)):
            first.add(sub.out_channels)
        elif isinstance(sub, (nn.BatchNorm2d, nn.InstanceNorm2d)):
            first.add(sub.num_features)
        elif isinstance(sub, nn.GroupNorm):
            first.add(sub.num_channels)
        elif isinstance(sub, nn.LayerNorm) and len(sub.normalized_shape) == 1:
            last.add(int(sub.normalized_shape[0]))
    return first, last


def _channels_axis(shape: tuple[int, ...], size: tuple[int, int] | None, module: nn.Module | None, layer: str) -> str:
    """``channels-first`` or ``channels-last`` for a 4-D output (see :meth:`LayerLayout.resolve`)."""
    _, a, b, c = shape
    if size is not None:
        first_fits, last_fits = _aspect_fits(b, c, size), _aspect_fits(a, b, size)
        if first_fits != last_fits:  # only one reading keeps the image's aspect ratio
            return "channels-first" if first_fits else "channels-last"
    first, last = _channel_sizes(module)
    says_first, says_last = a in first, c in last
    if says_first != says_last:
        return "channels-first" if says_first else "channels-last"
    if a <= b and a <= c and a == b and c > b:
        warnings.warn(
            f"layer {layer!r}: its output {shape} is read channels-first as {a} units of {b}x{c} maps, but it looks "
            f"channels-last ({a}x{b} maps of {c} channels); if it is, "
            + _OPTION.format(call="channels_last()", layer=layer, spec="channels-last"),
            UserWarning,
            stacklevel=4,
        )
    return "channels-first"


def default_part(output: Any) -> int | str | None:
    """Where the tensor of a non-tensor output is, with no selector: ``None`` when there is none.

    A tuple or list gives its item 0 when that is a tensor (Hugging Face layers, blocks returning
    ``(x, extra)``); a dict (a Hugging Face ``ModelOutput``) its ``last_hidden_state``, else its
    first tensor value.

    Examples:
        >>> default_part((torch.zeros(1), None)), default_part({"logits": 1, "last_hidden_state": torch.zeros(1)})
        (0, 'last_hidden_state')
        >>> default_part(torch.zeros(1)) is None
        True
    """
    if isinstance(output, Tensor):
        return None
    if isinstance(output, (tuple, list)):
        return 0 if output and isinstance(output[0], Tensor) else None
    if isinstance(output, Mapping):
        if isinstance(output.get("last_hidden_state"), Tensor):
            return "last_hidden_state"
        return next((key for key, value in output.items() if isinstance(value, Tensor)), None)
    return None


def patch_size_of(model: nn.Module) -> int | None:
    """The patch size of a vision transformer: the ``patch_size`` its modules agree on (``None`` if none or several).

    torchvision's ``VisionTransformer``, timm's ``PatchEmbed`` and Hugging Face's patch embeddings
    all keep one.

    Examples:
        >>> class Embed(nn.Module):
        ...     patch_size = (16, 16)
        >>> patch_size_of(nn.Sequential(Embed(), nn.Identity())), patch_size_of(nn.Linear(2, 2))
        (16, None)
    """
    sizes = set()
    for sub in model.modules():
        value = getattr(sub, "patch_size", None)
        if isinstance(value, int) and not isinstance(value, bool):
            sizes.add(value)
        elif isinstance(value, (tuple, list)) and len(value) == 2 and value[0] == value[1]:
            if isinstance(value[0], int):
                sizes.add(int(value[0]))
    return sizes.pop() if len(sizes) == 1 else None


def parse_layout(value: LayerLayout | str) -> LayerLayout:
    """A :class:`LayerLayout` from a layout or its text form.

    Examples:
        >>> parse_layout("tokens:prefix=1").prefix
        1
    """
    if isinstance(value, LayerLayout):
        return value
    return LayerLayout.parse(value)


def parse_layouts(items: Sequence[str]) -> LayerLayout | dict[str, LayerLayout] | None:
    """The command line's ``--layout [LAYER=]SPEC ...``: one layout for every layer, or one per layer.

    Examples:
        >>> parse_layouts(["blocks.3=tokens:prefix=1", "features.2=channels-last"])["features.2"].kind
        'channels-last'
        >>> parse_layouts(["tokens"]).kind
        'tokens'
    """
    if not items:
        return None
    every = [item for item in items if "=" not in item.split(":", 1)[0]]
    named = [item for item in items if item not in every]
    if every and (named or len(every) > 1):
        raise ValueError(
            f"--layout: give one layout for every layer (e.g. tokens) or LAYER=SPEC pairs, not both; got {list(items)}"
        )
    if every:
        return LayerLayout.parse(every[0])
    out = {}
    for item in named:
        layer, _, spec = item.partition("=")
        out[layer.strip()] = LayerLayout.parse(spec)
    return out


def channels_last_images_hint(shape: Sequence[int], what: str = "images") -> str | None:
    """A message for images that look channels-last ``(..., H, W, 3)``, or ``None``.

    Examples:
        >>> hint = channels_last_images_hint((8, 32, 32, 3))
        >>> hint.split(", but ")[0]
        'images of shape (8, 32, 32, 3) look channels-last (N, H, W, C)'
        >>> hint.split(", but ")[1]
        'images must be (N, C, H, W): permute them with .permute(0, 3, 1, 2)'
        >>> channels_last_images_hint((8, 3, 32, 32)) is None
        True
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 3:
        return None
    channels, height, width = shape[-1], shape[-3], shape[-2]
    if channels not in (1, 3, 4) or height in (1, 3, 4) or height < 8 or width < 8:
        return None
    order = "(0, 3, 1, 2)" if len(shape) == 4 else "(2, 0, 1)"
    form = "(N, H, W, C)" if len(shape) == 4 else "(H, W, C)"
    wanted = "(N, C, H, W)" if len(shape) == 4 else "(C, H, W)"
    return (
        f"{what} of shape {shape} look channels-last {form}, but images must be {wanted}: permute them with "
        f".permute{order}"
    )


class LayoutReading:
    """What a runner knows of its layers' layouts: declared by its selector, or resolved on first sight.

    The runner (:class:`~lightning_dissect.engine.runner.ModuleRunner`) sets the attributes below
    and says how a layer name becomes its module (:meth:`_layer`).
    """

    model: nn.Module
    #: Picks the tensor of tuple/dict layer outputs; a :class:`LayerLayout` (or a mapping
    #: ``layer -> selector``) declares where a layer's units are.
    selector: Any
    layouts: dict[str, LayerLayout]
    layout_problems: dict[str, str]
    _patch_size: int | None | bool

    @abc.abstractmethod
    def _layer(self, name: str) -> nn.Module | None:
        """The module of layer ``name`` (given by the runner)."""

    def layout_of(self, layer: str) -> LayerLayout:
        """The layout ``layer`` is read in: resolved, or as declared by the selector (``auto`` by default)."""
        if layer in self.layouts:
            return self.layouts[layer]
        chosen = self.selector.get(layer) if isinstance(self.selector, Mapping) else self.selector
        return chosen if isinstance(chosen, LayerLayout) else LayerLayout()

    def _as_maps(self, name: str, value: Tensor, image_size: Sequence[int] | None, *, strict: bool) -> Tensor:
        """``value`` as ``(B, U, h, w)`` maps in ``name``'s layout, resolving the layout on first sight.

        A layout that cannot be resolved raises :class:`LayerShapeError` when ``strict``; otherwise
        the output is returned as it is and the reason kept for :func:`_check_maps`.
        """
        layout = self.layouts.get(name)
        if layout is None:
            if self._patch_size is False:
                self._patch_size = patch_size_of(self.model)
            try:
                layout = self.layout_of(name).resolve(
                    value.shape, image_size=image_size, patch_size=self._patch_size or None,  # type: ignore[arg-type]
                    module=self._layer(name), layer=name,
                )
            except LayoutError as err:
                if strict:
                    raise LayerShapeError(str(err)) from err
                self.layout_problems[name] = str(err)
                return value
            self.layouts[name] = layout
            self.layout_problems.pop(name, None)
        try:
            return layout.to_maps(value)
        except RuntimeError as err:  # a later output of another shape than the first
            raise LayerShapeError(
                f"layer {name!r}: its output {tuple(value.shape)} does not fit the layout it was first read in "
                f"({layout.spec}): {err}"
            ) from err
