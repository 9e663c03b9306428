"""``DissectionResult``: the plain result object every sink (TensorBoard, JSON, HTML, console) reads.

The JSON layout (``schema_version`` 1: settings, metadata, vocabulary, optional ablations, and per
layer ``num_units``, the ``iou`` and ``chance_iou`` matrices and one record per unit) is described
once, field by field with a complete example, on the documentation's ``dissect.json`` page
(``docs/schema.md``); :meth:`DissectionResult.to_dict` writes it and :meth:`DissectionResult.from_dict`
reads it.

Readers tolerate unknown extra fields at any level (they are ignored), so a file written by a newer
release with the same ``schema_version`` still loads; malformed files raise a :class:`ValueError`
that names the file and the offending key.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_dissect._utils.io import json_text
from lightning_dissect.interpretability import InterpretabilityRule
from lightning_dissect.vocabulary import ConceptVocabulary

__all__ = [
    "SCHEMA_VERSION",
    "UnitDissection",
    "LayerDissection",
    "DissectionResult",
    "ResultComparison",
]

SCHEMA_VERSION = 1


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _fmt_p(value: float | None) -> str:
    """A p-value: three significant digits (``0.000244``), ``–`` when not measured."""
    return "–" if value is None else f"{value:.3g}"


@dataclass
class UnitDissection:
    """What dissection found for one unit (one channel of one layer).

    Two fields keep their JSON names (``docs/schema.md``) where the prose says another word:
    ``label`` is the unit's *concept* and ``level`` its activation *threshold*; :attr:`concept` and
    :attr:`threshold` read them under those words.

    Attributes:
        unit: The unit's index in its layer.
        label: The unit's concept (the name of the best-matching concept of the vocabulary).
        concept_index: That concept's index in the vocabulary.
        category: That concept's category.
        iou: IoU of the unit's masks with the concept's over the whole sample set.
        iou_iqr: Information quality ratio of the unit's masks and the concept's.
        level: The unit's activation threshold: its mask is ``upsampled activation > level``.
        interpretable: Whether the unit counts as interpretable (see ``interpretability``).
        chance_iou: The IoU with the concept when images are paired with another image's
            segmentation (``None`` without the chance baseline).
        top_images: The samples of largest spatial max activation: ``{"index", "maxact"}``.

    Examples:
        >>> u = UnitDissection(3, "sky", 1, "material", 0.31, 0.2, 0.75, True, 0.05)
        >>> (u.concept, u.threshold) == (u.label, u.level)
        True
    """

    unit: int
    label: str
    concept_index: int
    category: str
    iou: float
    iou_iqr: float
    level: float
    interpretable: bool
    chance_iou: float | None
    top_images: list[dict[str, float]] = field(default_factory=list)
    #: One-sided p-value of "the label IoU is above the chance IoU" (the swap test over sample
    #: groups); ``None`` where it was not measured (no chance baseline, older results).
    p_value: float | None = None

    @property
    def excess(self) -> float | None:
        """``(IoU − chance) / (1 − chance)``: the share of the room above chance the unit reaches.

        ``None`` without a chance IoU.

        Examples:
            >>> UnitDissection(0, "sky", 1, "material", 1.0, 0.1, 1.0, True, 0.674).excess
            1.0
        """
        if self.chance_iou is None or not math.isfinite(self.iou):
            return None
        room = 1.0 - self.chance_iou
        return (self.iou - self.chance_iou) / room if room > 0 else 0.0

    @property
    def concept(self) -> str:
        """The unit's concept (stored as ``label``)."""
        return self.label

    @property
    def threshold(self) -> float:
        """The unit's activation threshold (stored as ``level``)."""
        return self.level


_UNIT_FIELDS = tuple(f.name for f in fields(UnitDissection))


def _unit_dict(unit: UnitDissection) -> dict[str, Any]:
    """``dataclasses.asdict`` of a unit record without its generic deep copy (a round has many).

    The derived ``excess`` is written too, to 6 decimals (readers recompute it from ``iou`` and
    ``chance_iou``).
    """
    data = {name: getattr(unit, name) for name in _UNIT_FIELDS}
    data["top_images"] = [dict(image) for image in unit.top_images]
    excess = unit.excess
    data["excess"] = None if excess is None else round(excess, 6)
    return data


