"""Reading back the rounds a :class:`~lightning_dissect.callback.DissectionCallback` wrote."""

from __future__ import annotations

from pathlib import Path

from lightning_dissect.result import DissectionResult

__all__ = ["load_history", "ROUND_DIR"]

ROUND_DIR = "dissection"


def load_history(directory: str | Path) -> list[DissectionResult]:
    """Load every round a :class:`DissectionCallback` wrote under ``directory``, oldest first.

    ``directory`` may be the logger's directory (the rounds are in its ``dissection/``
    sub-directory) or that sub-directory itself. Results from different runs are comparable with
    :meth:`DissectionResult.compare`.
    """
    root = Path(directory)
    if (root / ROUND_DIR).is_dir():
        root = root / ROUND_DIR
    files = sorted(root.glob("round_*.json"))
    return [DissectionResult.from_json(f) for f in files]
