"""Settings of a dissection and the one table of defaults every entry point starts from.

:class:`DissectionConfig` holds the defaults of an offline dissection (:func:`~lightning_dissect.dissect`).
The callback and the command line start from the same values and change only the entries of
:data:`CALLBACK_DEFAULTS` and :data:`CLI_DEFAULTS`, each for the reason given there.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

__all__ = [
    "DissectionConfig", "QUANTILE_PRESETS", "CALLBACK_DEFAULTS", "CLI_DEFAULTS", "config_defaults", "defaults_table",
]


QUANTILE_PRESETS: dict[str, float] = {
    "netdissect": 0.995,
    "pnas": 0.99,
    "netdissect-lite": 0.96,
}
"""Named threshold levels of the reference methods, accepted as ``quantile``: ``"netdissect"`` is
the Network Dissection paper's top 0.5 % of each unit's activations, ``"pnas"`` the 0.99 quantile
of Bau et al. 2020 (this package's default), ``"netdissect-lite"`` the 0.96 quantile that
NetDissect-Lite's ``settings.py`` ships (``QUANTILE = 0.04``)."""


@dataclass
class DissectionConfig:
    """Settings of a dissection (reference defaults noted).

    Attributes:
        num_samples: Latents in the dissection bank.
        batch_size: Latents per generator call.
        seed: Seed of the dissection bank (gandissect: 1).
        threshold_mode: ``"quantile"`` (per-unit level ``quantile``; NetDissect / PNAS) or
            ``"iqr"`` (GAN Dissection: per unit the candidate level of its best-IQR concept).
        quantile: Level for ``"quantile"`` mode (PNAS 0.99; NetDissect 0.995), or a name of
            :data:`QUANTILE_PRESETS` (``"netdissect"``: the paper's top 0.5 %), replaced by its level.
        num_levels: Candidate levels in ``"iqr"`` mode: top fractions ``logspace(-3, 0, K)``
            (gandissect uses 100).
        level_selection_samples: ``"iqr"`` mode: pick levels on a separate bank of this size
            seeded ``seed + 1`` (the paper's held-out set); ``None`` picks on the dissection bank.
        iou_threshold: A unit is interpretable when its label IoU exceeds this (0.04 NetDissect /
            PNAS; 0.05 gandissect).
        iqr_threshold: ``"iqr"`` mode also asks IQR above this (gandissect 0.01).
        min_concept_fraction: ``"iqr"`` mode ignores concepts covering less than this fraction of
            pixels when choosing levels (gandissect 1e-3).
        top_k: Top images kept per unit (by the unit's spatial max activation).
        num_visualized_units: Per layer, render image strips for this many top units (0: none).
        chance_baseline: Also count with images paired to another image's segmentation.
        relative_accuracy: Quantile accuracy of the threshold histogram.
        progress: Show rich progress bars (rank 0 only).
        device: Where to run; ``None`` = the generator's device.

    Examples:
        >>> DissectionConfig(num_samples=64).validate().batch_size
        32
        >>> DissectionConfig(quantile="netdissect").quantile
        0.995
    """

    num_samples: int = 1000
    batch_size: int = 32
    seed: int = 1
    threshold_mode: str = "quantile"
    quantile: float = 0.99
    num_levels: int = 64
    level_selection_samples: int | None = None
    iou_threshold: float = 0.04
    iqr_threshold: float = 0.01
    min_concept_fraction: float = 1e-3
    top_k: int = 8
    num_visualized_units: int = 0
    chance_baseline: bool = True
    relative_accuracy: float = 0.005
    progress: bool = True
    device: str | None = field(default=None)

    def __post_init__(self) -> None:
        if isinstance(self.quantile, str):
            if self.quantile not in QUANTILE_PRESETS:
                raise ValueError(
                    f"`quantile` must be a level in (0, 1) or one of {sorted(QUANTILE_PRESETS)}, got {self.quantile!r}"
                )
            self.quantile = QUANTILE_PRESETS[self.quantile]

    def validate(self) -> DissectionConfig:
        """Raise ``ValueError`` naming the first bad setting; return ``self``."""
        for name in ("num_samples", "batch_size", "num_levels", "top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        if self.threshold_mode not in ("quantile", "iqr"):
            raise ValueError(f"`threshold_mode` must be 'quantile' or 'iqr', got {self.threshold_mode!r}")
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"`quantile` must be in (0, 1), got {self.quantile}")
        if not 0.0 <= self.iou_threshold < 1.0:
            raise ValueError(f"`iou_threshold` must be in [0, 1), got {self.iou_threshold}")
        if (
            not isinstance(self.num_visualized_units, int)
            or isinstance(self.num_visualized_units, bool)
            or self.num_visualized_units < 0
        ):
            raise ValueError(f"`num_visualized_units` must be an int >= 0, got {self.num_visualized_units!r}")
        if self.level_selection_samples is not None and (
            not isinstance(self.level_selection_samples, int)
            or isinstance(self.level_selection_samples, bool)
            or self.level_selection_samples < 1
        ):
            raise ValueError("`level_selection_samples` must be a positive int or None")
        if not 0.0 < self.relative_accuracy < 1.0:
            raise ValueError(f"`relative_accuracy` must be in (0, 1), got {self.relative_accuracy}")
        return self


CALLBACK_DEFAULTS: dict[str, tuple[Any, str]] = {
    "num_samples": (512, "a round runs while training waits: half the offline bank keeps it cheap"),
    "batch_size": (64, "inside training the generator already sits on the accelerator: fewer, larger calls"),
    "top_k": (6, "six images fill one TensorBoard strip"),
    "num_visualized_units": (8, "TensorBoard shows unit strips every round"),
    "progress": (False, "Lightning's own progress bar is already on screen"),
}
"""``DissectionCallback`` defaults that differ from :class:`DissectionConfig`: ``field -> (value, reason)``."""

CLI_DEFAULTS: dict[str, tuple[Any, str]] = {
    "num_visualized_units": (12, "the HTML report written with --output shows unit strips"),
}
"""``lightning-dissect`` defaults that differ from :class:`DissectionConfig`: ``field -> (value, reason)``."""


def config_defaults(overrides: dict[str, tuple[Any, str]] | None = None) -> dict[str, Any]:
    """Every :class:`DissectionConfig` default, with an entry point's ``overrides`` applied.

    Examples:
        >>> config_defaults(CALLBACK_DEFAULTS)["num_samples"], config_defaults()["num_samples"]
        (512, 1000)
    """
    values = {f.name: f.default for f in fields(DissectionConfig)}
    values.update({k: v for k, (v, _) in (overrides or {}).items()})
    return values


def defaults_table() -> str:
    """The Markdown table of every default per entry point, with the reason wherever they differ.

    ``docs/defaults.md`` holds this table; a test keeps the two equal.

    Examples:
        >>> defaults_table().splitlines()[0]
        '| setting | `dissect()` | `DissectionCallback` | `lightning-dissect` | why an entry point differs |'
    """
    offline, callback, cli = config_defaults(), config_defaults(CALLBACK_DEFAULTS), config_defaults(CLI_DEFAULTS)
    rows = [
        "| setting | `dissect()` | `DissectionCallback` | `lightning-dissect` | why an entry point differs |",
        "|:---|---:|---:|---:|:---|",
    ]
    for name in offline:
        reasons = []
        if name in CALLBACK_DEFAULTS:
            reasons.append(f"callback: {CALLBACK_DEFAULTS[name][1]}")
        if name in CLI_DEFAULTS:
            reasons.append(f"command line: {CLI_DEFAULTS[name][1]}")
        rows.append(
            f"| `{name}` | {offline[name]!r} | {callback[name]!r} | {cli[name]!r} | {'; '.join(reasons)} |"
        )
    return "\n".join(rows)
