"""Settings of a dissection and the one table of defaults every entry point starts from.

:class:`DissectionConfig` holds the defaults of an offline dissection (:func:`~lightning_dissect.dissect`).
The callback and the command line start from the same values and change only the entries of
:data:`CALLBACK_DEFAULTS` and :data:`CLI_DEFAULTS`, each for the reason given there.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lightning_dissect._utils.checks import argument_name, check_choice, check_flag, check_int, check_real
from lightning_dissect.functional.chance import MAX_SAMPLE_GROUPS
from lightning_dissect.interpretability import INTERPRETABLE_RULES, InterpretabilityRule

__all__ = [
    "DissectionConfig",
    "PRESETS",
    "QUANTILE_OVER",
    "QUANTILE_PRESETS",
    "UNIT_AREAS",
    "CALLBACK_DEFAULTS",
    "CLI_DEFAULTS",
    "FIELD_CHECKS",
    "THRESHOLD_MODES",
    "check_setting",
    "config_defaults",
    "defaults_table",
    "merge_settings",
]

QUANTILE_PRESETS: dict[str, float] = {
    "netdissect": 0.995,
    "pnas": 0.99,
}
"""Named threshold *levels*, accepted as ``quantile``: ``"netdissect"`` is the Network Dissection
paper's top 0.5 % of each unit's activations (NetDissect-Lite's ``settings.py``: ``QUANTILE =
0.005``), ``"pnas"`` the 0.99 quantile of Bau et al. 2020 (this package's default). A level alone
does not reproduce a tool: the preset of :data:`PRESETS` (``preset="netdissect"``) also takes the
quantile over the raw maps and counts a unit's area per category, as NetDissect-Lite does.
``"netdissect-lite"`` is a deprecated alias of ``"netdissect"`` (it used to give 0.96, which no
released NetDissect-Lite ships)."""

_DEPRECATED_QUANTILE_NAMES = {"netdissect-lite": "netdissect"}

QUANTILE_OVER: tuple[str, ...] = ("upsampled", "raw")
"""The values of :attr:`DissectionConfig.quantile_over`: the quantile of every *upsampled* pixel (the
PNAS ``dissect`` code's convention) or of the *raw* activation maps (NetDissect, NetDissect-Lite)."""

UNIT_AREAS: tuple[str, ...] = ("all", "category")
"""The values of :attr:`DissectionConfig.unit_area`: a unit's area counted over *all* images (the plain
IoU, PNAS) or, for each concept *category*, only over the images where the unit's active pixels
overlap a label of that category (NetDissect-Lite)."""

PRESETS: dict[str, dict[str, Any]] = {
    "netdissect": {
        "threshold_mode": "quantile",
        "quantile": 0.995,
        "quantile_over": "raw",
        "unit_area": "category",
        "interpretable": "paper",
        "iou_threshold": 0.04,
    },
    "pnas": {
        "threshold_mode": "quantile",
        "quantile": 0.99,
        "quantile_over": "upsampled",
        "unit_area": "all",
    },
    "netdissect-level-pnas-convention": {
        "threshold_mode": "quantile",
        "quantile": 0.995,
        "quantile_over": "upsampled",
        "unit_area": "all",
    },
}
"""Settings that reproduce a reference tool, given as ``preset=`` (``--preset``); settings given
beside a preset replace its values.

* ``"netdissect"`` reproduces NetDissect-Lite (CSAILVision/NetDissect-Lite at its HEAD): the 0.995
  quantile (its ``QUANTILE = 0.005``) of the *raw* activation maps; each map upsampled bilinearly
  to the label resolution and thresholded; a unit's area counted per concept category; the label
  of a unit chosen with NetDissect-Lite's tie conventions; interpretable when the label IoU exceeds
  0.04, the papers' fixed cut. Image-level labels (scenes, textures) are whole-image masks
  (:class:`~lightning_dissect.BrodenDataset` gives them so).
* ``"pnas"``: the PNAS ``dissect`` code's convention (this package's default): the 0.99 quantile of
  the *upsampled* maps, a unit's area over all images.
* ``"netdissect-level-pnas-convention"``: NetDissect's level 0.995 taken the PNAS code's way (over
  the upsampled maps, area over all images): what ``quantile="netdissect"`` alone gives, and what
  earlier releases called the ``netdissect`` preset.
"""

THRESHOLD_MODES: tuple[str, ...] = ("quantile", "iqr")
"""The values of :attr:`DissectionConfig.threshold_mode`."""


def _device(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if type(value).__name__ == "device":  # a torch.device
        return str(value)
    if not isinstance(value, str):
        raise TypeError(
            f"{argument_name(name)} must be a device name such as 'cpu' or 'cuda:0', or None; got {value!r}"
        )
    return value


def _quantile(value: Any, name: str) -> float:
    if isinstance(value, str):
        if value in _DEPRECATED_QUANTILE_NAMES:
            new = _DEPRECATED_QUANTILE_NAMES[value]
            warnings.warn(
                f"`{name}`={value!r} is deprecated: NetDissect-Lite ships the 0.995 level, which "
                f"{new!r} names (0.96 was wrong); for NetDissect-Lite's whole method use "
                "preset='netdissect'",
                DeprecationWarning,
                stacklevel=4,
            )
            value = new
        if value not in QUANTILE_PRESETS:
            raise ValueError(
                f"{argument_name(name)} must be a level in (0, 1) or one of {sorted(QUANTILE_PRESETS)}, got {value!r}"
            )
        return QUANTILE_PRESETS[value]
    return float(check_real(value, name, low=0.0, high=1.0, low_open=True, high_open=True))  # type: ignore[arg-type]


def _chance_groups(value: Any, name: str) -> int:
    groups = check_int(value, name, minimum=2)
    if groups > MAX_SAMPLE_GROUPS:  # type: ignore[operator]
        raise ValueError(
            f"{argument_name(name)} must be at most {MAX_SAMPLE_GROUPS} (the swap test enumerates 2^G subsets), "
            f"got {groups}"
        )
    return groups  # type: ignore[return-value]


FIELD_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "num_samples": lambda v, n: check_int(v, n, minimum=1),
    "batch_size": lambda v, n: check_int(v, n, minimum=1),
    "seed": lambda v, n: check_int(v, n, minimum=0),
    "threshold_mode": lambda v, n: check_choice(v, n, THRESHOLD_MODES),
    "quantile": _quantile,
    "quantile_over": lambda v, n: check_choice(v, n, QUANTILE_OVER),
    "unit_area": lambda v, n: check_choice(v, n, UNIT_AREAS),
    "preset": lambda v, n: None if v is None else check_choice(v, n, tuple(PRESETS)),
    "num_levels": lambda v, n: check_int(v, n, minimum=1),
    "level_selection_samples": lambda v, n: check_int(v, n, minimum=1, optional=True),
    "iou_threshold": lambda v, n: check_real(v, n, low=0.0, high=1.0, high_open=True),
    "interpretable": lambda v, n: check_choice(v, n, tuple(INTERPRETABLE_RULES)),
    "chance_ratio": lambda v, n: check_real(v, n, low=1.0),
    "min_excess": lambda v, n: check_real(v, n, low=0.0, high=1.0),
    "max_p_value": lambda v, n: check_real(v, n, low=0.0, high=1.0),
    "chance_groups": _chance_groups,
    "iqr_threshold": lambda v, n: check_real(v, n, low=0.0, high=1.0, high_open=True),
    "min_concept_fraction": lambda v, n: check_real(v, n, low=0.0, high=1.0, high_open=True),
    "top_k": lambda v, n: check_int(v, n, minimum=1),
    "num_visualized_units": lambda v, n: check_int(v, n, minimum=0),
    "chance_baseline": check_flag,
    "relative_accuracy": lambda v, n: check_real(v, n, low=0.0, high=1.0, low_open=True, high_open=True),
    "progress": check_flag,
    "device": _device,
}
"""``field -> check(value, name)``: the one rule of every :class:`DissectionConfig` field.

Each check returns the value in its plain Python type and raises ``TypeError`` (wrong type) or
``ValueError`` (wrong value) naming ``name``. The callback's keyword arguments, ``dissect()``'s
overrides and the command line's options (which pass ``--option-name``) all go through it.
"""


def check_setting(name: str, value: Any, argument: str | None = None) -> Any:
    """Check one :class:`DissectionConfig` setting with its rule; errors name ``argument`` (default ``name``).

    Examples:
        >>> check_setting("seed", 3)
        3
        >>> check_setting("top_k", 0, "--top-k")
        Traceback (most recent call last):
        ...
        ValueError: --top-k must be at least 1, got 0
    """
    return FIELD_CHECKS[name](value, argument or name)


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
        quantile_over: ``"upsampled"``: the quantile of every upsampled pixel (the PNAS code's
            convention); ``"raw"``: of the raw activation maps (NetDissect, NetDissect-Lite).
        unit_area: ``"all"``: a unit's area counts over every image (the plain IoU);
            ``"category"``: toward a concept category only in the images where the unit's active
            pixels overlap a label of that category (NetDissect-Lite; see :data:`UNIT_AREAS`).
        preset: The name of the :data:`PRESETS` entry these settings started from (``None``:
            none). Set it through :func:`merge_settings` (``dissect(..., preset="netdissect")``,
            ``--preset``) or :meth:`from_preset`, which apply the preset's values.
        num_levels: Candidate levels in ``"iqr"`` mode: top fractions ``logspace(-3, 0, K)``
            (gandissect uses 100).
        level_selection_samples: ``"iqr"`` mode: pick levels on a separate bank of this size
            seeded ``seed + 1`` (the paper's held-out set); ``None`` picks on the dissection bank.
        iou_threshold: The label IoU of an interpretable unit exceeds this (0.04 NetDissect /
            PNAS; 0.05 gandissect).
        interpretable: Which units count as interpretable
            (:class:`~lightning_dissect.interpretability.InterpretabilityRule`): ``"significant"``
            (label IoU above ``iou_threshold``, excess over chance ``(IoU − chance) / (1 − chance)``
            at least ``min_excess`` and swap-test p-value at most ``max_p_value``; needs
            ``chance_baseline``), ``"paper"`` (``iou_threshold`` alone, as in the papers) or
            ``"chance_ratio"`` (at least ``chance_ratio`` × the chance IoU; an earlier default).
        chance_ratio: ``"chance_ratio"`` rule: the factor over the chance IoU (>= 1).
        min_excess: ``"significant"`` rule: the least excess over chance (0 to 1).
        max_p_value: ``"significant"`` rule: the largest p-value against chance (0 to 1).
        chance_groups: Groups of samples (sample ``i`` in group ``i mod G``, 2 to 16) whose
            counts are kept apart for each unit's p-value against chance (the swap test, whose
            smallest p-value is ``2^-G``).
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
    quantile_over: str = "upsampled"
    unit_area: str = "all"
    preset: str | None = None
    num_levels: int = 64
    level_selection_samples: int | None = None
    iou_threshold: float = 0.04
    interpretable: str = "significant"
    chance_ratio: float = 2.0
    min_excess: float = 0.05
    max_p_value: float = 0.001
    chance_groups: int = 12
    iqr_threshold: float = 0.01
    min_concept_fraction: float = 1e-3
    top_k: int = 8
    num_visualized_units: int = 0
    chance_baseline: bool = True
    relative_accuracy: float = 0.005
    progress: bool = True
    device: str | None = field(default=None)

    def __post_init__(self) -> None:
        if isinstance(self.quantile, str):  # a preset name becomes its level at once
            self.quantile = _quantile(self.quantile, "quantile")

    @classmethod
    def from_preset(cls, name: str, **settings: Any) -> DissectionConfig:
        """The settings of the :data:`PRESETS` entry ``name``, with ``settings`` replacing its values.

        Examples:
            >>> cfg = DissectionConfig.from_preset("netdissect")
            >>> cfg.quantile, cfg.quantile_over, cfg.unit_area, cfg.interpretable
            (0.995, 'raw', 'category', 'paper')
        """
        return merge_settings(None, ("`from_preset`", {"preset": name, **settings}))

    def validate(self, names: Mapping[str, str] | None = None) -> DissectionConfig:
        """Check every field with its rule in :data:`FIELD_CHECKS`; return ``self``.

        Values are normalised to plain Python types (a NumPy integer becomes an ``int``).

        Args:
            names: How errors name each field (the command line passes its options,
                ``{"top_k": "--top-k", ...}``); a field not listed is named as itself.

        Raises:
            TypeError: A field of the wrong type (``seed="a"``, ``top_k=2.5``, ``progress=1``),
                naming the field.
            ValueError: A field with a value outside its range, naming the field; also
                ``interpretable="significant"`` (or ``"chance_ratio"``) with ``chance_baseline=False``.
        """
        names = names or {}
        for f in fields(self):
            object.__setattr__(self, f.name, check_setting(f.name, getattr(self, f.name), names.get(f.name)))
        if self.interpretable != "paper" and not self.chance_baseline:
            raise ValueError(
                f"{_given('interpretable', self.interpretable, names)} compares each unit with its chance IoU, which "
                f"{_given('chance_baseline', False, names)} switches off; keep the baseline or set "
                f"{_given('interpretable', 'paper', names)}"
            )
        return self

    def rule(self) -> InterpretabilityRule:
        """The :class:`~lightning_dissect.interpretability.InterpretabilityRule` of these settings.

        Examples:
            >>> DissectionConfig().rule().describe()
            'label IoU > 0.04, excess over chance ≥ 0.05 and p ≤ 0.001'
            >>> DissectionConfig(interpretable="paper", threshold_mode="iqr").rule().describe()
            'label IoU > 0.04 and IQR > 0.01'
        """
        return InterpretabilityRule.from_settings(
            {f.name: getattr(self, f.name) for f in fields(self)}
        )


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


def _given(name: str, value: Any, names: Mapping[str, str]) -> str:
    """A setting at a value as the caller wrote it: the field quoted as code, or its option (a switch alone)."""
    option = names.get(name)
    if option is None:
        return f"`{name}`={value!r}"
    return option if isinstance(value, bool) else f"{option} {value}"


def merge_settings(
    base: DissectionConfig | Mapping[str, Any] | None,
    *sources: tuple[str, Mapping[str, Any]],
    names: Mapping[str, str] | None = None,
) -> DissectionConfig:
    """The one way settings become a :class:`DissectionConfig`: ``base``, then each source in order.

    Args:
        base: A config or a ``field -> value`` mapping of defaults (``None``: the class defaults).
        sources: ``(what, settings)`` pairs, e.g. ``("keyword arguments", {...})``; ``what``
            names the source in errors. A setting given by two sources is an error. A
            ``preset`` (a :data:`PRESETS` name) given by a source sets its values for every setting
            no source gave; a config given as ``base`` keeps its values, whatever its ``preset``.
        names: How errors name each setting (see :meth:`DissectionConfig.validate`).

    Raises:
        TypeError: A key that is not a :class:`DissectionConfig` field, naming the source and
            listing the valid fields; or a value of the wrong type (see :meth:`DissectionConfig.validate`).
        ValueError: A setting given by two sources, or a value out of range.

    Examples:
        >>> merge_settings(None, ("keyword arguments", {"top_k": 4})).top_k
        4
        >>> base = merge_settings(None, ("keyword arguments", {"preset": "netdissect", "quantile": 0.99}))
        >>> base.quantile, base.quantile_over, merge_settings(base, ("keyword arguments", {"top_k": 4})).quantile
        (0.99, 'raw', 0.99)
        >>> merge_settings(None, ("`dissection_config`", {"topk": 4}))
        Traceback (most recent call last):
        ...
        TypeError: `dissection_config` has unknown setting(s) ['topk'] (did you mean 'top_k'?); ...
    """
    import difflib

    known = [f.name for f in fields(DissectionConfig)]
    if isinstance(base, DissectionConfig):
        values = asdict(base)
    else:
        values = {**config_defaults(), **dict(base or {})}
    seen: dict[str, str] = {}
    for what, settings in sources:
        unknown = sorted(set(settings) - set(known))
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(
                f"{what} has unknown setting(s) {unknown}{hint}; the settings are the fields of "
                f"DissectionConfig: {known}"
            )
        twice = sorted(set(settings) & set(seen))
        if twice:
            raise ValueError(
                f"{', '.join(twice)} given both in {seen[twice[0]]} and in {what}; give each setting once"
            )
        seen.update(dict.fromkeys(settings, what))
        values.update(settings)
    preset = values.get("preset")
    if preset is not None and ("preset" in seen or not isinstance(base, DissectionConfig)):
        name = check_setting("preset", preset, "preset")
        # the preset's values, except those a source gave (a config given as `base` already holds its
        # preset's values, and the settings given beside it: they are kept)
        values.update({k: v for k, v in PRESETS[name].items() if k not in seen})
    return DissectionConfig(**values).validate(names)


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
