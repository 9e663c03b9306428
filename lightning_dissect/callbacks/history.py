"""Round files: their names, reading them back (:func:`load_history`), and whether rounds belong to one run.

Layout (written by :class:`~lightning_dissect.callbacks.generator.DissectionCallback` and the
logger writers; every name comes from :func:`round_prefix`, :func:`round_file_name` and
:func:`step_folder_name`)::

    <log_dir>/dissection/round_<step:08d>.json          # unnamed callback
    <log_dir>/dissection-<name>/round_<step:08d>.json   # DissectionCallback(name=...)
    <log_dir>/<prefix>/step_<step:08d>/...              # pictures and tables of the folder writer

each file one :class:`~lightning_dissect.result.DissectionResult` JSON document whose metadata
holds ``global_step``. ``<log_dir>`` is the logger's ``log_dir``; after a resume Lightning's
``TensorBoardLogger`` writes to a new ``version_N`` folder, so :func:`load_history` given the
logger's root folder (e.g. ``runs/gan/lightning_logs``) merges the rounds of every ``version_*``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_dissect._utils.text import plural
from lightning_dissect.result import DissectionResult

__all__ = [
    "ROUND_DIR",
    "ROUND_FILES",
    "RUN_SETTINGS",
    "differing_settings",
    "load_history",
    "round_file_name",
    "round_path",
    "round_prefix",
    "run_settings",
    "settings_groups",
    "step_folder_name",
]

#: Folder (under the logger's directory) holding the rounds of an unnamed callback.
ROUND_DIR = "dissection"

#: Glob pattern of the round files in a round folder.
ROUND_FILES = "round_*.json"

_ROUND_FILE = re.compile(r"round_(\d+)\.json$")
_VERSION = re.compile(r"version_(\d+)$")


def round_prefix(name: str | None = None) -> str:
    """``dissection`` or ``dissection-<name>``: the round folder and the first part of every logged tag.

    Examples:
        >>> round_prefix(), round_prefix("ema")
        ('dissection', 'dissection-ema')
    """
    return ROUND_DIR if name is None else f"{ROUND_DIR}-{name}"


def round_file_name(step: int) -> str:
    """The file name of the round at ``step``.

    Examples:
        >>> round_file_name(1200)
        'round_00001200.json'
    """
    return f"round_{int(step):08d}.json"


def step_folder_name(step: int) -> str:
    """The folder name of the pictures and tables of the round at ``step``.

    Examples:
        >>> step_folder_name(12)
        'step_00000012'
    """
    return f"step_{int(step):08d}"


def round_path(log_dir: str | Path, step: int, name: str | None = None) -> Path:
    """Where the round at ``step`` of the callback called ``name`` is stored under ``log_dir``.

    Examples:
        >>> round_path("logs/version_0", 1200).as_posix()
        'logs/version_0/dissection/round_00001200.json'
        >>> round_path("logs/version_0", 5, "fine").as_posix()
        'logs/version_0/dissection-fine/round_00000005.json'
    """
    return Path(log_dir) / round_prefix(name) / round_file_name(step)


def _name_of(folder: Path) -> str | None | bool:
    """``None`` for ``dissection``, the name for ``dissection-<name>``, ``False`` otherwise."""
    if folder.name == ROUND_DIR:
        return None
    if folder.name.startswith(ROUND_DIR + "-") and len(folder.name) > len(ROUND_DIR) + 1:
        return folder.name[len(ROUND_DIR) + 1 :]
    return False


def _round_folders(log_dir: Path) -> dict[str | None, Path]:
    found: dict[str | None, Path] = {}
    for child in sorted(log_dir.iterdir()) if log_dir.is_dir() else []:
        if child.is_dir():
            name = _name_of(child)
            if name is not False:
                found[name] = child  # type: ignore[index]
    return found


def _version_key(folder: Path) -> tuple[int, int | str]:
    match = _VERSION.match(folder.name)
    return (0, int(match.group(1))) if match else (1, folder.name)


#: The settings that make two rounds comparable members of one run (a different value: another run).
RUN_SETTINGS: tuple[str, ...] = (
    "num_samples", "seed", "threshold_mode", "quantile", "num_levels", "level_selection_samples",
    "iou_threshold", "interpretable", "chance_ratio", "min_excess", "max_p_value", "chance_groups",
    "iqr_threshold", "layers",
)


def run_settings(result: DissectionResult) -> dict[str, Any]:
    """The :data:`RUN_SETTINGS` of a round (those it records), as compared between rounds.

    Examples:
        >>> from lightning_dissect import ConceptVocabulary
        >>> r = DissectionResult({}, ConceptVocabulary(("unlabeled",), ("none",)), {"num_samples": 8, "x": 1})
        >>> run_settings(r)
        {'num_samples': 8}
    """
    return {key: result.settings[key] for key in RUN_SETTINGS if key in result.settings}


#: Settings that one threshold mode does not use: a round differing only there is the same run.
_UNUSED_BY_MODE: dict[str, tuple[str, ...]] = {"quantile": ("num_levels",), "iqr": ("quantile",)}


def differing_settings(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """The :data:`RUN_SETTINGS` in which rounds recorded with ``recorded`` are another run than ``wanted``.

    "Do these rounds belong to one run?" is answered here only (the callback's warning about a
    folder holding another run, and :func:`~lightning_dissect.callbacks.replay.dissect_checkpoints`
    resuming a series, both ask it). A setting counts where both sides name it and the values
    differ, except a setting that ``wanted``'s threshold mode does not use: ``quantile`` in
    ``"iqr"`` mode, ``num_levels`` in ``"quantile"`` mode.

    Returns:
        The differing setting names, in :data:`RUN_SETTINGS` order (empty: one run).

    Examples:
        >>> differing_settings({"seed": 0, "quantile": 0.99}, {"seed": 1, "quantile": 0.99})
        ['seed']
        >>> differing_settings({"threshold_mode": "iqr", "quantile": 0.99},
        ...                    {"threshold_mode": "iqr", "quantile": 0.995})
        []
    """
    unused = _UNUSED_BY_MODE.get(wanted.get("threshold_mode", "quantile"), ())
    return [
        key for key in RUN_SETTINGS
        if key in recorded and key in wanted and key not in unused and recorded[key] != wanted[key]
    ]


def settings_groups(rounds: Sequence[DissectionResult]) -> list[tuple[dict[str, Any], list[int]]]:
    """Rounds grouped by their :func:`run_settings`: ``[(settings, steps), ...]`` in order of appearance."""
    groups: list[tuple[dict[str, Any], list[int]]] = []
    for result in rounds:
        own = run_settings(result)
        step = int(result.metadata.get("global_step", -1))
        for settings, steps in groups:
            if settings == own:
                steps.append(step)
                break
        else:
            groups.append((own, [step]))
    return groups


def _differing(groups: Sequence[tuple[dict[str, Any], list[int]]]) -> list[str]:
    keys = sorted({k for settings, _ in groups for k in settings})
    return [k for k in keys if len({repr(settings.get(k)) for settings, _ in groups}) > 1]


def load_history(
    directory: str | Path,
    *,
    name: str | None = None,
    strict: bool = False,
    settings: Mapping[str, Any] | None = None,
) -> list[DissectionResult]:
    """Load every dissection round written under ``directory``, ordered by ``global_step``.

    ``directory`` may be:

    * a rounds folder itself (``.../dissection`` or ``.../dissection-<name>``);
    * a logger's ``log_dir`` (e.g. ``lightning_logs/version_0``) holding such folders;
    * a logger's root (e.g. ``runs/gan/lightning_logs``) whose ``version_*`` sub-folders hold
      them — after a resume each run writes a new ``version_N``; the rounds of all versions are
      merged, sorted by ``global_step``, and when two versions hold the same step the one of the
      highest version (the latest run) wins.

    Which callback: ``name="fine"`` reads ``dissection-fine/``. Without ``name`` the rounds of
    the unnamed callback (``dissection/``) are read; when there is none but exactly one named
    callback, that one; when there are several named ones and no unnamed one, a
    :class:`ValueError` lists their names.

    A round file that cannot be read (truncated by a crash, say) is skipped with a warning naming
    it; with ``strict=True`` a :class:`ValueError` naming it is raised instead. A log folder
    without any rounds gives an empty list.

    Rounds of different runs in one folder (a fresh run written where an older run's rounds are,
    e.g. under a pinned logger version) are told apart by their :data:`RUN_SETTINGS`: when they
    differ, a warning lists each group of settings with its steps and the settings that differ;
    pass ``settings={"num_samples": 512}`` (any of them) to keep only the rounds that match.

    Args:
        directory: Rounds folder, logger directory or logger root (see above).
        name: The callback's ``name`` (``None``: the unnamed one, see above).
        strict: Raise instead of skipping unreadable round files.
        settings: Keep only the rounds whose settings have these values (see above).

    Returns:
        The rounds, oldest ``global_step`` first, one per step.

    Raises:
        FileNotFoundError: If ``directory`` does not exist, or ``name`` matches no rounds folder.
        ValueError: If ``name`` is ``None`` and several named callbacks wrote rounds, or (with
            ``strict=True``) a round file cannot be read.

    Examples:
        >>> import tempfile
        >>> load_history(tempfile.mkdtemp())  # a log folder without rounds
        []
    """
    root = Path(directory)
    if not root.exists():
        raise FileNotFoundError(f"load_history: directory {str(root)!r} does not exist")
    if not root.is_dir():
        raise FileNotFoundError(f"load_history: {str(root)!r} is not a directory")
    by_step = _read_rounds(_sources(root, name), strict)
    rounds = [by_step[step] for step in sorted(by_step)]
    if settings is not None:
        unknown = sorted(set(settings) - set(RUN_SETTINGS))
        if unknown:
            raise ValueError(f"load_history: `settings` may select by {list(RUN_SETTINGS)}, got {unknown}")
        return [r for r in rounds if all(r.settings.get(k) == v for k, v in settings.items())]
    groups = settings_groups(rounds)
    if len(groups) > 1:
        differing = _differing(groups)
        listed = "; ".join(
            ", ".join(f"{k}={g.get(k)!r}" for k in differing)
            + f" (steps {steps[0]}..{steps[-1]}, {plural(len(steps), 'round')})"
            for g, steps in groups
        )
        warnings.warn(
            f"load_history: {str(root)!r} holds rounds of {len(groups)} runs with different settings: {listed}; "
            f"pass settings={{{differing[0]!r}: ...}} to keep one run",
            stacklevel=2,
        )
    return rounds


def _sources(root: Path, name: str | None) -> list[Path]:
    """The rounds folders of the chosen callback under ``root``, lowest version first."""
    own = _name_of(root)
    if own is not False or any(root.glob(ROUND_FILES)):
        return [root]  # a rounds folder given directly
    log_dirs = sorted((d for d in root.iterdir() if d.is_dir() and _VERSION.match(d.name)), key=_version_key)
    log_dirs.append(root)  # a log_dir given directly ranks after its (unlikely) versions
    per_dir = {d: _round_folders(d) for d in log_dirs}
    names = sorted({n for folders in per_dir.values() for n in folders}, key=lambda n: (n is not None, n or ""))
    if not names:
        return []
    chosen = _choose_callback(root, names, name)
    return [folders[chosen] for folders in per_dir.values() if chosen in folders]


def _choose_callback(root: Path, names: list[str | None], name: str | None) -> str | None:
    """The callback whose rounds are read: ``name``, else the unnamed one, else the only named one."""
    if name is None:
        if None in names:
            return None
        if len(names) == 1:
            return names[0]
        raise ValueError(
            f"load_history: {str(root)!r} holds the rounds of several named callbacks "
            f"({', '.join(str(n) for n in names)}); pass name= to pick one"
        )
    if name not in names:
        available = ", ".join("(unnamed)" if n is None else str(n) for n in names)
        raise FileNotFoundError(
            f"load_history: no rounds of the callback named {name!r} under {str(root)!r} "
            f"(found: {available})"
        )
    return name


def _read_rounds(sources: list[Path], strict: bool) -> dict[int, DissectionResult]:
    """Every readable round of ``sources`` by step; later sources (higher versions) overwrite earlier ones."""
    by_step: dict[int, DissectionResult] = {}
    for folder in sources:
        for file in sorted(folder.glob(ROUND_FILES)):
            try:
                result = DissectionResult.from_json(file)
            except (ValueError, OSError) as err:
                message = f"load_history: cannot read round file {str(file)!r}: {err}"
                if strict:
                    raise ValueError(message) from None
                warnings.warn(message + " (skipped)", stacklevel=3)  # at load_history's caller
                continue
            step = result.metadata.get("global_step")
            if not isinstance(step, int):
                match = _ROUND_FILE.search(file.name)
                step = int(match.group(1)) if match else -1
            by_step[step] = result
    return by_step
