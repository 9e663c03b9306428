"""The ``lightning-dissect`` command line (also ``python -m lightning_dissect``).

::

    lightning-dissect dissect --generator mypkg.models:GAN --checkpoint last.ckpt \\
        --layers block3 block4 --num-samples 2000 --output dissection/

dissects the named layers of a generator, prints a summary table and, with ``--output``, writes
``dissect.json`` and the HTML report. Errors are reported as one ``error: ...`` line on stderr with
exit status 2 (``--debug`` shows the traceback instead); Ctrl-C prints one line and exits with 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lightning_dissect.cli._loading import CLIError, load_generator, load_object, load_segmenter
from lightning_dissect.cli.causal import add_causal_command, run_causal
from lightning_dissect.cli.compare import add_compare_command, run_compare
from lightning_dissect.cli.dissect import add_dissect_command, run_dissect
from lightning_dissect.cli.emergence import add_emergence_command, run_emergence
from lightning_dissect.cli.paint import add_paint_command, run_paint

__all__ = ["CLIError", "build_parser", "main", "load_object", "load_generator", "load_segmenter"]

COMMANDS = {"dissect": run_dissect, "emergence": run_emergence, "compare": run_compare, "causal": run_causal,
            "paint": run_paint}
"""Command name -> function running it (``args -> exit status``)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lightning-dissect``."""
    parser = argparse.ArgumentParser(
        prog="lightning-dissect",
        description="GAN Dissection of a generator's layers: which units paint which concepts.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_dissect_command(sub)
    add_emergence_command(sub)
    add_compare_command(sub)
    add_causal_command(sub)
    add_paint_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-dissect``; returns the exit status (0 ok, 2 user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](args)
    except CLIError as err:
        if args.debug:
            raise
        message = " ".join(str(err).split())
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        # files are written atomically: an interrupted command leaves no half-written file
        print(f"interrupted: {args.command} stopped; nothing half-written was left", file=sys.stderr)
        return 130
