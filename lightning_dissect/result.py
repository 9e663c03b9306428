"""``DissectionResult``: the plain result object every sink (TensorBoard, JSON, HTML, console) reads.

JSON schema (version 1) — field names follow gandissect's ``dissect.json`` where they overlap::

    {
      "schema_version": 1,
      "settings": {...},                        # how the result was computed
      "metadata": {...},                        # free-form: step, epoch, checkpoint, ...
      "vocabulary": {"names": [...], "categories": [...], "unlabeled_index": 0, "parents": [...]},
      "layers": {
        "<layer>": {
          "num_units": U,
          "iou": [[...C floats...] x U],           # IoU of every unit with every concept
          "units": [{
              "unit": 0,                           # channel index
              "label": "tree",                     # best concept (name)
              "concept_index": 5,
              "category": "object",
              "iou": 0.12,                         # IoU with the label
              "iou_iqr": 0.04,                     # information quality ratio with the label
              "level": 1.73,                       # the unit's activation threshold
              "interpretable": true,
              "chance_iou": 0.01,                  # IoU with the label under shuffled pairing
              "top_images": [{"index": 17, "maxact": 4.2}, ...]   # latent-bank indices
          }, ...]
        }
      }
    }
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_dissect.segmenters.base import ConceptVocabulary

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


@dataclass
class UnitDissection:
    """What dissection found for one unit (one channel of one layer)."""

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


@dataclass
class LayerDissection:
    """Per-layer results: one :class:`UnitDissection` per unit and the full IoU matrix."""

    name: str
    units: list[UnitDissection]
    iou: Tensor  # (U, C) float32
    chance_iou: Tensor | None = None  # (U, C) float32

    @property
    def num_units(self) -> int:
        """Number of units of the layer."""
        return len(self.units)

    def interpretable_units(self) -> list[UnitDissection]:
        """Interpretable units, best IoU first."""
        return sorted((u for u in self.units if u.interpretable), key=lambda u: -u.iou)

    def top_units(self, n: int) -> list[UnitDissection]:
        """The ``n`` units with the highest label IoU."""
        return sorted(self.units, key=lambda u: (-u.iou, u.unit))[:n]

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
    """

    layers: dict[str, LayerDissection]
    vocabulary: ConceptVocabulary
    settings: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    unit_images: dict[str, dict[int, Tensor]] = field(default_factory=dict, repr=False)
    schema_version: int = SCHEMA_VERSION

    def __getitem__(self, layer: str) -> LayerDissection:
        return self.layers[layer]

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (see the module docstring for the schema)."""
        layers = {}
        for name, layer in self.layers.items():
            entry: dict[str, Any] = {
                "num_units": layer.num_units,
                "units": [asdict(u) for u in layer.units],
                "iou": [[round(float(v), 6) for v in row] for row in layer.iou.tolist()],
            }
            if layer.chance_iou is not None:
                entry["chance_iou"] = [
                    [round(float(v), 6) for v in row] for row in layer.chance_iou.tolist()
                ]
            layers[name] = entry
        return {
            "schema_version": self.schema_version,
            "settings": self.settings,
            "metadata": self.metadata,
            "vocabulary": self.vocabulary.to_dict(),
            "layers": layers,
        }

    def to_json(self, path: str | Path | None = None, *, indent: int | None = None) -> str:
        """Serialise to JSON; also write it to ``path`` when given.

        Examples:
            >>> from lightning_dissect.segmenters import ConceptVocabulary
            >>> vocab = ConceptVocabulary(("unlabeled", "sky"), ("none", "material"))
            >>> unit = UnitDissection(0, "sky", 1, "material", 0.5, 0.2, 1.0, True, 0.01)
            >>> layer = LayerDissection("conv", [unit], torch.tensor([[0.0, 0.5]]))
            >>> result = DissectionResult({"conv": layer}, vocab)
            >>> DissectionResult.from_json(result.to_json())["conv"].units[0].label
            'sky'
        """
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DissectionResult:
        """Inverse of :meth:`to_dict`."""
        version = int(data.get("schema_version", 0))
        if version > SCHEMA_VERSION:
            raise ValueError(
                f"result has schema_version {version}; this lightning-dissect reads up to "
                f"{SCHEMA_VERSION} — upgrade the package"
            )
        layers = {}
        for name, entry in data["layers"].items():
            units = [UnitDissection(**u) for u in entry["units"]]
            chance = entry.get("chance_iou")
            layers[name] = LayerDissection(
                name,
                units,
                torch.tensor(entry["iou"], dtype=torch.float32),
                torch.tensor(chance, dtype=torch.float32) if chance is not None else None,
            )
        return cls(
            layers=layers,
            vocabulary=ConceptVocabulary.from_dict(data["vocabulary"]),
            settings=dict(data.get("settings", {})),
            metadata=dict(data.get("metadata", {})),
            schema_version=version,
        )

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> DissectionResult:
        """Load from a JSON string or a path to a JSON file."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))

    # ------------------------------------------------------------------ comparison
    def compare(self, other: DissectionResult) -> ResultComparison:
        """Units gained, lost and relabelled going from ``other`` (older) to ``self`` (newer).

        Examples:
            >>> from lightning_dissect.segmenters import ConceptVocabulary
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
            old_units = {u.unit: u for u in old.units} if old is not None else {}
            gained[name], lost[name], relabelled[name] = [], [], []
            for unit in layer.units:
                before = old_units.get(unit.unit)
                was = before is not None and before.interpretable
                if unit.interpretable and not was:
                    gained[name].append(unit.unit)
                elif was and not unit.interpretable:
                    lost[name].append(unit.unit)
                elif was and unit.interpretable and before.label != unit.label:  # type: ignore[union-attr]
                    relabelled[name].append((unit.unit, before.label, unit.label))  # type: ignore[union-attr]
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
            table = Table(
                title=(
                    f"{name}: {layer.num_interpretable}/{layer.num_units} interpretable units "
                    f"({counts})"
                ),
                title_justify="left",
            )
            for col in ("unit", "concept", "category", "IoU", "IQR", "threshold", "chance IoU"):
                table.add_column(col, justify="right" if col not in ("concept", "category") else "left")
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
                    style=style,
                )
            parts.append(table)
        return Group(*parts)

    def print_summary(self, top: int = 10) -> None:
        """Print :meth:`summary` to the console."""
        from rich.console import Console

        Console().print(self.summary(top))

    def markdown_table(self, layer: str, top: int = 20) -> str:
        """The top units of ``layer`` as a Markdown table (TensorBoard's text plugin renders it)."""
        rows = [
            "| unit | concept | category | IoU | IQR | threshold | chance IoU |",
            "|---:|:---|:---|---:|---:|---:|---:|",
        ]
        for u in self.layers[layer].top_units(top):
            mark = "" if u.interpretable else " (not interpretable)"
            rows.append(
                f"| {u.unit} | {u.label}{mark} | {u.category} | {u.iou:.3f} | {u.iou_iqr:.3f} "
                f"| {u.level:.3g} | {_fmt(u.chance_iou)} |"
            )
        return "\n".join(rows)

    def save_report(self, directory: str | Path, **kwargs: Any) -> Path:
        """Write the static HTML report (see :mod:`lightning_dissect.report`); returns its path."""
        from lightning_dissect.report import write_report

        return write_report(self, directory, **kwargs)
