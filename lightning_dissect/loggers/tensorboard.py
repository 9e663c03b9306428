"""The TensorBoard writer: tables as text, pictures as images, histograms, the custom-scalars layout."""

from __future__ import annotations

import weakref
from typing import Any

from lightning_dissect.loggers.content import RoundContent

__all__ = ["TensorBoardWriter"]

# custom-scalars layouts per SummaryWriter: several callbacks (names) share one writer, and
# TensorBoard shows the latest layout, so each writes the union
_LAYOUTS: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


class TensorBoardWriter:
    """Writes rounds to a ``SummaryWriter`` (a ``TensorBoardLogger``'s ``experiment``).

    Args:
        writer: The ``torch.utils.tensorboard.SummaryWriter``.
        scalars: Also write the scalars (``add_scalar`` per tag). The callback leaves them to the
            Lightning logger's ``log_metrics``; the command line, which has no Lightning logger,
            sets it.
        name: Names this writer in warnings.
    """

    def __init__(self, writer: Any, *, scalars: bool = False, name: str = "TensorBoard") -> None:
        self.writer = writer
        self.scalars = scalars
        self.name = name

    def write(self, content: RoundContent) -> None:
        """Write one round: layout (when it grew), scalars (if asked), texts, histograms, images."""
        writer, step = self.writer, content.step
        layout = _LAYOUTS.setdefault(writer, {})
        if any(layout.get(k) != v for k, v in content.layout.items()):
            layout.update(content.layout)
            writer.add_custom_scalars(layout)
        if self.scalars:
            for tag, value in content.scalars.items():
                writer.add_scalar(tag, value, step)
        for tag, table in content.tables.items():
            writer.add_text(tag, table.markdown, step)
        for tag, values in content.histograms.items():
            writer.add_histogram(tag, values, step)
        for tag, image in content.images.items():
            writer.add_image(tag, image, step, dataformats="CHW")
        writer.flush()
