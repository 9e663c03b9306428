"""The Weights & Biases writer: tables as ``wandb.Table`` (a unit strip in each row), pictures as images.

``wandb`` is imported only here, when a ``WandbLogger`` is in use.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lightning_dissect.loggers.content import RoundContent, Table

__all__ = ["WandbWriter", "STRIP_COLUMN"]

#: The top-units table's image column: the row's unit strip.
STRIP_COLUMN = "strip"


def _image(wandb: Any, picture: Tensor) -> Any:
    return wandb.Image(picture.permute(1, 2, 0).contiguous().numpy())


def _table(wandb: Any, table: Table) -> Any:
    columns = list(table.columns)
    rows = [list(row) for row in table.rows]
    if table.images is not None:
        columns.append(STRIP_COLUMN)
        for row, picture in zip(rows, table.images):
            row.append(_image(wandb, picture) if picture is not None else None)
    return wandb.Table(columns=columns, data=rows)


class WandbWriter:
    """Writes rounds to a ``WandbLogger``'s run, in one ``log`` call per round.

    Tables become ``wandb.Table`` (the top-units table with the unit's strip as an image in each
    row), pictures ``wandb.Image``, histograms ``wandb.Histogram``; all are keyed to the round's
    step through the logger (``trainer/global_step``, the axis of the run's own metrics).

    Args:
        logger: The ``lightning.pytorch.loggers.WandbLogger``.
        name: Names this writer in warnings.
    """

    def __init__(self, logger: Any, *, name: str = "WandbLogger") -> None:
        self.logger = logger
        self.name = name

    def write(self, content: RoundContent) -> None:
        """Log the round's tables, pictures and histograms at ``content.step``."""
        import wandb

        payload: dict[str, Any] = {}
        for tag, table in content.tables.items():
            payload[tag] = _table(wandb, table)
        for tag, picture in content.images.items():
            payload[tag] = _image(wandb, picture)
        for tag, values in content.histograms.items():
            finite = values[values.isfinite()]
            if finite.numel():
                payload[tag] = wandb.Histogram(finite.numpy())
        self.logger.log_metrics(payload, step=content.step)
