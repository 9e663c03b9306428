"""``lightning-dissect paint``: browse a dissection and paint with units in the browser (GANPaint).

Loads the generator as ``dissect`` does, reads ``--dissection`` (or runs a quick dissection with a
progress bar), reads the ``--causal`` unit sets, and serves the paint page on ``--host`` (default
127.0.0.1, this machine only) at ``--port`` (default 7860, or the next free port). Needs the ``app``
extra: ``pip install 'lightning-dissect[app]'``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lightning_dissect.cli._arguments import (
    add_command,
    add_dissection_arguments,
    add_generator_arguments,
    add_run_arguments,
    positive_int,
)
from lightning_dissect.cli._loading import CLIError, describe_error
from lightning_dissect.cli._prepare import dissection_config, prepare_generator

__all__ = ["QUICK_SAMPLES", "add_paint_command", "build_painter", "run_paint"]

#: ``--num-samples`` of the quick dissection run when no ``--dissection`` is given.
QUICK_SAMPLES = 500


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"expected a port in 1..65535, got {text!r}")
    return port


def add_paint_command(sub: Any) -> None:
    """Register ``paint`` on the sub-command parsers ``sub``."""
    p = add_command(
        sub, "paint", "browse a dissection and paint with units in the browser (GANPaint for any generator)",
        "Serve a local page to browse the dissected units (labels, IoU, alpha, strips) and to edit generated "
        "samples: brush a region, and Draw inserts a concept's units there (Erase ablates them). Without "
        "--dissection a quick dissection runs first. Needs the app extra: pip install 'lightning-dissect[app]'.",
    )
    add_generator_arguments(p, layers_required=False,
                            layers_help="; default: the layers of --dissection (needed without it)")
    add_dissection_arguments(p)
    p.set_defaults(num_samples=QUICK_SAMPLES, num_visualized_units=0)
    app = p.add_argument_group("paint")
    app.add_argument("--dissection", metavar="FILE",
                     help="a dissect.json of this generator (from `dissect --output`); default: run a quick "
                     "dissection of --layers first")
    app.add_argument("--causal", metavar="FILE", action="append", default=[],
                     help="a causal.json (from `causal --output`): its concept is painted with its causal units; "
                     "repeat for several concepts")
    app.add_argument("--host", default="127.0.0.1",
                     help="address to serve on; the default serves this machine only (0.0.0.0: every network "
                     "interface, anyone who can reach it)")
    app.add_argument("--port", type=_port, metavar="PORT", help="port; default: 7860, or the next free one")
    app.add_argument("--statistics-samples", type=positive_int, default=128, metavar="N",
                     help="latents over which each layer's insertion values (0.99 quantiles) are measured")
    add_run_arguments(app)


def _read_result(path: str) -> Any:
    from lightning_dissect.result import DissectionResult

    if not Path(path).is_file():
        raise CLIError(f"--dissection: file not found: {path}")
    try:
        return DissectionResult.from_json(path)
    except (ValueError, KeyError, TypeError, OSError) as err:
        raise CLIError(f"--dissection: cannot read {path}: {describe_error(err)}") from err


def _read_causal(paths: list[str]) -> list[Any]:
    from lightning_dissect.interventions import CausalUnits

    sets = []
    for path in paths:
        if not Path(path).is_file():
            raise CLIError(f"--causal: file not found: {path}")
        try:
            sets.append(CausalUnits.from_json(path))
        except (ValueError, KeyError, TypeError, OSError) as err:
            raise CLIError(f"--causal: cannot read {path}: {describe_error(err)}") from err
    return sets


def build_painter(args: argparse.Namespace) -> Any:
    """Load everything ``paint`` serves and return the :class:`~lightning_dissect.app.Painter`.

    Raises :class:`CLIError` for user errors (missing files, a causal set of a layer that was not
    dissected, a segmenter whose concepts are not the dissection's, ...).
    """
    from lightning_dissect.app import Painter

    result = _read_result(args.dissection) if args.dissection else None
    causal = _read_causal(args.causal)
    if result is not None:
        if not args.layers:
            args.layers = list(result.layers)
        if args.latent_shape is None and args.latent_sampler is None and result.metadata.get("latent_shape"):
            args.latent_shape = tuple(int(s) for s in result.metadata["latent_shape"])
    elif not args.layers:
        raise CLIError("--layers: give the layers to dissect (or a --dissection file)")
    prepared = prepare_generator(args)
    segmenter = prepared["segmenter"]
    if result is None:
        result = _quick_dissection(args, prepared)
    else:
        missing = [name for name in prepared["layers"] if name not in result.layers]
        if missing:
            raise CLIError(f"--layers {missing} are not in --dissection {args.dissection} (its layers: "
                           f"{list(result.layers)})")
        if tuple(result.vocabulary.names) != tuple(segmenter.vocabulary.names):
            raise CLIError(f"--segmenter {args.segmenter} does not know the concepts --dissection was computed with; "
                           "give the segmenter of the dissection")
    for c in causal:
        if c.layer not in result.layers:
            raise CLIError(f"--causal: the causal units of {c.concept!r} are of layer {c.layer!r}, which the "
                           f"dissection does not have (its layers: {list(result.layers)})")
    try:
        return Painter(
            prepared["generator"], result, segmenter, causal=causal, latent_shape=prepared["latent_shape"],
            latent_sampler=prepared["latent_sampler"], generate=prepared["generate"], selector=prepared["selector"],
            statistics_samples=args.statistics_samples, generator_name=args.generator, checkpoint=args.checkpoint,
        )  # fmt: skip
    except (ValueError, TypeError, RuntimeError) as err:
        if args.debug:
            raise
        raise CLIError(f"paint: {describe_error(err)}") from err


def _quick_dissection(args: argparse.Namespace, prepared: dict[str, Any]) -> Any:
    from lightning_dissect.dissection import dissect

    config = dissection_config(args, prepared["device"], visualize=False)
    metadata: dict[str, Any] = {"generator": args.generator}
    if prepared["latent_shape"] is not None:
        metadata["latent_shape"] = list(prepared["latent_shape"])
    if args.checkpoint:
        metadata["checkpoint"] = str(args.checkpoint)
    if not args.quiet:
        print(f"paint: no --dissection given; dissecting {', '.join(prepared['layers'])} on {config.num_samples} "
              "samples first", flush=True)
    try:
        return dissect(
            prepared["generator"], prepared["layers"], prepared["segmenter"], latent_shape=prepared["latent_shape"],
            latent_sampler=prepared["latent_sampler"], generate=prepared["generate"], selector=prepared["selector"],
            config=config, metadata=metadata,
        )  # fmt: skip
    except (ValueError, TypeError, RuntimeError) as err:
        if args.debug:
            raise
        raise CLIError(f"dissection failed: {describe_error(err)}") from err


def run_paint(args: argparse.Namespace) -> int:
    """Run the ``paint`` command: serve until Ctrl-C (raises :class:`CLIError` on user errors)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401

        from lightning_dissect.app.server import PaintServer, create_app
    except ImportError as err:
        raise CLIError(f"paint needs the app extra: pip install 'lightning-dissect[app]' ({err})") from err
    painter = build_painter(args)
    try:
        server = PaintServer(create_app(painter), host=args.host, port=args.port)
    except OSError as err:
        raise CLIError(f"--port: {err}") from err
    print(f"paint: serving {server.url} (Ctrl-C stops)", flush=True)
    server.run()
    return 0