@dataclass
class LayerDissection:
    """Per-layer results: one :class:`UnitDissection` per unit and the full IoU matrix."""

    name: str
    units: list[UnitDissection]
    iou: Tensor  # (U, C) float32
    chance_iou: Tensor | None = None  # (U, C) float32
    #: The layout the layer's output was read in (``"channels-first"``, ``"channels-last"``,
    #: ``"tokens:prefix=1,grid=14x14"``; see ``lightning_dissect.engine.layouts``); ``None`` in
    #: results written before layouts were recorded.
    layout: str | None = None

    @property
    def num_units(self) -> int:
        """Number of units of the layer."""
        return len(self.units)

    def interpretable_units(self) -> list[UnitDissection]:
        """Interpretable units, best IoU first."""
        return sorted((u for u in self.units if u.interpretable), key=lambda u: -u.iou)

    def top_units(self, n: int) -> list[UnitDissection]:
        """The ``n`` best units: interpretable ones first, each group by label IoU (highest first).

        A unit whose label IoU does not exceed its chance IoU (when that was measured) is never a
        top unit, interpretable or not; nor is one whose IoU is not finite. Fewer than ``n`` units
        are returned when fewer qualify.

        Examples:
            >>> unit = lambda i, iou, ok, chance: UnitDissection(i, "sky", 1, "material", iou, 0.1, 1.0, ok, chance)
            >>> units = [unit(0, 0.6, False, 0.7), unit(1, 0.3, False, 0.1), unit(2, 0.2, True, 0.05)]
            >>> [u.unit for u in LayerDissection("l", units, torch.zeros(3, 2)).top_units(5)]
            [2, 1]
        """
        eligible = [
            u for u in self.units
            if math.isfinite(u.iou) and (u.chance_iou is None or u.iou > u.chance_iou)
        ]
        return sorted(eligible, key=lambda u: (not u.interpretable, -u.iou, u.unit))[:n]

    def units_for(self, concept: int | str, top_n: int | None = None) -> list[UnitDissection]:
        """A concept's units: the interpretable units labelled with it, best IoU first, at most ``top_n``.

        Ties go to the lower unit index. These are the units every intervention switches off for a
        concept (the ablation check, reader ablation).

        Args:
            concept: The concept's vocabulary index, or its name (the units' ``label``).
            top_n: Most units returned; ``None``: all of them.

        Examples:
            >>> unit = lambda i, label, iou, ok: UnitDissection(i, label, 1 + (label == "sky"), "", iou, 0, 1, ok, None)
            >>> units = [unit(0, "sky", 0.2, True), unit(1, "sky", 0.5, True), unit(2, "sky", 0.9, False),
            ...          unit(3, "sky", 0.2, True), unit(4, "tree", 0.8, True)]
            >>> layer = LayerDissection("l", units, torch.zeros(5, 3))
            >>> [u.unit for u in layer.units_for("sky")], [u.unit for u in layer.units_for(2, top_n=2)]
            ([1, 0, 3], [1, 0])
        """
        if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0):
            raise ValueError(f"`top_n` must be a non-negative int or None, got {top_n!r}")
        by_name = isinstance(concept, str)
        mine = [u for u in self.units if u.interpretable and (u.label if by_name else u.concept_index) == concept]
        return sorted(mine, key=lambda u: (-u.iou, u.unit))[:top_n]

    def concept_counts(self) -> dict[str, int]:
        """Number of interpretable units per concept label, most frequent first."""
        return dict(Counter(u.label for u in self.units if u.interpretable).most_common())

    def category_counts(self) -> dict[str, int]:
        """Number of interpretable units per concept category."""
        return dict(Counter(u.category for u in self.units if u.interpretable).most_common())

    @property
    def num_interpretable(self) -> int:
        """Count of interpretable units."""
        return sum(1 for u in self.units if u.interpretable)

    @property
    def mean_best_iou(self) -> float:
        """Mean over units of the IoU with the unit's label."""
        return sum(u.iou for u in self.units) / max(1, len(self.units))

    @property
    def num_concepts_covered(self) -> int:
        """Distinct concepts that label at least one interpretable unit."""
        return len({u.label for u in self.units if u.interpretable})


