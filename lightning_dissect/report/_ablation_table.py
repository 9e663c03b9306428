"""The ablation check as a table: every measure for the chosen units and the random control, side by side.

One definition of the columns for every place that shows an ablation check (TensorBoard's text
tab, the HTML report), so that a relative number never stands next to an absolute one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ABLATION_COLUMNS", "ablation_header", "ablation_values", "ablation_rows", "ablation_markdown"]

#: ``(header, record field, kind)``: ``"fraction"`` of all pixels, or ``"percent"`` of the baseline.
ABLATION_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("baseline", "baseline", "fraction"),
    ("ablated: units", "ablated", "fraction"),
    ("ablated: random", "control_ablated", "fraction"),
    ("drop: units", "drop", "fraction"),
    ("drop: random", "control_drop", "fraction"),
    ("relative drop: units", "relative_drop", "percent"),
    ("relative drop: random", "control_relative_drop", "percent"),
)


def _get(record: Any, key: str) -> Any:
    return record.get(key) if isinstance(record, Mapping) else getattr(record, key, None)


def _number(record: Any, key: str) -> float | None:
    value = _get(record, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _cell(value: float | None, kind: str) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f} %" if kind == "percent" else f"{value:.4f}"


def ablation_header() -> list[str]:
    """Column names of the table: concept, units off, then the :data:`ABLATION_COLUMNS`."""
    return ["concept", "units off", *(h for h, _, _ in ABLATION_COLUMNS)]


def ablation_values(records: Sequence[Any]) -> list[list[Any]]:
    """The table's numbers (fractions and ratios as floats, ``None`` where missing), for table loggers.

    Examples:
        >>> ablation_values([{"concept": "sky", "units": [3], "baseline": 0.2, "relative_drop": 0.75}])
        [['sky', 1, 0.2, None, None, None, None, 0.75, None]]
    """
    return [
        [str(_get(r, "concept")), len(_get(r, "units") or [])] + [_number(r, key) for _, key, _ in ABLATION_COLUMNS]
        for r in records
    ]


def ablation_rows(records: Sequence[Any]) -> list[list[str]]:
    """Per record (an ``AblationEffect`` or its dict): concept, units off, then the :data:`ABLATION_COLUMNS`.

    Examples:
        >>> record = {"concept": "sky", "units": [3, 7], "baseline": 0.2, "ablated": 0.05, "drop": 0.15,
        ...           "relative_drop": 0.75, "control_ablated": 0.1, "control_drop": 0.1,
        ...           "control_relative_drop": 0.5}
        >>> ablation_rows([record])
        [['sky', '2', '0.2000', '0.0500', '0.1000', '0.1500', '0.1000', '75.0 %', '50.0 %']]
    """
    return [
        [str(_get(r, "concept")), str(len(_get(r, "units") or []))]
        + [_cell(_number(r, key), kind) for _, key, kind in ABLATION_COLUMNS]
        for r in records
    ]


def ablation_markdown(records: Sequence[Any]) -> str:
    """The :func:`ablation_rows` as a Markdown table (TensorBoard's text tab renders it).

    Examples:
        >>> ablation_markdown([]).splitlines()[0].split(" | ")[-2:]
        ['relative drop: units', 'relative drop: random |']
    """
    header = ablation_header()
    lines = ["| " + " | ".join(header) + " |", "|:---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in ablation_rows(records)]
    return "\n".join(lines)
