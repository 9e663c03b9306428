"""One writer per logger kind, chosen in one place; each writer fails on its own.

:func:`round_writers` looks at the type of each of the trainer's loggers and returns the writer
that gives its users what they expect (see ``docs/loggers.md``); :func:`deliver` hands one
round's :class:`~lightning_dissect.loggers.content.RoundContent` to every writer, so that one
failing writer (a full disk, a dropped connection) costs that logger its round and nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from lightning_dissect.loggers.content import RoundContent, RoundWriter, Table
from lightning_dissect.loggers.folder import FolderWriter, step_folder
from lightning_dissect.loggers.mlflow import MLflowWriter
from lightning_dissect.loggers.tensorboard import TensorBoardWriter
from lightning_dissect.loggers.wandb import WandbWriter

__all__ = [
    "RoundContent",
    "RoundWriter",
    "Table",
    "TensorBoardWriter",
    "FolderWriter",
    "WandbWriter",
    "MLflowWriter",
    "step_folder",
    "round_writers",
    "deliver",
    "finish",
    "NOT_DELIVERED",
]

#: What a logger without a writer does not receive (it gets the scalars).
NOT_DELIVERED = "tables (top units, ablation), pictures (unit strips, IoU heatmap, units by round) and round files"


def round_writers(
    loggers: Sequence[Any], *, round_dir: str | Path | None = None
) -> tuple[list[RoundWriter], list[Any]]:
    """The writer of each logger, by its type, and the loggers that have none.

    * ``TensorBoardLogger`` → :class:`TensorBoardWriter` on its ``SummaryWriter``;
    * ``WandbLogger`` → :class:`WandbWriter`; ``MLFlowLogger`` → :class:`MLflowWriter`;
    * any other logger with a ``log_dir`` (``CSVLogger``, ...) → :class:`FolderWriter` (the round
      JSON too, unless ``round_dir`` is that folder: the callback writes it there already);
    * the rest receive the scalars only.

    Examples:
        >>> round_writers([])
        ([], [])
    """
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

    writers: list[RoundWriter] = []
    unsupported: list[Any] = []
    same = Path(round_dir).resolve() if round_dir is not None else None
    for logger in loggers:
        kind = type(logger).__name__
        if isinstance(logger, TensorBoardLogger):
            writers.append(TensorBoardWriter(logger.experiment, name=kind))
            continue
        if isinstance(logger, WandbLogger):
            writers.append(WandbWriter(logger, name=kind))
            continue
        if isinstance(logger, MLFlowLogger):
            writers.append(MLflowWriter(logger, name=kind))
            continue
        log_dir = getattr(logger, "log_dir", None)
        if log_dir:
            own_round_file = Path(log_dir).resolve() != same
            writers.append(FolderWriter(log_dir, round_file=own_round_file, name=f"{kind} ({log_dir})"))
        else:
            unsupported.append(logger)
    return writers, unsupported


def deliver(content: RoundContent, writers: Sequence[RoundWriter], warn: Callable[[str], None]) -> list[str]:
    """Hand ``content`` to every writer; a failing one is reported through ``warn`` and skipped.

    Returns the names of the writers that failed.

    Examples:
        >>> class Broken:
        ...     name = "broken"
        ...     def write(self, content):
        ...         raise OSError("No space left on device")
        >>> deliver(None, [Broken()], print)
        could not write the round to broken: OSError: No space left on device
        ['broken']
    """
    failed = []
    for writer in writers:
        try:
            writer.write(content)
        except Exception as err:  # noqa: BLE001 - one sink's failure must not cost the others
            failed.append(writer.name)
            warn(f"could not write the round to {writer.name}: {type(err).__name__}: {err}")
    return failed


def finish(
    result: Any, prefix: str, writers: Sequence[RoundWriter], warn: Callable[[str], None]
) -> list[str]:
    """At the end of fit, let each writer that has a ``finish(result, prefix)`` step take it.

    ``result`` is the last round's; a failing writer is reported through ``warn`` and skipped.
    Returns the names of the writers that failed.
    """
    failed = []
    for writer in writers:
        step = getattr(writer, "finish", None)
        if step is None:
            continue
        try:
            step(result, prefix)
        except Exception as err:  # noqa: BLE001 - one sink's failure must not cost the others
            failed.append(writer.name)
            warn(f"could not write the last round's report to {writer.name}: {type(err).__name__}: {err}")
    return failed