def unit_labels(layer: LayerDissection) -> list[str]:
    """Per unit (by unit index), its label when interpretable, else ``""``: what churn compares.

    The callback's history stores these lists for every round, so rounds read back from the
    history and full results are compared by the same rule (:func:`label_changes`).
    """
    labels = [""] * layer.num_units
    for u in layer.units:
        if u.interpretable and 0 <= u.unit < len(labels):
            labels[u.unit] = u.label
    return labels


def label_changes(
    old: Sequence[str], new: Sequence[str]
) -> tuple[list[int], list[int], list[tuple[int, str, str]]]:
    """Churn between two label lists (``""`` = not interpretable): the one definition of it.

    Returns:
        ``(gained, lost, relabelled)``: units interpretable only in ``new``, only in ``old``, and
        ``(unit, old_label, new_label)`` for units interpretable in both whose label changed. A
        unit missing from the shorter list counts as not interpretable there.

    Examples:
        >>> label_changes(["sky", "", "tree"], ["sky", "door", "grass"])
        ([1], [], [(2, 'tree', 'grass')])
    """
    gained: list[int] = []
    lost: list[int] = []
    relabelled: list[tuple[int, str, str]] = []
    for unit in range(max(len(old), len(new))):
        was = old[unit] if unit < len(old) else ""
        now = new[unit] if unit < len(new) else ""
        if now and not was:
            gained.append(unit)
        elif was and not now:
            lost.append(unit)
        elif was and now and was != now:
            relabelled.append((unit, was, now))
    return gained, lost, relabelled


@dataclass
class ResultComparison:
    """Units gained, lost and relabelled between two results, per layer.

    ``gained``/``lost``: units interpretable in only the newer/older result;
    ``relabelled``: ``(unit, old_label, new_label)`` for units interpretable in both whose label
    changed.
    """

    gained: dict[str, list[int]]
    lost: dict[str, list[int]]
    relabelled: dict[str, list[tuple[int, str, str]]]

    def churn(self, layer: str) -> int:
        """Total units that changed status or label in ``layer``."""
        return len(self.gained[layer]) + len(self.lost[layer]) + len(self.relabelled[layer])


