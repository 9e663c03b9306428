"""What ``dissect`` and ``emergence`` share before any long work: device, generator, layers, settings.

:func:`prepare_generator` loads the generator and the segmenter a command names, resolves the layer
names and chooses the latent layout by one dry run
(:meth:`~lightning_dissect.engine.generator.GeneratorRunner.choose_latents`, as the callback does);
:func:`dissection_config` turns the options into a :class:`~lightning_dissect.config.DissectionConfig`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from lightning_dissect.cli._arguments import CONFIG_OPTIONS, config_settings
from lightning_dissect.cli._loading import CLIError, load_generator, load_object, load_segmenter
from lightning_dissect.engine.discovery import LATENT_DIM_ATTRIBUTES, find_latent_dim, latent_shape_candidates

__all__ = [
    "dissection_config",
    "layer_names",
    "parse_selector",
    "with_layouts",
    "prepare_generator",
    "resolve_device",
    "split_layers",
]


def split_layers(values: Sequence[str]) -> list[str]:
    """``--layers`` values, space- or comma-separated, as one list of names."""
    return [name.strip() for v in values for name in v.split(",") if name.strip()]


def resolve_device(name: str) -> str:
    """``--device``: ``auto`` becomes ``cuda`` when available, else ``cpu``; a bad name is a :class:`CLIError`."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise CLIError(f"--device: {err}") from err
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available on this machine")
    return name


def parse_selector(text: str | None) -> Any:
    """``--selector``: an index, a key, or a ``MODULE:ATTR`` callable or ``Selector``."""
    if text is None:
        return None
    if text.lstrip("-").isdigit():
        return int(text)
    if ":" in text:
        return load_object(text, "--selector")
    return text


def with_layouts(selector: Any, items: list[str] | None, layers: list[str]) -> Any:
    """``--selector`` and ``--layout`` together: the selector as given, or layouts that pick its part.

    Examples:
        >>> with_layouts(0, ["tokens:prefix=1"], ["blocks.3"])
        LayerLayout(kind='tokens', prefix=1, grid=None, part=0)
        >>> sorted(with_layouts(None, ["b=channels-last"], ["a", "b"]).items())[0]
        ('a', None)
    """
    from dataclasses import replace

    from lightning_dissect.engine.layouts import LayerLayout, parse_layouts

    if not items:
        return selector
    try:
        layouts = parse_layouts(items)
    except ValueError as err:
        raise CLIError(f"--layout: {err}") from None
    if selector is not None and not isinstance(selector, (int, str)):
        raise CLIError(
            "--layout with a MODULE:ATTR --selector: return a LayerLayout(..., part=...) from that selector's "
            "module instead (lightning_dissect.engine.layouts), or give --selector as an index or a key"
        )
    if isinstance(layouts, LayerLayout):
        return replace(layouts, part=selector)
    unknown = [name for name in layouts or {} if name not in layers]
    if unknown:
        raise CLIError(f"--layout names layers {unknown} that are not among the dissected layers {layers}")
    return {name: replace(layouts[name], part=selector) if name in layouts else selector for name in layers}


def layer_names(layers: list[str], generator: Any, attribute: str | None) -> list[str]:
    """Layer names relative to the generator; ``<attribute>.name`` is accepted too."""
    from lightning_dissect.engine.hooks import resolve_layer

    names = []
    for name in layers:
        if attribute and name.startswith(attribute + "."):
            try:
                resolve_layer(generator, name)
            except ValueError:
                name = name[len(attribute) + 1 :]
        try:
            resolve_layer(generator, name, argument="--layers")
        except ValueError as err:
            raise CLIError(str(err)) from err
        names.append(name)
    return names


def prepare_generator(args: argparse.Namespace) -> dict[str, Any]:
    """Load the generator and segmenter of a command and dry-run them before any long work.

    Returns the keyword arguments for :func:`~lightning_dissect.dissect` (generator, layers,
    segmenter, latent options), plus ``"model"``, the object ``--generator`` named.
    """
    from lightning_dissect.engine.generator import GeneratorRunner
    from lightning_dissect.engine.runner import DryRunError

    layers = split_layers(args.layers)
    if not layers:
        raise CLIError("--layers: give at least one layer name")
    device = resolve_device(args.device)
    model, generator, attribute = load_generator(args.generator, getattr(args, "checkpoint", None), device)
    generator.to(device)
    layers = layer_names(layers, generator, attribute)
    sampler = load_object(args.latent_sampler, "--latent-sampler") if args.latent_sampler else None
    generate = load_object(args.generate, "--generate") if args.generate else None
    selector = with_layouts(parse_selector(args.selector), getattr(args, "layout", None), layers)
    shapes: list[tuple[int, ...]] = []
    if sampler is None:
        dim = args.latent_dim or find_latent_dim(model, generator)
        shapes = latent_shape_candidates(dim, args.latent_shape)
        if not shapes:
            raise CLIError(
                "cannot tell the latent size: pass --latent-dim, --latent-shape or --latent-sampler (looked for "
                f"hparams/attributes {', '.join(LATENT_DIM_ATTRIBUTES)})"
            )
    segmenter = load_segmenter(args.segmenter, args.image_size, args.segmentation_size)
    try:
        runner = GeneratorRunner(generator, generate=generate, selector=selector, batch_size=args.batch_size)
        shape = runner.choose_latents(
            layers, segmenter, shapes, seed=args.seed, sampler=sampler, sampler_name="--latent-sampler"
        )
    except DryRunError as err:
        if err.after_forward:  # the generator ran: the latent options are not the problem
            raise CLIError(" ".join(str(err).split())) from err
        called = (f"the {attribute!r} submodule of {type(model).__name__}" if attribute
                  else f"{type(generator).__name__}")
        advice = (
            "check --latent-dim / --latent-shape, pass --generate or --latent-sampler, or give a "
            "--generator MODULE:ATTR that names the generator itself" if attribute
            else "check --latent-dim / --latent-shape, or pass --generate or --latent-sampler to call it as it expects"
        )
        raise CLIError(f"{err} — called {called}; {advice}") from err
    return {
        "model": model,
        "generator": generator,
        "layers": layers,
        "segmenter": segmenter,
        "latent_shape": shape,
        "latent_sampler": sampler,
        "generate": generate,
        "selector": selector,
        "device": device,
    }


def dissection_config(args: argparse.Namespace, device: str, *, visualize: bool) -> Any:
    """The :class:`~lightning_dissect.config.DissectionConfig` of a command's options.

    The options were checked when parsed (each by its field's rule); this merges them the one way
    settings are merged (:func:`~lightning_dissect.config.merge_settings`).
    """
    from lightning_dissect.config import merge_settings

    try:
        settings = config_settings(args, device=device, visualize=visualize)
        names = {name: option for name, (option, _, _) in CONFIG_OPTIONS.items()}
        return merge_settings(None, ("the options", settings), names=names)
    except (TypeError, ValueError) as err:
        raise CLIError(str(err)) from err
