"""Seeds derived from a user's seed: one function, one table of purposes.

Every purpose keeps the formula it was introduced with, so that results computed before stay the
same to the bit; a new purpose gets a new row here, not a new formula where it is used.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["SEED_PURPOSES", "derive_seed"]

_MODULUS = 2**63 - 1

_FORMULAS: dict[str, Callable[[int, int], int]] = {
    # the generator noise of the batch whose first latent is `index` (same latents, same noise)
    "noise": lambda seed, index: seed * 1_000_003 + index,
    # the "iqr" level-selection bank: a held-out set beside the dissection bank
    "level_selection": lambda seed, index: seed + 1,
    # the callback's ablation-check latents, apart from the dissection bank
    "ablation_latents": lambda seed, index: seed + 1000,
    # the random-units control drawn for `index` (a concept, or a set size)
    "control": lambda seed, index: (seed * 1_000_003 + index * 7_919 + 12_345) % _MODULUS,
    # the synthetic data module's validation split, apart from its training split
    "validation": lambda seed, index: seed + 1,
}

#: The purposes :func:`derive_seed` knows.
SEED_PURPOSES: tuple[str, ...] = tuple(_FORMULAS)


def derive_seed(seed: int, purpose: str, index: int = 0) -> int:
    """The seed for ``purpose`` derived from the user's ``seed`` (and ``index`` where the purpose has one).

    Purposes: ``"noise"`` (``index``: the first latent of a batch), ``"level_selection"``,
    ``"ablation_latents"``, ``"control"`` (``index``: what the control is drawn for) and
    ``"validation"``.

    Raises:
        KeyError: If ``purpose`` is not one of :data:`SEED_PURPOSES`.

    Examples:
        >>> derive_seed(1, "noise", 32), derive_seed(7, "level_selection")
        (1000035, 8)
    """
    try:
        formula = _FORMULAS[purpose]
    except KeyError:
        raise KeyError(f"`purpose` {purpose!r} is not one of {SEED_PURPOSES}") from None
    return formula(int(seed), int(index))