@dataclass
class DissectionResult:
    """Result of dissecting one or more layers of a generator.

    Attributes:
        layers: ``layer name -> LayerDissection``, in the order they were given.
        vocabulary: The concept vocabulary of the segmenter.
        settings: How it was computed (threshold mode, sample count, seeds, cut-offs, ...).
        metadata: Free-form context (training step, epoch, checkpoint path, ...).
        unit_images: Optional rendered strips ``layer -> unit -> uint8 (k, 3, H, W)`` (not part of
            the JSON; the JSON keeps latent indices, from which any process can regenerate them).
        ablations: Optional ablation-check records ``layer -> [record, ...]``, each record a plain
            dict with the fields of :class:`~lightning_dissect.interventions.AblationEffect`
            (``dataclasses.asdict`` of it). Serialised as the top-level ``"ablations"`` key when
            not empty; the HTML report shows them.
    """

    layers: dict[str, LayerDissection]
    vocabulary: ConceptVocabulary
    settings: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    unit_images: dict[str, dict[int, Tensor]] = field(default_factory=dict, repr=False)
    schema_version: int = SCHEMA_VERSION
    ablations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __getitem__(self, layer: str) -> LayerDissection:
        return self.layers[layer]

    @property
    def rule(self) -> InterpretabilityRule:
        """The rule that decided which units are interpretable (from :attr:`settings`).

        Results written before the rule was a setting read as the papers' fixed cut, ``"paper"``.
        """
        return InterpretabilityRule.from_settings(self.settings)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (see the module docstring for the schema)."""
        layers = {}
        for name, layer in self.layers.items():
            entry: dict[str, Any] = {
                "num_units": layer.num_units,
                "units": [_unit_dict(u) for u in layer.units],
                "iou": [[round(float(v), 6) for v in row] for row in layer.iou.tolist()],
            }
            if layer.chance_iou is not None:
                entry["chance_iou"] = [
                    [round(float(v), 6) for v in row] for row in layer.chance_iou.tolist()
                ]
            if layer.layout is not None:
                entry["layout"] = layer.layout
            layers[name] = entry
        data: dict[str, Any] = {
            "schema_version": self.schema_version,
            "settings": self.settings,
            "metadata": self.metadata,
            "vocabulary": self.vocabulary.to_dict(),
            "layers": layers,
        }
        if self.ablations:
            data["ablations"] = {
                name: [_json_record(record) for record in records]
                for name, records in self.ablations.items()
            }
        return data

    def to_json(self, path: str | Path | None = None, *, indent: int | None = None) -> str:
        """Serialise to JSON; also write it to ``path`` when given (atomically, parents created).

        Examples:
            >>> from lightning_dissect import ConceptVocabulary
            >>> vocab = ConceptVocabulary(("unlabeled", "sky"), ("none", "material"))
            >>> unit = UnitDissection(0, "sky", 1, "material", 0.5, 0.2, 1.0, True, 0.01)
            >>> layer = LayerDissection("conv", [unit], torch.tensor([[0.0, 0.5]]))
            >>> result = DissectionResult({"conv": layer}, vocab)
            >>> DissectionResult.from_json(result.to_json())["conv"].units[0].label
            'sky'
        """
        return json_text(self.to_dict(), path, indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> DissectionResult:
        """Inverse of :meth:`to_dict`, checking the structure as it goes.

        Unknown extra keys (at the top level, per layer or per unit) are ignored, so a document
        written by a newer release with the same ``schema_version`` loads.

        Args:
            data: The parsed JSON document.
            source: Where ``data`` came from (a file name), used in error messages.

        Raises:
            ValueError: If the document is not a dissection result, is from a newer schema
                version, misses a required key, or has inconsistent shapes; the message names
                the offending key (and ``source``).

        Examples:
            >>> DissectionResult.from_dict({"vocabulary": {}, "layers": []})  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: ...`layers` is a list...
        """
        where = f"{source}: " if source else ""
        version = _check_document(data, where)
        vocabulary = _vocabulary_from_dict(data["vocabulary"], where)
        layers = {
            str(name): _layer_from_dict(str(name), entry, vocabulary, where)
            for name, entry in data["layers"].items()
        }
        for key in ("settings", "metadata"):
            if not isinstance(data.get(key, {}), Mapping):
                raise ValueError(f"{where}`{key}` must be an object, got {type(data[key]).__name__}")
        ablations = data.get("ablations") or {}
        if not isinstance(ablations, Mapping) or not all(
            isinstance(v, list) and all(isinstance(r, Mapping) for r in v) for v in ablations.values()
        ):
            raise ValueError(f"{where}`ablations` must be an object {{layer: [record, ...]}}")
        return cls(
            layers=layers,
            vocabulary=vocabulary,
            settings=dict(data.get("settings", {})),
            metadata=dict(data.get("metadata", {})),
            schema_version=version,
            ablations={str(k): [dict(r) for r in v] for k, v in ablations.items()},
        )

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> DissectionResult:
        """Load from a JSON string or a path to a JSON file.

        Args:
            text_or_path: JSON text (starting with ``{``), the path of a JSON file, or an already
                parsed dict (passed to :meth:`from_dict`).

        Raises:
            ValueError: If the argument is neither JSON text nor an existing file, or the text or
                file is not valid JSON or not a dissection result; the message names the file and
                the offending key.
        """
        if isinstance(text_or_path, Mapping):  # already parsed: same as from_dict
            return cls.from_dict(text_or_path)
        if isinstance(text_or_path, (bytes, bytearray)):
            text_or_path = text_or_path.decode("utf-8")
        if not isinstance(text_or_path, (str, Path)):
            raise ValueError(
                "DissectionResult.from_json expects JSON text or a file path, got "
                f"{type(text_or_path).__name__}"
            )
        source: str | None = None
        text = str(text_or_path)
        if isinstance(text_or_path, Path) or not text.lstrip().startswith(("{", "[")):
            path = Path(text_or_path)
            if not path.exists():
                shown = text if len(text) <= 200 else text[:200] + "..."
                raise ValueError(
                    f"DissectionResult.from_json: {shown!r} is neither JSON text (it does not "
                    "start with '{') nor an existing file"
                )
            if path.is_dir():
                raise ValueError(f"{path}: is a directory, expected a dissection JSON file")
            source = str(path)
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{source}: not a text file (not UTF-8)") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            what = f"{source}: corrupt or truncated JSON" if source else "invalid JSON text"
            raise ValueError(f"{what} ({err.msg} at line {err.lineno}, column {err.colno})") from None
        return cls.from_dict(data, source=source)

    # ------------------------------------------------------------------ comparison
    def compare(self, other: DissectionResult) -> ResultComparison:
        """Units gained, lost and relabelled going from ``other`` (older) to ``self`` (newer).

        Examples:
            >>> from lightning_dissect import ConceptVocabulary
            >>> vocab = ConceptVocabulary(("unlabeled", "sky", "tree"), ("none", "m", "o"))
            >>> def make(label, on):
            ...     u = UnitDissection(0, label, 1, "m", 0.5, 0.1, 1.0, on, 0.0)
            ...     return DissectionResult({"l": LayerDissection("l", [u], torch.zeros(1, 3))}, vocab)
            >>> make("tree", True).compare(make("sky", True)).relabelled
            {'l': [(0, 'sky', 'tree')]}
        """
        gained: dict[str, list[int]] = {}
        lost: dict[str, list[int]] = {}
        relabelled: dict[str, list[tuple[int, str, str]]] = {}
        for name, layer in self.layers.items():
            old = other.layers.get(name)
            old_labels = unit_labels(old) if old is not None else [""] * layer.num_units
            gained[name], lost[name], relabelled[name] = label_changes(old_labels, unit_labels(layer))
        return ResultComparison(gained, lost, relabelled)

    # ------------------------------------------------------------------ console
    def summary(self, top: int = 10) -> Any:
        """A rich renderable: per layer, interpretable counts and a table of the top units.

        Print it with ``rich.print(result.summary())`` or :meth:`print_summary`.
        """
        from rich.console import Group
        from rich.table import Table

        parts: list[Any] = []
        for name, layer in self.layers.items():
            counts = ", ".join(f"{k} {v}" for k, v in layer.concept_counts().items()) or "none"
            read = f", read as {layer.layout}" if layer.layout not in (None, "channels-first") else ""
            table = Table(
                title=(
                    f"{name}: {layer.num_interpretable}/{layer.num_units} interpretable units "
                    f"({counts}){read}"
                ),
                title_justify="left",
            )
            for col in ("unit", "concept", "category", "IoU", "IQR", "threshold", "chance IoU", "excess", "p"):
                table.add_column(col, justify="right" if col not in ("concept", "category") else "left")
            if not layer.top_units(top):
                table.caption = self.no_units_note(name)
            for u in layer.top_units(top):
                style = None if u.interpretable else "dim"
                table.add_row(
                    str(u.unit),
                    u.label,
                    u.category,
                    f"{u.iou:.3f}",
                    f"{u.iou_iqr:.3f}",
                    f"{u.level:.3g}",
                    _fmt(u.chance_iou),
                    _fmt(u.excess),
                    _fmt_p(u.p_value),
                    style=style,
                )
            parts.append(table)
        if self.layers:
            rule = self.rule
            parts.append(f"[dim]interpretable: {rule.describe()} (rule {rule.name!r})[/dim]")
        return Group(*parts)

    def print_summary(self, top: int = 10) -> None:
        """Print :meth:`summary` to the console."""
        from rich.console import Console

        Console().print(self.summary(top))

    def top_units_table(self, layer: str, top: int = 20) -> tuple[list[str], list[list[Any]]]:
        """The :meth:`LayerDissection.top_units` of ``layer``, in order, as columns and plain rows.

        Every logger's top-units table is made from these rows (:meth:`markdown_table` renders them);
        when there are none, the loggers show :meth:`no_units_note` instead.

        Examples:
            >>> from lightning_dissect.vocabulary import ConceptVocabulary
            >>> vocab = ConceptVocabulary(("unlabeled", "sky"), ("none", "material"))
            >>> unit = UnitDissection(0, "sky", 1, "material", 0.5, 0.2, 1.0, True, 0.01, p_value=0.0002)
            >>> layer = LayerDissection("conv", [unit], torch.tensor([[0.0, 0.5]]))
            >>> columns, rows = DissectionResult({"conv": layer}, vocab).top_units_table("conv")
            >>> columns[-4:]
            ['threshold', 'chance IoU', 'excess', 'p-value']
            >>> [round(v, 4) if isinstance(v, float) else v for v in rows[0]]
            [0, 'sky', 'material', True, 0.5, 0.2, 1.0, 0.01, 0.4949, 0.0002]
        """
        columns = ["unit", "concept", "category", "interpretable", "IoU", "IQR", "threshold", "chance IoU",
                   "excess", "p-value"]
        rows: list[list[Any]] = [
            [u.unit, u.label, u.category, bool(u.interpretable), float(u.iou), float(u.iou_iqr), float(u.level),
             None if u.chance_iou is None else float(u.chance_iou), u.excess,
             None if u.p_value is None else float(u.p_value)]
            for u in self.layers[layer].top_units(top)
        ]
        return columns, rows

    def no_units_note(self, layer: str) -> str:
        """What the top-units tables say when no unit of ``layer`` qualifies: why the table is empty.

        Examples:
            >>> from lightning_dissect.vocabulary import ConceptVocabulary
            >>> vocab = ConceptVocabulary(("unlabeled", "sky"), ("none", "material"))
            >>> unit = UnitDissection(0, "sky", 1, "material", 0.05, 0.2, 1.0, False, 0.06)
            >>> result = DissectionResult({"conv": LayerDissection("conv", [unit], torch.zeros(1, 2))}, vocab)
            >>> result.no_units_note("conv")[:66]
            'No unit of conv has an IoU above its chance IoU (1 unit dissected)'
        """
        units = self.layers[layer].num_units
        return (
            f"No unit of {layer} has an IoU above its chance IoU ({units} unit{'s' if units != 1 else ''} dissected): "
            "no unit matches a concept better than another image would. Usual early in training or in an "
            "untrained network."
        )

    def markdown_table(self, layer: str, top: int = 20) -> str:
        """The :meth:`top_units_table` of ``layer`` as a Markdown table (or :meth:`no_units_note`).

        TensorBoard's text plugin renders it; interpretable units come first, and units not above
        their chance IoU are left out. ``excess`` is ``(IoU − chance) / (1 − chance)``, ``p`` the
        p-value of the swap test against chance.
        """
        rows = self.top_units_table(layer, top)[1]
        if not rows:
            return self.no_units_note(layer)
        out = [
            "| unit | concept | category | IoU | IQR | threshold | chance IoU | excess | p |",
            "|---:|:---|:---|---:|---:|---:|---:|---:|---:|",
        ]
        for unit, label, category, interpretable, iou, iqr, level, chance, excess, p in rows:
            mark = "" if interpretable else " (not interpretable)"
            out.append(
                f"| {unit} | {label}{mark} | {category} | {iou:.3f} | {iqr:.3f} | {level:.3g} | {_fmt(chance)} "
                f"| {_fmt(excess)} | {_fmt_p(p)} |"
            )
        return "\n".join(out)


_REQUIRED_UNIT_FIELDS = tuple(
    f.name for f in fields(UnitDissection) if f.name not in ("top_images", "chance_iou", "p_value")
)


def _json_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """Non-finite floats become ``null`` so the document stays standard JSON."""
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()
    }


def _matrix(value: Any, key: str, rows: int, cols: int) -> Tensor:
    try:
        matrix = torch.tensor(value, dtype=torch.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{key}` is not a matrix of numbers ({err})") from None
    if matrix.numel() == 0 and rows == 0:
        return matrix.reshape(0, cols)
    if matrix.ndim != 2:
        raise ValueError(f"`{key}` must be a 2-D list (units x concepts), got {matrix.ndim} dimensions")
    if matrix.shape[0] != rows:
        raise ValueError(f"`{key}` has {matrix.shape[0]} rows but the layer has {rows} units")
    if matrix.shape[1] != cols:
        raise ValueError(
            f"`{key}` has {matrix.shape[1]} columns but the vocabulary has {cols} concepts"
        )
    return matrix


def _check_document(data: Any, where: str) -> int:
    """Check the top level of a result document; return its schema version.

    It must be an object of a known schema version with ``vocabulary`` and ``layers`` objects.
    """
    if not isinstance(data, Mapping):
        raise ValueError(
            f"{where}a dissection result must be a JSON object, got {type(data).__name__}"
        )
    try:
        version = int(data.get("schema_version", 0))
    except (TypeError, ValueError):
        raise ValueError(
            f"{where}`schema_version` must be an integer, got {data.get('schema_version')!r}"
        ) from None
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"{where}result has schema_version {version}; this lightning-dissect reads up to "
            f"{SCHEMA_VERSION} — upgrade the package"
        )
    for key in ("vocabulary", "layers"):
        if key not in data:
            raise ValueError(
                f"{where}not a dissection result: the required key `{key}` is missing "
                f"(found keys: {sorted(map(str, data))})"
            )
    raw_layers = data["layers"]
    if isinstance(raw_layers, list):
        raise ValueError(
            f"{where}`layers` is a list (the layout of gandissect's dissect.json?); "
            "lightning-dissect expects an object {layer name: {num_units, iou, units}} — "
            "see docs/schema.md"
        )
    if not isinstance(raw_layers, Mapping):
        raise ValueError(f"{where}`layers` must be an object, got {type(raw_layers).__name__}")
    if not isinstance(data["vocabulary"], Mapping):
        raise ValueError(
            f"{where}`vocabulary` must be an object, got {type(data['vocabulary']).__name__}"
        )
    return version


def _vocabulary_from_dict(raw: Mapping[str, Any], where: str) -> ConceptVocabulary:
    try:
        return ConceptVocabulary.from_dict(raw)
    except KeyError as err:
        raise ValueError(f"{where}`vocabulary` misses the key {err.args[0]!r}") from None
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}`vocabulary` is invalid: {err}") from None


def _layer_from_dict(
    name: str, entry: Any, vocabulary: ConceptVocabulary, where: str
) -> LayerDissection:
    at = f"layers[{name!r}]"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}`{at}` must be an object, got {type(entry).__name__}")
    for key in ("units", "iou"):
        if key not in entry:
            raise ValueError(f"{where}`{at}` misses the required key `{key}`")
    if not isinstance(entry["units"], list):
        raise ValueError(f"{where}`{at}.units` must be a list, got {type(entry['units']).__name__}")
    units = []
    for i, record in enumerate(entry["units"]):
        if not isinstance(record, Mapping):
            raise ValueError(f"{where}`{at}.units[{i}]` must be an object")
        missing = [k for k in _REQUIRED_UNIT_FIELDS if k not in record]
        if missing:
            raise ValueError(f"{where}`{at}.units[{i}]` misses the key(s) {', '.join(missing)}")
        known = {k: record[k] for k in _UNIT_FIELDS if k in record}
        known.setdefault("chance_iou", None)
        units.append(UnitDissection(**known))
    count = entry.get("num_units", len(units))
    if count != len(units):
        raise ValueError(
            f"{where}`{at}.num_units` is {count} but `{at}.units` lists {len(units)} units"
        )
    try:
        iou = _matrix(entry["iou"], f"{at}.iou", len(units), vocabulary.num_concepts)
        chance = entry.get("chance_iou")
        chance_iou = (
            None
            if chance is None
            else _matrix(chance, f"{at}.chance_iou", len(units), vocabulary.num_concepts)
        )
    except ValueError as err:
        raise ValueError(f"{where}{err}") from None
    layout = entry.get("layout")
    if layout is not None and not isinstance(layout, str):
        raise ValueError(f"{where}`{at}.layout` must be a string such as 'channels-first', got {layout!r}")
    return LayerDissection(name, units, iou, chance_iou, layout)
