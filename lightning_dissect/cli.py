"""The ``lightning-dissect`` command line (also ``python -m lightning_dissect``).

::

    lightning-dissect dissect --generator mypkg.models:GAN --checkpoint last.ckpt \\
        --layers block3 block4 --num-samples 2000 --output dissection/

dissects the named layers of a generator, prints a summary table and, with ``--output``, writes
``dissect.json`` and the HTML report. Errors are reported as one ``error: ...`` line on stderr with
exit status 2 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_dissect.config import CLI_DEFAULTS, config_defaults
from lightning_dissect.discovery import (
    GENERATOR_ATTRIBUTES,
    LATENT_DIM_ATTRIBUTES,
    find_generator_or_self,
    find_latent_dim,
    latent_shape_candidates,
)

_DEFAULTS = config_defaults(CLI_DEFAULTS)

__all__ = ["CLIError", "build_parser", "main", "load_object", "load_generator"]


class CLIError(Exception):
    """A user error: printed as one ``error: ...`` line, exit status 2."""


# ---------------------------------------------------------------------------- loading
def load_object(spec: str, option: str = "--generator") -> Any:
    """Import ``module:attribute`` (or ``path/to/file.py:attribute``) and return the attribute.

    The current directory is importable, as with ``python -m``.

    Examples:
        >>> load_object("collections:OrderedDict").__name__
        'OrderedDict'
        >>> try:
        ...     load_object("collections")
        ... except CLIError as err:
        ...     print(err)
        --generator must look like 'module:attribute', got 'collections'

    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CLIError(f"{option} must look like 'module:attribute', got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise CLIError(f"{option}: file not found: {module_name}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(module_name)
    except CLIError:
        raise
    except ImportError as err:
        raise CLIError(f"{option}: cannot import module {module_name!r}: {err}") from err
    except Exception as err:  # the user's module raised while importing
        raise CLIError(
            f"{option}: importing {module_name!r} failed: {type(err).__name__}: {err}"
        ) from err
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as err:
            raise CLIError(
                f"{option}: module {module_name!r} has no attribute {attribute!r}"
            ) from err
    return obj


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def load_generator(spec: str, checkpoint: str | None, device: str) -> tuple[Any, Any, str | None]:
    """Load ``(model, generator, attribute)`` from a ``--generator`` spec and an optional checkpoint.

    ``spec`` names a factory function, an ``nn.Module`` instance or a class; a class with
    ``load_from_checkpoint`` (a LightningModule) is loaded from ``checkpoint``, any other class or
    factory is called without arguments, and a plain module gets the checkpoint's ``state_dict``.
    The generator is the model's submodule found by :func:`~lightning_dissect.discovery.find_generator_or_self`
    (``attribute`` names it; ``None`` when the model is the generator itself).
    """
    import torch
    from torch import nn

    if checkpoint is not None and not Path(checkpoint).is_file():
        raise CLIError(f"--checkpoint: file not found: {checkpoint}")
    obj = load_object(spec, "--generator")
    loaded = False
    if isinstance(obj, type):
        if checkpoint is not None and hasattr(obj, "load_from_checkpoint"):
            try:
                model = obj.load_from_checkpoint(checkpoint, map_location=device)
            except Exception as err:
                raise CLIError(
                    f"--checkpoint: {obj.__name__}.load_from_checkpoint({checkpoint!r}) failed: "
                    f"{_describe(err)}"
                ) from err
            loaded = True
        else:
            try:
                model = obj()
            except Exception as err:
                raise CLIError(
                    f"--generator: {spec} could not be created without arguments: "
                    f"{_describe(err)} (use a factory function, or --checkpoint with a "
                    "LightningModule class)"
                ) from err
    elif isinstance(obj, nn.Module):
        model = obj
    elif callable(obj):
        try:
            model = obj()
        except Exception as err:
            raise CLIError(f"--generator: calling {spec}() failed: {_describe(err)}") from err
    else:
        raise CLIError(
            f"--generator: {spec} is a {type(obj).__name__}, not a factory, a module or a class"
        )
    if not isinstance(model, nn.Module):
        raise CLIError(f"--generator: {spec} gave a {type(model).__name__}, not a torch.nn.Module")
    if checkpoint is not None and not loaded:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                state = state["state_dict"]
            model.load_state_dict(state)
        except Exception as err:
            raise CLIError(
                f"--checkpoint: loading the state dict of {checkpoint} into {spec} failed: "
                f"{_describe(err)}"
            ) from err
    generator, attribute = find_generator_or_self(model)
    return model, generator, attribute


def load_segmenter(spec: str, image_size: int, segmentation_size: int | None) -> Any:
    """``"synthetic"`` (the scene world's exact segmenter) or a ``module:attribute`` factory."""
    if spec == "synthetic":
        from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter

        try:
            return SyntheticSceneSegmenter(SceneWorld(image_size), resolution=segmentation_size)
        except (TypeError, ValueError) as err:
            raise CLIError(f"--segmenter synthetic: {err}") from err
    obj = load_object(spec, "--segmenter")
    if not hasattr(obj, "vocabulary") and callable(obj):
        try:
            obj = obj()
        except Exception as err:
            raise CLIError(f"--segmenter: calling {spec}() failed: {_describe(err)}") from err
    missing = [a for a in ("vocabulary", "value_range") if not hasattr(obj, a)]
    if missing or not callable(obj):
        raise CLIError(
            f"--segmenter: {spec} is not a segmenter (needs `vocabulary`, `value_range` and "
            f"__call__; missing {', '.join(missing) or '__call__'})"
        )
    return obj


# ---------------------------------------------------------------------------- parser
def _int_at_least(minimum: int, what: str) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected sizes like 128,1,1, got {text!r}") from err
    if not shape or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"expected positive sizes like 128,1,1, got {text!r}")
    return shape


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lightning-dissect``."""
    parser = argparse.ArgumentParser(
        prog="lightning-dissect",
        description="GAN Dissection of a generator's layers: which units paint which concepts.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser(
        "dissect",
        help="dissect layers of a generator and write dissect.json + an HTML report",
        description=(
            "Dissect the named layers of a generator against a segmenter's concepts: per unit, "
            "the concept its thresholded activation overlaps best (IoU). Prints a summary; with "
            "--output also writes dissect.json and index.html."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_generator_arguments(p)
    add_dissection_arguments(p)
    out = p.add_argument_group("output")
    out.add_argument("--output", metavar="DIR",
                     help="write DIR/dissect.json and the HTML report DIR/index.html")
    out.add_argument("--title", help="title of the HTML report")
    out.add_argument("--summary-units", type=_non_negative_int, default=10, metavar="N",
                     help="units per layer in the printed summary (0: no summary)")
    add_run_arguments(out)
    return parser


def add_generator_arguments(p: argparse.ArgumentParser) -> None:
    """``--generator``, ``--checkpoint``, ``--layers``, latent, call and selector options."""
    model = p.add_argument_group("generator")
    model.add_argument(
        "--generator", required=True, metavar="MODULE:ATTR",
        help="the generator: a factory function returning an nn.Module, an nn.Module instance, "
        "or a class (a LightningModule class with --checkpoint); MODULE may be a dotted module "
        "importable from the current directory or a path/to/file.py. The generator is the "
        f"object's {'/'.join(GENERATOR_ATTRIBUTES)} submodule when it has one, else the object "
        "(point MODULE:ATTR at the generator itself to override).",
    )
    model.add_argument(
        "--checkpoint", metavar="PATH",
        help="checkpoint to load: with a LightningModule class via "
        "cls.load_from_checkpoint(PATH, map_location=DEVICE); with a plain module, its "
        "state_dict (or the checkpoint's 'state_dict' entry)",
    )
    model.add_argument(
        "--layers", required=True, nargs="+", metavar="LAYER",
        help="dotted names of the layers to dissect, relative to the generator (as in "
        "generator.named_modules()), space- or comma-separated, e.g. block3 block4; a name "
        "prefixed with the generator's attribute (generator.block3) is accepted too",
    )
    model.add_argument(
        "--latent-dim", type=_positive_int, metavar="D",
        help="latent size, tried as (D,) then (D, 1, 1); default: the first of "
        f"{', '.join(LATENT_DIM_ATTRIBUTES)} on the model's or the generator's hparams or attributes",
    )
    model.add_argument(
        "--latent-shape", type=_shape, metavar="SHAPE",
        help="full shape of one latent, e.g. 128,1,1 for generators that take (N, 128, 1, 1); "
        "overrides --latent-dim",
    )
    model.add_argument(
        "--latent-sampler", metavar="MODULE:ATTR",
        help="custom latents: a callable (n, torch.Generator) -> latents (a tensor, a tuple or a "
        "dict of tensors, batch first); overrides --latent-dim/--latent-shape",
    )
    model.add_argument(
        "--generate", metavar="MODULE:ATTR",
        help="custom call: a callable (generator, latents) -> images (B, C, H, W); default "
        "generator(latents)",
    )
    model.add_argument(
        "--selector", metavar="INT|NAME|MODULE:ATTR",
        help="which tensor of tuple/dict layer outputs to dissect: an index, a key, or a "
        "MODULE:ATTR callable output -> tensor",
    )


def add_dissection_arguments(p: argparse.ArgumentParser) -> None:
    """Segmenter and dissection settings (defaults: :data:`~lightning_dissect.config.CLI_DEFAULTS`)."""
    seg = p.add_argument_group("segmenter")
    seg.add_argument(
        "--segmenter", default="synthetic", metavar="NAME|MODULE:ATTR",
        help="'synthetic' (the exact segmenter of the built-in scene world) or a MODULE:ATTR "
        "segmenter instance or factory (with vocabulary, value_range, __call__)",
    )
    seg.add_argument(
        "--image-size", type=_positive_int, default=32, metavar="PX",
        help="image size of the synthetic scene world (>= 16; it segments images of any size)",
    )
    seg.add_argument(
        "--segmentation-size", type=_positive_int, metavar="PX",
        help="resolution of the synthetic segmentation; default: the image size",
    )
    run = p.add_argument_group("dissection")
    run.add_argument("--num-samples", type=_positive_int, default=_DEFAULTS["num_samples"], metavar="N",
                     help="latents in the dissection bank")
    run.add_argument("--batch-size", type=_positive_int, default=_DEFAULTS["batch_size"], metavar="B",
                     help="latents per generator call")
    run.add_argument("--seed", type=int, default=_DEFAULTS["seed"],
                     help="seed of the latent bank (iqr level selection uses SEED+1)")
    run.add_argument("--threshold-mode", choices=("quantile", "iqr"), default=_DEFAULTS["threshold_mode"],
                     help="per-unit thresholds: a fixed activation quantile (NetDissect) or the "
                     "level maximising the information quality ratio (GAN Dissection)")
    run.add_argument("--quantile", type=float, default=_DEFAULTS["quantile"], metavar="Q",
                     help="quantile level of the thresholds in quantile mode")
    run.add_argument("--num-levels", type=_positive_int, default=_DEFAULTS["num_levels"], metavar="K",
                     help="candidate levels in iqr mode")
    run.add_argument("--level-selection-samples", type=_positive_int, metavar="N",
                     help="iqr mode: choose levels on a separate bank of N latents (seed+1)")
    run.add_argument("--iou-threshold", type=float, default=_DEFAULTS["iou_threshold"], metavar="T",
                     help="a unit is interpretable when its best IoU exceeds T")
    run.add_argument("--top-k", type=_positive_int, default=_DEFAULTS["top_k"], metavar="K",
                     help="top images kept per unit (by spatial max activation)")
    run.add_argument("--visualize-units", type=_non_negative_int, default=_DEFAULTS["num_visualized_units"],
                     metavar="N",
                     help="per layer, render image strips of the N best units for the report")
    run.add_argument("--no-chance-baseline", action="store_true",
                     help="skip the chance IoU (images paired with another image's segmentation)")
    run.add_argument("--device", default="auto",
                     help="where to run: auto (cuda when available, else cpu), cpu, cuda, cuda:1")


def add_run_arguments(group: Any) -> None:
    """``--quiet`` and ``--debug``."""
    group.add_argument("--quiet", action="store_true", help="no progress bars")
    group.add_argument("--debug", action="store_true",
                       help="show the full traceback of errors instead of one line")


# ---------------------------------------------------------------------------- command
def _layers(values: Sequence[str]) -> list[str]:
    return [name.strip() for v in values for name in v.split(",") if name.strip()]


def _device(name: str) -> str:
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


def _selector(text: str | None) -> Any:
    if text is None:
        return None
    if text.lstrip("-").isdigit():
        return int(text)
    if ":" in text:
        return load_object(text, "--selector")
    return text


def _layer_names(layers: list[str], generator: Any, attribute: str | None) -> list[str]:
    """Layer names relative to the generator; ``<attribute>.name`` is accepted too."""
    from lightning_dissect.hooks import resolve_layer

    names = []
    for name in layers:
        if attribute and name.startswith(attribute + "."):
            try:
                resolve_layer(generator, name)
            except ValueError:
                name = name[len(attribute) + 1 :]
        try:
            resolve_layer(generator, name)
        except ValueError as err:
            raise CLIError(str(err).replace("`layers`", "--layers")) from err
        names.append(name)
    return names


def prepare_generator(args: argparse.Namespace) -> dict[str, Any]:
    """Load the generator and segmenter of a command and dry-run them before any long work.

    Returns the keyword arguments for :func:`~lightning_dissect.dissect` (generator, layers,
    segmenter, latent options), plus ``"model"``, the object ``--generator`` named.
    """
    from lightning_dissect.latents import LatentBank
    from lightning_dissect.runner import GeneratorRunner

    layers = _layers(args.layers)
    if not layers:
        raise CLIError("--layers: give at least one layer name")
    device = _device(args.device)
    model, generator, attribute = load_generator(args.generator, getattr(args, "checkpoint", None), device)
    generator.to(device)
    layers = _layer_names(layers, generator, attribute)
    sampler = load_object(args.latent_sampler, "--latent-sampler") if args.latent_sampler else None
    generate = load_object(args.generate, "--generate") if args.generate else None
    selector = _selector(args.selector)
    if sampler is not None:
        shapes: list[tuple[int, ...] | None] = [None]
    else:
        dim = args.latent_dim or find_latent_dim(model, generator)
        shapes = list(latent_shape_candidates(dim, args.latent_shape))
        if not shapes:
            raise CLIError(
                "cannot tell the latent size: pass --latent-dim, --latent-shape or --latent-sampler (looked for "
                f"hparams/attributes {', '.join(LATENT_DIM_ATTRIBUTES)})"
            )
    segmenter = load_segmenter(args.segmenter, args.image_size, args.segmentation_size)
    runner = GeneratorRunner(generator, generate=generate, selector=selector, batch_size=args.batch_size)
    banks = [LatentBank(2, shape, args.seed, sampler) for shape in shapes]
    described = {id(b): ("--latent-sampler" if s is None else f"latents of shape {s}") for b, s in zip(banks, shapes)}
    try:
        chosen = runner.dry_run(layers, banks, segmenter, describe=lambda b: described[id(b)])
    except RuntimeError as err:
        called = (f"the {attribute!r} submodule of {type(model).__name__}" if attribute
                  else f"{type(generator).__name__}")
        raise CLIError(
            f"{err} — called {called}; check --latent-dim / --latent-shape, or pass --generate, "
            "--latent-sampler, or a --generator MODULE:ATTR that names the generator itself"
        ) from err
    shape = shapes[banks.index(chosen)]
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
    """The :class:`~lightning_dissect.config.DissectionConfig` of a command's options."""
    from lightning_dissect.config import DissectionConfig

    try:
        return DissectionConfig(
            num_samples=args.num_samples,
            batch_size=args.batch_size,
            seed=args.seed,
            threshold_mode=args.threshold_mode,
            quantile=args.quantile,
            num_levels=args.num_levels,
            level_selection_samples=args.level_selection_samples,
            iou_threshold=args.iou_threshold,
            top_k=args.top_k,
            num_visualized_units=args.visualize_units if visualize else 0,
            chance_baseline=not args.no_chance_baseline,
            progress=not args.quiet,
            device=device,
        ).validate()
    except ValueError as err:
        raise CLIError(str(err).replace("`", "")) from err


