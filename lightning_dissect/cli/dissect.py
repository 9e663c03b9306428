"""``lightning-dissect dissect``: dissect a generator's or an image-reading network's layers.

With ``--generator`` the samples are a seeded latent bank; with ``--network`` a folder of images.
Prints a summary and, with ``--output``, writes ``dissect.json`` and the HTML report.

Under ``torchrun`` the latent bank (or the image folder) is split across the processes (gloo on
CPU, nccl on CUDA) and rank 0 prints and writes what a single process would.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lightning_dissect.cli._arguments import (
    add_command,
    add_dissection_arguments,
    add_generator_arguments,
    add_network_arguments,
    add_run_arguments,
    non_negative_int,
)
from lightning_dissect.cli._loading import (
    CLIError,
    check_output,
    describe_error,
    load_module,
    load_object,
    load_segmenter,
)
from lightning_dissect.cli._prepare import (
    dissection_config,
    layer_names,
    parse_selector,
    prepare_generator,
    resolve_device,
    split_layers,
    with_layouts,
)

__all__ = ["add_dissect_command", "prepare_network", "run_dissect"]


def add_dissect_command(sub: Any) -> None:
    """Register ``dissect`` on the sub-command parsers ``sub``."""
    p = add_command(
        sub, "dissect", "dissect layers of a generator, or of a network over images, and write dissect.json + "
        "an HTML report",
        "Dissect the named layers of a generator (--generator) or of a network that reads images (--network, "
        "over --images) against a segmenter's concepts or ground-truth --segmentations: per unit, the concept its "
        "thresholded activation overlaps best (IoU). Prints a summary; with --output also writes dissect.json "
        "and index.html. Under torchrun the samples are split across the processes; rank 0 writes.",
    )
    add_generator_arguments(p, required=False)
    add_network_arguments(p)
    add_dissection_arguments(p)
    out = p.add_argument_group("output")
    out.add_argument("--output", metavar="DIR",
                     help="write DIR/dissect.json and the HTML report DIR/index.html")
    out.add_argument("--title", help="title of the HTML report")
    out.add_argument("--summary-units", type=non_negative_int, default=10, metavar="N",
                     help="units per layer in the printed summary (0: no summary)")
    add_run_arguments(out)




#: Options of ``dissect`` that only a generator takes (refused with ``--network``).
_GENERATOR_ONLY = ("latent_dim", "latent_shape", "latent_sampler", "generate", "level_selection_samples")


def _check_model_options(args: argparse.Namespace) -> None:
    """Exactly one of ``--generator`` and ``--network``, each with its own options."""
    network = getattr(args, "network", None)
    if bool(args.generator) == bool(network):
        raise CLIError("give exactly one of --generator (a generator) and --network (a network that reads --images)")
    if network is None:
        for option in ("images", "transform", "segmentations", "concepts"):
            if getattr(args, option, None):
                raise CLIError(f"--{option} applies to --network only")
        return
    for option in _GENERATOR_ONLY:
        if getattr(args, option, None):
            raise CLIError(f"--{option.replace('_', '-')} applies to --generator only, not to --network")
    broden = getattr(args, "broden", None)
    if broden:
        for option in ("images", "segmentations", "concepts"):
            if getattr(args, option, None):
                raise CLIError(f"--broden replaces --images/--segmentations/--concepts: drop --{option}")
        return
    if getattr(args, "categories", None):
        raise CLIError("--categories applies to --broden only")
    if not args.images:
        raise CLIError("--network needs --images FOLDER (or --broden DIR): the images it reads")
    if bool(args.segmentations) != bool(args.concepts):
        raise CLIError("--segmentations and --concepts go together: label maps and the names of their indices")


#: How the pre-flight check of a network names the arguments it reports: as the options that gave them.
_NETWORK_OPTIONS = {"layers": "--layers", "network": "--network", "transform": "--transform", "selector": "--selector"}


def prepare_network(args: argparse.Namespace) -> dict[str, Any]:
    """Load ``--network``, the image folder and its labels, and check them on two images.

    Returns the keyword arguments of :func:`~lightning_dissect.dissection.dissect_images`, plus
    ``"device"``.
    """
    from lightning_dissect.engine.image_folder import ImageFolder, read_concepts
    from lightning_dissect.engine.images import GroundTruth, ImageSet
    from lightning_dissect.engine.reader import ImageRunner

    layers = split_layers(args.layers)
    if not layers:
        raise CLIError("--layers: give at least one layer name")
    device = resolve_device(args.device)
    network = load_module(args.network, getattr(args, "checkpoint", None), device, "--network")
    network.to(device)
    layers = layer_names(layers, network, None)
    transform = load_object(args.transform, "--transform") if args.transform else None
    if transform is not None and not callable(transform):
        raise CLIError(f"--transform: {args.transform} is a {type(transform).__name__}, not a callable")
    selector = with_layouts(parse_selector(args.selector), getattr(args, "layout", None), layers)
    try:
        if getattr(args, "broden", None):
            from lightning_dissect.engine.broden import BrodenDataset

            categories = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None
            names = {"root": "--broden", "categories": "--categories"}
            folder: Any = BrodenDataset(args.broden, categories, names=names)
            vocabulary = folder.vocabulary
            images = ImageSet(folder, vocabulary=vocabulary, name="--broden")
        else:
            vocabulary = read_concepts(args.concepts, "--concepts") if args.concepts else None
            folder = ImageFolder(args.images, args.segmentations, on_unreadable=args.unreadable, argument="--images")
            images = ImageSet(folder, vocabulary=vocabulary, name="--images")
    except (ValueError, TypeError, ImportError) as err:
        raise CLIError(str(err)) from err
    if getattr(args, "broden", None):
        segmenter: Any = GroundTruth(vocabulary, source=folder.labels_source)
    elif vocabulary is not None:
        folder.labels_source = (  # type: ignore[attr-defined]
            f"the concepts file {args.concepts} (--concepts, for --segmentations {args.segmentations})"
        )
        segmenter = GroundTruth(vocabulary, source=folder.labels_source)
    else:
        segmenter = load_segmenter(args.segmenter, args.image_size, args.segmentation_size)  # checked there
    runner = ImageRunner(network, transform=transform, selector=selector, batch_size=args.batch_size, device=device)
    try:  # the one pre-flight check of the run (dissect_images is told not to repeat it)
        runner.preflight(images, layers, segmenter, names=_NETWORK_OPTIONS)
    except (ValueError, TypeError) as err:
        if args.debug:
            raise
        raise CLIError(str(err)) from err
    return {
        "network": network, "layers": layers, "images": images,
        "segmenter": None if vocabulary is not None else segmenter, "transform": transform, "selector": selector,
        "device": device,
    }


def run_dissect(args: argparse.Namespace) -> int:
    """Run the ``dissect`` command (raises :class:`CLIError` on user errors)."""
    import torch

    from lightning_dissect._utils.distributed import init_distributed, world

    _check_model_options(args)
    check_output(args.output)
    device, initialised = init_distributed(resolve_device(args.device))
    args.device = device
    try:
        result = _network_result(args) if args.network else _generator_result(args)
        if world()[0] != 0:
            return 0
        if args.summary_units:
            from rich.console import Console

            Console().print(result.summary(args.summary_units))
        if args.output:
            from lightning_dissect.report import write_report

            path = write_report(result, args.output, title=args.title)
            print(f"wrote {Path(args.output) / 'dissect.json'} and {path}")
        return 0
    finally:
        if initialised:
            torch.distributed.destroy_process_group()


def _generator_result(args: argparse.Namespace) -> Any:
    from lightning_dissect.dissection import dissect

    prepared = prepare_generator(args)
    config = dissection_config(args, prepared["device"], visualize=bool(args.output))
    metadata: dict[str, Any] = {"generator": args.generator}
    if prepared["latent_shape"] is not None:
        metadata["latent_shape"] = list(prepared["latent_shape"])
    if args.checkpoint:
        metadata["checkpoint"] = str(args.checkpoint)
    try:
        return dissect(
            prepared["generator"], prepared["layers"], prepared["segmenter"],
            latent_shape=prepared["latent_shape"], latent_sampler=prepared["latent_sampler"],
            generate=prepared["generate"], selector=prepared["selector"], config=config, metadata=metadata,
            dry_run=False,  # prepare_generator chose the latent layout by a dry run
        )
    except (ValueError, TypeError, RuntimeError) as err:
        if args.debug:
            raise
        raise CLIError(f"dissection failed: {describe_error(err)}") from err


def _network_result(args: argparse.Namespace) -> Any:
    from lightning_dissect.dissection import dissect_images

    prepared = prepare_network(args)
    config = dissection_config(args, prepared["device"], visualize=bool(args.output))
    metadata: dict[str, Any] = {"network": args.network}
    if getattr(args, "broden", None):
        metadata["broden"] = str(args.broden)
        metadata["categories"] = list(prepared["images"].data.categories)
    else:
        metadata["images"] = str(args.images)
    if args.checkpoint:
        metadata["checkpoint"] = str(args.checkpoint)
    if args.segmentations:
        metadata["segmentations"] = str(args.segmentations)
    try:
        return dissect_images(
            prepared["network"], prepared["layers"], prepared["images"], prepared["segmenter"],
            transform=prepared["transform"], selector=prepared["selector"], config=config, metadata=metadata,
            dry_run=False,  # prepare_network checked the run on two images, naming the options
        )
    except (ValueError, TypeError, RuntimeError) as err:
        if args.debug:
            raise
        raise CLIError(f"dissection failed: {describe_error(err)}") from err
