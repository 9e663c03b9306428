"""Small wording helpers for what the user reads (console lines, reports, pictures)."""

from __future__ import annotations

__all__ = ["plural"]


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``count`` followed by ``noun``, in the plural unless ``count`` is exactly 1.

    Args:
        count: How many.
        noun: The singular (``"unit"``, ``"'soil' unit"``).
        plural_form: The plural when it is not ``noun + "s"``.

    Examples:
        >>> plural(1, "unit"), plural(0, "unit"), plural(3, "'soil' unit")
        ('1 unit', '0 units', "3 'soil' units")
        >>> plural(1, "checkpoint") + " dissected", plural(2, "latent bank", "latent banks")
        ('1 checkpoint dissected', '2 latent banks')
    """
    return f"{count} {noun if count == 1 else (plural_form or noun + 's')}"
