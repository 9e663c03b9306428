"""``lightning-dissect emergence``: dissect a series of checkpoints of a run that already exists.

Writes into ``--output`` what the training callback would have written (round JSON files and
TensorBoard events at each checkpoint's ``global_step``) plus ``emergence.html``. Re-running over
the same folder dissects only the checkpoints without a round. Under ``torchrun`` the latent bank
is split across the processes (gloo on CPU, nccl on CUDA); rank 0 writes.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_dissect._utils.distributed import world
from lightning_dissect._utils.text import plural
from lightning_dissect.cli import _arguments
from lightning_dissect.cli._loading import CheckpointError, CLIError, check_output, describe_error, load_generator
from lightning_dissect.cli._prepare import dissection_config, prepare_generator, resolve_device

__all__ = ["add_emergence_command", "run_emergence"]


def add_emergence_command(sub: Any) -> None:
    """Register ``emergence`` on the sub-command parsers ``sub``."""
    p = _arguments.add_command(
        sub, "emergence", "dissect a series of checkpoints: rounds, TensorBoard events and emergence.html",
        "Dissect every checkpoint of a run on the same seeded latent bank, in global_step order, and write what "
        "DissectionCallback would have written during training: one round JSON per checkpoint and TensorBoard "
        "events at each global_step; plus emergence.html. Re-running over the same --output skips checkpoints "
        "already done.",
    )
    _arguments.add_generator_arguments(p)
    for action in p._actions:  # one checkpoint per round here: --checkpoints replaces --checkpoint
        if "--checkpoint" in action.option_strings:
            action.help = argparse.SUPPRESS
    series = p.add_argument_group("checkpoints")
    series.add_argument(
        "--checkpoints", required=True, nargs="+", metavar="PATH",
        help="checkpoint files, or folders of them (*.ckpt, *.pt, *.pth); ordered by the "
        "global_step stored in them, then by file name",
    )
    _arguments.add_dissection_arguments(p)
    out = p.add_argument_group("output")
    out.add_argument("--output", required=True, metavar="DIR",
                     help="rounds (DIR/dissection/round_<step>.json), TensorBoard events and "
                     "DIR/emergence.html")
    out.add_argument("--title", help="title of emergence.html")
    out.add_argument("--report-units", type=_arguments.non_negative_int, default=6, metavar="N",
                     help="per layer, unit strips of the last checkpoint's N best units in emergence.html")
    out.add_argument("--no-tensorboard", action="store_true", help="write no TensorBoard event files")
    _arguments.add_run_arguments(out)


def run_emergence(args: argparse.Namespace) -> int:
    """Run the ``emergence`` command (raises :class:`CLIError` on user errors)."""
    import torch

    from lightning_dissect._utils.distributed import init_distributed

    if getattr(args, "checkpoint", None):
        raise CLIError("--checkpoint: emergence takes --checkpoints PATH [PATH ...] (files or folders)")
    device, initialised = init_distributed(resolve_device(args.device))
    args.device = device
    rank, _ = world()

    def say(line: str) -> None:
        if rank == 0:
            print(line, flush=True)

    target = Path(args.output).absolute()
    # the topmost folder this run creates (None: --output exists already)
    created = next((p for p in reversed([target, *target.parents]) if not p.exists()), None)
    try:
        check_output(args.output)  # before any checkpoint is read
        checkpoints = _ordered_checkpoints(args, say)
        prepared = _prepare_first(args, checkpoints, say)
        config = dissection_config(args, prepared["device"], visualize=True)
        load = _loader(args, prepared, checkpoints)
        output = Path(args.output)
        run = _dissect_series(args, checkpoints, load, prepared, config, output, say)
        if run is None:
            return 130
        if rank == 0:
            _write_page(args, run, prepared, config, output, load)
        return 0
    finally:
        if rank == 0:
            _remove_empty_folders(target, created)
        if initialised:
            torch.distributed.destroy_process_group()


def _remove_empty_folders(output: Path, created: Path | None) -> None:
    """Remove the folders a run left empty under ``output``, and those it created above them.

    A failed run (no checkpoint loads, the dry run fails) must not leave empty output folders.
    Only empty folders are removed, never a file; folders that existed before the run stay.
    """
    if not output.is_dir():
        return
    for folder in sorted((p for p in output.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # fails, and is kept, unless empty
    if created is None:
        return
    for folder in [output, *output.parents]:
        with contextlib.suppress(OSError):
            folder.rmdir()
        if folder == created:
            break


def _ordered_checkpoints(args: argparse.Namespace, say: Callable[[str], None]) -> list[Any]:
    """The files of ``--checkpoints``, read and ordered by their stored ``global_step``."""
    from lightning_dissect.callbacks.replay import find_checkpoints, order_checkpoints

    try:
        files = find_checkpoints(args.checkpoints)
    except FileNotFoundError as err:
        raise CLIError(f"--checkpoints: {err}") from err
    if not files:
        raise CLIError(f"--checkpoints: no *.ckpt, *.pt or *.pth file in {' '.join(args.checkpoints)}")
    return order_checkpoints(files, report=say)


def _prepare_first(args: argparse.Namespace, checkpoints: list[Any], say: Callable[[str], None]) -> dict[str, Any]:
    """Load and dry-run the first loadable checkpoint; drop (and report) those before it."""
    prepared = None
    for checkpoint in list(checkpoints):
        args.checkpoint = str(checkpoint.path)
        try:
            prepared = prepare_generator(args)
            break
        except CheckpointError as err:
            say(f"skipped {checkpoint.path}: {' '.join(str(err).split())}")
            checkpoints.remove(checkpoint)
    args.checkpoint = None
    if prepared is None:
        raise CLIError("--checkpoints: none of the checkpoints could be read or loaded")
    return prepared


def _loader(args: argparse.Namespace, prepared: dict[str, Any], checkpoints: list[Any]) -> Callable[[Any], Any]:
    """``checkpoint -> generator`` on the device; the first checkpoint's generator is already loaded."""
    first = {"generator": prepared["generator"]}

    def load(checkpoint: Any) -> Any:
        if first["generator"] is not None and checkpoint is checkpoints[0]:
            generator, first["generator"] = first["generator"], None  # already loaded
            return generator
        try:
            _, generator, _ = load_generator(args.generator, str(checkpoint.path), prepared["device"])
        except CLIError as err:
            raise RuntimeError(" ".join(str(err).split())) from None
        return generator.to(prepared["device"])

    return load


