"""What one dissection round hands to every logger: built once, written by each logger's writer.

A :class:`RoundContent` holds plain values and ``uint8`` pictures only, so a writer needs nothing
but this module: :mod:`lightning_dissect.loggers.rounds` builds the content, and the writers in
:mod:`lightning_dissect.loggers` turn it into what each logger's users expect to find.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from torch import Tensor

if TYPE_CHECKING:  # annotations only
    from lightning_dissect.result import DissectionResult

__all__ = ["Table", "RoundContent", "RoundWriter"]


@dataclass
class Table:
    """A table of one round: column names, rows of plain values, and its Markdown rendering.

    Args:
        columns: Column names.
        rows: One list of plain values (``str``, ``int``, ``float``, ``bool``, ``None``) per row.
        markdown: The same rows as a Markdown table (TensorBoard's text plugin renders it).
        images: Optionally one picture per row (``uint8 (3, H, W)`` or ``None``), e.g. the unit
            strip of the row's unit; writers that can show images in a table put it in a column.

    Examples:
        >>> table = Table(["unit", "IoU"], [[3, 0.25]], "| unit | IoU |")
        >>> table.records()
        [{'unit': 3, 'IoU': 0.25}]
    """

    columns: list[str]
    rows: list[list[Any]]
    markdown: str
    images: list[Tensor | None] | None = None

    def records(self) -> list[dict[str, Any]]:
        """The rows as ``column -> value`` mappings (pictures left out)."""
        return [dict(zip(self.columns, row)) for row in self.rows]


@dataclass
class RoundContent:
    """Everything one round delivers, keyed by tag (``<prefix>/<layer>/<kind>``).

    Args:
        prefix: The tag prefix (``dissection`` or ``dissection-<name>``).
        step: The step every logger files the round under: the axis of the LightningModule's own
            ``self.log`` calls (``global_step`` is in ``result.metadata``).
        result: The round's result (its JSON is the round file).
        scalars: Numbers every logger receives.
        tables: Tables (top units, ablation).
        images: Pictures, ``uint8 (3, H, W)``.
        histograms: Value sets TensorBoard shows as histograms (others may leave them out).
        layout: TensorBoard custom-scalars charts of these tags (others may leave it out).
    """

    prefix: str
    step: int
    result: DissectionResult
    scalars: dict[str, float] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)
    images: dict[str, Tensor] = field(default_factory=dict)
    histograms: dict[str, Tensor] = field(default_factory=dict)
    layout: dict[str, dict[str, list[Any]]] = field(default_factory=dict)


class RoundWriter(Protocol):
    """Writes rounds to one logger; ``name`` names it in warnings."""

    name: str

    def write(self, content: RoundContent) -> None:
        """Write one round (tables, pictures; scalars where the writer owns them)."""
