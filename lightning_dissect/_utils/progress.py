"""Rich progress bars for long passes, shown on rank 0 only (a no-op when disabled)."""

from __future__ import annotations

from typing import Any

__all__ = ["Progress"]


class Progress:
    """Context manager around ``rich.progress.Progress``; every method is a no-op when disabled.

    Examples:
        >>> with Progress(enabled=False) as progress:
        ...     task = progress.task("pass 1", total=4)
        ...     progress.advance(task, 4)
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._progress = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def task(self, description: str, total: int) -> Any:
        """Add a bar; returns its handle (``None`` when disabled)."""
        if self._progress is None:
            return None
        return self._progress.add_task(description, total=total)

    def advance(self, task: Any, amount: int) -> None:
        """Advance the bar ``task`` by ``amount``."""
        if self._progress is not None and task is not None:
            self._progress.advance(task, amount)

    def callback(self, task: Any) -> Any:
        """A ``(n) -> None`` that advances ``task`` (for :meth:`GeneratorRunner.batches`)."""
        return lambda n: self.advance(task, n)