def _dissect_series(args: argparse.Namespace, checkpoints: list[Any], load: Callable[[Any], Any],
                    prepared: dict[str, Any], config: Any, output: Path, say: Callable[[str], None]) -> Any:
    """:func:`~lightning_dissect.callbacks.replay.dissect_checkpoints` with CLI errors; ``None`` when interrupted."""
    from lightning_dissect.callbacks.replay import dissect_checkpoints

    metadata: dict[str, Any] = {"generator": args.generator}
    if prepared["latent_shape"] is not None:
        metadata["latent_shape"] = list(prepared["latent_shape"])
    try:
        return dissect_checkpoints(
            checkpoints, load, prepared["layers"], prepared["segmenter"], output,
            config=config, latent_shape=prepared["latent_shape"],
            latent_sampler=prepared["latent_sampler"], generate=prepared["generate"],
            selector=prepared["selector"], metadata=metadata,
            tensorboard=not args.no_tensorboard, report=say, names={"output": "--output"},
        )
    except KeyboardInterrupt:
        say(f"interrupted: the finished rounds are in {output}; run the same command again to go on")
        return None
    except ValueError as err:
        if args.debug:
            raise
        raise CLIError(" ".join(str(err).split())) from err  # one line
    except (TypeError, RuntimeError) as err:
        if args.debug:
            raise
        raise CLIError(f"dissection failed: {describe_error(err)}") from err


def _write_page(args: argparse.Namespace, run: Any, prepared: dict[str, Any], config: Any, output: Path,
                load: Any) -> None:
    from lightning_dissect.callbacks.replay import Checkpoint
    from lightning_dissect.dissection.strips import render_unit_images
    from lightning_dissect.engine.latents import LatentBank
    from lightning_dissect.report.emergence import write_emergence_report
    from lightning_dissect.visual.round_pictures import segmenter_palette

    if not run.rounds:
        print(f"no rounds in {output}", file=sys.stderr)
        return
    last = run.rounds[-1]
    images: dict[str, Any] = {}
    if args.report_units:
        generator = run.generator if run.dissected and run.dissected[-1].global_step == int(
            last.metadata.get("global_step", -1)) else None
        recorded = last.metadata.get("checkpoint")
        if generator is None and isinstance(recorded, str) and Path(recorded).is_file():
            try:
                generator = load(Checkpoint(Path(recorded), int(last.metadata.get("global_step", 0))))
            except RuntimeError as err:
                print(f"no unit images: {err}", file=sys.stderr)
        if generator is not None:
            bank = LatentBank(config.num_samples, prepared["latent_shape"], config.seed, prepared["latent_sampler"])
            images = render_unit_images(
                generator, last, bank, prepared["segmenter"].value_range, num_units=args.report_units,
                generate=prepared["generate"], selector=prepared["selector"], device=prepared["device"],
            )
    page = write_emergence_report(
        run.rounds, output / "emergence.html", palette=segmenter_palette(prepared["segmenter"]),
        unit_images=images, title=args.title, failed=run.failed,
    )
    tb = "" if args.no_tensorboard else f"; tensorboard --logdir {output}"
    print(f"{plural(len(run.dissected), 'checkpoint')} dissected, {len(run.skipped)} already done, "
          f"{len(run.failed)} failed; wrote {page}{tb}")