def run_dissect(args: argparse.Namespace) -> int:
    """Run the ``dissect`` command (raises :class:`CLIError` on user errors)."""
    from lightning_dissect.dissection import dissect

    prepared = prepare_generator(args)
    config = dissection_config(args, prepared["device"], visualize=bool(args.output))
    metadata: dict[str, Any] = {"generator": args.generator}
    if prepared["latent_shape"] is not None:
        metadata["latent_shape"] = list(prepared["latent_shape"])
    if args.checkpoint:
        metadata["checkpoint"] = str(args.checkpoint)
    try:
        result = dissect(
            prepared["generator"], prepared["layers"], prepared["segmenter"],
            latent_shape=prepared["latent_shape"], latent_sampler=prepared["latent_sampler"],
            generate=prepared["generate"], selector=prepared["selector"], config=config, metadata=metadata,
        )
    except (ValueError, TypeError, RuntimeError) as err:
        if args.debug:
            raise
        raise CLIError(f"dissection failed: {_describe(err)}") from err

    if args.summary_units:
        from rich.console import Console

        Console().print(result.summary(args.summary_units))
    if args.output:
        from lightning_dissect.report import write_report

        path = write_report(result, args.output, title=args.title)
        print(f"wrote {Path(args.output) / 'dissect.json'} and {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-dissect``; returns the exit status (0 ok, 2 user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return run_dissect(args)
    except CLIError as err:
        if args.debug:
            raise
        message = " ".join(str(err).split())
        print(f"error: {message}", file=sys.stderr)
        return 2
