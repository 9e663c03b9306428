"""``lightning-dissect causal``: learn the causal units of a concept at one layer (α per unit)."""

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
from lightning_dissect.cli._loading import CLIError, check_output, describe_error
from lightning_dissect.cli._prepare import dissection_config, prepare_generator

__all__ = ["add_causal_command", "run_causal"]


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from err


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(p) for p in text.split(",") if p.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected sizes like 1,2,4,8, got {text!r}") from err
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes like 1,2,4,8, got {text!r}")
    return sizes


def add_causal_command(sub: Any) -> None:
    """Register ``causal`` on the sub-command parsers ``sub``."""
    p = add_command(
        sub, "causal", "learn which units cause a concept (alpha per unit); write causal.json + a report",
        "Dissect one layer (IoU), then learn a coefficient alpha in [0, 1] per unit whose ablation removes the "
        "concept and whose insertion creates it, with an L2 penalty (GAN Dissection's causal unit sets). "
        "Compares the top-n units by alpha, by IoU and n random units. Writes DIR/causal.json (alpha per unit "
        "in unit order, the comparison, the settings), DIR/causal.html and the dissection report DIR/index.html "
        "with the causal section.",
    )
    add_generator_arguments(p, one_layer=True)
    add_dissection_arguments(p)
    causal = p.add_argument_group("causal units")
    causal.add_argument("--concept", required=True, metavar="NAME", help="the concept (a name of the vocabulary)")
    causal.add_argument("--causal-samples", type=positive_int, default=200, metavar="N",
                        help="sample latents alpha is learned on (the first N of the dissection's bank)")
    causal.add_argument("--steps", type=positive_int, default=8, help="Adam steps, each over all sample latents")
    causal.add_argument("--lr", type=_float, default=0.1, help="Adam's learning rate, in (0, 1]")
    causal.add_argument("--l2", type=_float, default=0.005, help="weight of the L2 penalty on alpha, in [0, 1]")
    causal.add_argument("--sizes", type=_sizes, metavar="N,N,...",
                        help="the n of the comparison (default 1,2,4,8,16,32 up to the layer width)")
    out = p.add_argument_group("output")
    out.add_argument("--output", required=True, metavar="DIR",
                     help="write DIR/causal.json, DIR/causal.html, DIR/index.html and DIR/dissect.json")
    out.add_argument("--title", help="title of the HTML report")
    add_run_arguments(out)


def run_causal(args: argparse.Namespace) -> int:
    """Run the ``causal`` command (raises :class:`CLIError` on user errors)."""
    from lightning_dissect.dissection import dissect
    from lightning_dissect.engine.latents import LatentBank
    from lightning_dissect.interventions import causal_units
    from lightning_dissect.report import write_causal_report, write_report

    check_output(args.output)
    prepared = prepare_generator(args)
    segmenter, layer = prepared["segmenter"], prepared["layers"][0]
    try:
        segmenter.vocabulary.index(args.concept)
    except KeyError as err:
        raise CLIError(f"--concept: {err.args[0]}") from None
    try:
        from lightning_dissect.segmenters.base import concept_scores_of

        concept_scores_of(segmenter, "--segmenter")
    except TypeError as err:
        raise CLIError(str(err)) from err
    config = dissection_config(args, prepared["device"], visualize=False)
    run = {"generate": prepared["generate"], "selector": prepared["selector"]}
    try:
        result = dissect(
            prepared["generator"], [layer], segmenter, latent_shape=prepared["latent_shape"],
            latent_sampler=prepared["latent_sampler"], config=config, metadata={"generator": args.generator}, **run,
        )  # fmt: skip
        bank = LatentBank(args.causal_samples, prepared["latent_shape"], args.seed, prepared["latent_sampler"])
        causal = causal_units(
            prepared["generator"], layer, args.concept, segmenter, bank, result.layers[layer], steps=args.steps,
            lr=args.lr, l2=args.l2, sizes=args.sizes, batch_size=args.batch_size, **run,
        )  # fmt: skip
    except (ValueError, TypeError, KeyError, RuntimeError) as err:
        if args.debug:
            raise
        raise CLIError(f"causal units failed: {describe_error(err)}") from err
    value_range = tuple(segmenter.value_range)
    causal.unit_images = _unit_strips(prepared, args, result, causal, value_range)
    page = write_causal_report([causal], args.output, value_range=value_range, title=args.title)
    write_report(result, args.output, causal=[causal], segmenter_value_range=value_range, title=args.title)
    if not args.quiet:
        print(causal.table())
    print(f"wrote {Path(args.output) / 'causal.json'}, {page} and {Path(args.output) / 'index.html'}")
    return 0


def _unit_strips(prepared: dict[str, Any], args: argparse.Namespace, result: Any, causal: Any, value_range: Any) -> Any:
    """The dissection's top images of the 6 best units by α, with their masks (the report's strips)."""
    from lightning_dissect.dissection.strips import render_unit_images
    from lightning_dissect.engine.latents import LatentBank

    layer = causal.layer
    bank = LatentBank(args.num_samples, prepared["latent_shape"], args.seed, prepared["latent_sampler"])
    strips = render_unit_images(
        prepared["generator"], result, bank, value_range, units={layer: causal.top_units(min(6, len(causal.alpha)))},
        generate=prepared["generate"], selector=prepared["selector"], batch_size=args.batch_size, scale=2,
    )  # fmt: skip
    return strips.get(layer, {})
