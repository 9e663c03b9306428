"""The folder writer: a round's pictures (PNG) and tables (CSV) in a logger's ``log_dir``.

Layout under ``<log_dir>/<prefix>/`` (``prefix``: ``dissection`` or ``dissection-<name>``)::

    round_<global_step>.json             the round (as for every logger with a folder)
    step_<step>/<layer>/<kind>.png       unit_strips, iou_heatmap, units_by_round
    step_<step>/<layer>/<table>.csv      top_units, ablation

``<step>`` is the ``step`` column of the logger's ``metrics.csv``; both are zero-padded to 8 digits.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lightning_dissect._utils.io import atomic_write_bytes, atomic_write_text
from lightning_dissect.callbacks.history import round_path, step_folder_name
from lightning_dissect.loggers.content import RoundContent
from lightning_dissect.visual.visualize import encode_png

__all__ = ["FolderWriter", "step_folder"]


def step_folder(log_dir: str | Path, prefix: str, step: int) -> Path:
    """Where the pictures and tables of the round logged at ``step`` go.

    Examples:
        >>> step_folder("logs/version_0", "dissection", 12).as_posix()
        'logs/version_0/dissection/step_00000012'
    """
    return Path(log_dir) / prefix / step_folder_name(step)


class FolderWriter:
    """Writes rounds as files beside a logger's own (``CSVLogger``'s ``metrics.csv``, and any other).

    Args:
        log_dir: The logger's folder.
        round_file: Also write the round JSON there (off where the callback already writes it).
        name: Names this writer in warnings.
    """

    def __init__(self, log_dir: str | Path, *, round_file: bool = True, name: str = "folder") -> None:
        self.log_dir = Path(log_dir)
        self.round_file = round_file
        self.name = name

    def write(self, content: RoundContent) -> None:
        """Write one round's pictures and tables (and its JSON when ``round_file``)."""
        folder = step_folder(self.log_dir, content.prefix, content.step)
        for tag, image in content.images.items():
            path = folder / (_relative(tag, content.prefix) + ".png")
            atomic_write_bytes(path, encode_png(image))
        for tag, table in content.tables.items():
            buffer = io.StringIO()
            out = csv.writer(buffer, lineterminator="\n")
            out.writerow(table.columns)
            out.writerows(["" if v is None else v for v in row] for row in table.rows)
            path = folder / (_relative(tag, content.prefix) + ".csv")
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, buffer.getvalue())
        if self.round_file:
            metadata = content.result.metadata
            content.result.to_json(round_path(self.log_dir, int(metadata.get("global_step", content.step)),
                                              metadata.get("name")))


def _relative(tag: str, prefix: str) -> str:
    return tag[len(prefix) + 1 :] if tag.startswith(prefix + "/") else tag
