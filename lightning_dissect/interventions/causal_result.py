"""What :func:`~lightning_dissect.interventions.causal_units` returns: α per unit and the comparison."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_dissect._utils.io import json_text

__all__ = ["CausalComparison", "CausalUnits", "RANKINGS"]

RANKINGS = ("alpha", "iou", "random")
"""The three unit sets compared at every ``n``: top by α, top by IoU, ``n`` random units."""


def _relative(value: float, baseline: float) -> float:
    return value / baseline if baseline > 0 else 0.0


@dataclass
class CausalComparison:
    """The effect of ``n`` units chosen three ways (fractions of all pixels, as the effect records).

    ``ablated_*``: the concept's pixel fraction with the units switched off (``v = 0``);
    ``inserted_*``: with the units set to the insertion value everywhere. ``*_alpha``: the top
    ``n`` units by α; ``*_iou``: the top ``n`` by IoU; ``*_random``: ``n`` random units (a fixed
    random order of all units, first ``n``: the sets are nested, like the α and IoU sets).

    Attributes:
        n: Units in each set.
        units_alpha: The top ``n`` units by α (in rank order).
        units_iou: The top ``n`` units by IoU.
        units_random: The random units.
        ablated_alpha: Fraction left after ablating ``units_alpha``.
        ablated_iou: Fraction left after ablating ``units_iou``.
        ablated_random: Fraction left after ablating ``units_random``.
        inserted_alpha: Fraction after inserting ``units_alpha``.
        inserted_iou: Fraction after inserting ``units_iou``.
        inserted_random: Fraction after inserting ``units_random``.
    """

    n: int
    units_alpha: list[int]
    units_iou: list[int]
    units_random: list[int]
    ablated_alpha: float
    ablated_iou: float
    ablated_random: float
    inserted_alpha: float
    inserted_iou: float
    inserted_random: float


@dataclass
class CausalUnits:
    """Causal units of one concept at one layer: learned α, rankings and their measured effects.

    Attributes:
        layer: The layer whose units were optimised.
        concept: The concept's name.
        concept_index: Its index in the segmenter's vocabulary.
        alpha: ``(U,)`` float, the learned coefficient of every unit, in unit order, in ``[0, 1]``.
        ranking: ``(U,)`` long, the units by decreasing α (ties: the stronger gradient of the
            objective at the last step first, then the lower unit).
        iou: ``(U,)`` float, the IoU of every unit with the concept (the baseline ranking).
        gradient: ``(U,)`` float, the gradient of the objective (without the penalty) at the
            final α: negative where more α would remove/create more of the concept.
        insertion_value: ``(U,)`` float, the value inserted: each unit's mean activation where
            the concept is present.
        baseline: The concept's unedited pixel fraction.
        comparison: One :class:`CausalComparison` per ``n``.
        loss: Per optimisation step ``[ablation, insertion, penalty]`` at the α of that step.
        settings: The settings of the optimisation (``steps``, ``lr``, ``l2``, ``init``,
            ``batch_size``, ``sizes``).
        seed: Seed of the random-units draw.
        num_images: Sample images (over all processes).
        num_images_with_concept: Those in which the concept is present.
        passes_per_image: Generator forward+backward passes per sample image of the optimisation
            (two per step: one ablated, one inserted).
        examples: Pictures (not in the JSON): ``"before"``, ``"ablated"`` and ``"inserted"`` →
            ``(k, C, H, W)`` generated images of the samples that show most of the concept,
            unedited, with ``example_units`` switched off and with them switched on.
        example_units: The top units by α edited in ``examples``.
        unit_images: Optional unit strips (not in the JSON): ``unit -> uint8 (k, 3, H, W)``, the
            top images of some top units by α with their masks (e.g. from
            :func:`~lightning_dissect.dissection.strips.render_unit_images`); the report shows them.
    """

    layer: str
    concept: str
    concept_index: int
    alpha: Tensor
    ranking: Tensor
    iou: Tensor
    gradient: Tensor
    insertion_value: Tensor
    baseline: float
    comparison: list[CausalComparison] = field(default_factory=list)
    loss: list[list[float]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    num_images: int = 0
    num_images_with_concept: int = 0
    passes_per_image: int = 0
    examples: dict[str, Tensor] = field(default_factory=dict, repr=False)
    example_units: list[int] = field(default_factory=list)
    unit_images: dict[int, Tensor] = field(default_factory=dict, repr=False)

    @property
    def sizes(self) -> list[int]:
        """The ``n`` of every comparison."""
        return [c.n for c in self.comparison]

    def top_units(self, n: int) -> list[int]:
        """The ``n`` units with the highest α, best first."""
        return [int(u) for u in self.ranking[:n]]

    def curve(self, kind: str = "ablated", ranking: str = "alpha", relative: bool = True) -> list[float]:
        """The fractions of one ranking over the sizes (``kind``: ``"ablated"`` or ``"inserted"``).

        With ``relative``, fractions are divided by the baseline (1.0 = unchanged; 0 when the
        baseline is 0).
        """
        if kind not in ("ablated", "inserted") or ranking not in RANKINGS:
            raise ValueError(f"`kind` must be 'ablated' or 'inserted' and `ranking` one of {RANKINGS}")
        values = [float(getattr(c, f"{kind}_{ranking}")) for c in self.comparison]
        return [_relative(v, self.baseline) for v in values] if relative else values

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (JSON-ready); ``alpha`` holds one value per unit, in unit order."""
        return {
            "layer": self.layer,
            "concept": self.concept,
            "concept_index": self.concept_index,
            "alpha": [float(a) for a in self.alpha],
            "ranking": [int(u) for u in self.ranking],
            "iou": [_finite(v) for v in self.iou],
            "gradient": [float(g) for g in self.gradient],
            "insertion_value": [float(v) for v in self.insertion_value],
            "baseline": self.baseline,
            "comparison": [vars(c).copy() for c in self.comparison],
            "loss": [list(map(float, row)) for row in self.loss],
            "settings": dict(self.settings),
            "seed": self.seed,
            "num_images": self.num_images,
            "num_images_with_concept": self.num_images_with_concept,
            "passes_per_image": self.passes_per_image,
            "example_units": list(self.example_units),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CausalUnits:
        """Inverse of :meth:`to_dict`."""
        return cls(
            layer=str(data["layer"]),
            concept=str(data["concept"]),
            concept_index=int(data["concept_index"]),
            alpha=torch.tensor(data["alpha"], dtype=torch.float32),
            ranking=torch.tensor(data["ranking"], dtype=torch.long),
            iou=torch.tensor([math.nan if v is None else v for v in data["iou"]], dtype=torch.float32),
            gradient=torch.tensor(data["gradient"], dtype=torch.float32),
            insertion_value=torch.tensor(data["insertion_value"], dtype=torch.float32),
            baseline=float(data["baseline"]),
            comparison=[CausalComparison(**c) for c in data["comparison"]],
            loss=[list(row) for row in data.get("loss", [])],
            settings=dict(data.get("settings", {})),
            seed=int(data.get("seed", 0)),
            num_images=int(data.get("num_images", 0)),
            num_images_with_concept=int(data.get("num_images_with_concept", 0)),
            passes_per_image=int(data.get("passes_per_image", 0)),
            example_units=[int(u) for u in data.get("example_units", [])],
        )

    def to_json(self, path: str | Path | None = None, *, indent: int | None = 1) -> str:
        """Serialise :meth:`to_dict` as JSON; also write it to ``path`` when given (atomically, parents created).

        Examples:
            >>> units = CausalUnits("conv", "tree", 3, alpha=torch.tensor([0.5, 0.0, 1.0]),
            ...                     ranking=torch.tensor([2, 0, 1]), iou=torch.zeros(3), gradient=torch.zeros(3),
            ...                     insertion_value=torch.ones(3), baseline=0.3)
            >>> CausalUnits.from_json(units.to_json()).ranking.tolist()
            [2, 0, 1]
        """
        return json_text(self.to_dict(), path, indent=indent)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> CausalUnits:
        """Load from JSON text (starting with ``{``) or the path of a file written by :meth:`to_json`."""
        text = str(text_or_path)
        if not (isinstance(text_or_path, str) and text.lstrip().startswith("{")):
            text = Path(text_or_path).read_text(encoding="utf-8")
        return cls.from_dict(json.loads(text))

    def save_json(self, path: str | Path) -> Path:
        """Deprecated alias of ``to_json(path)``; returns the path."""
        warnings.warn("`CausalUnits.save_json(path)` is deprecated; use `to_json(path)`", DeprecationWarning,
                      stacklevel=2)
        self.to_json(path, indent=1)
        return Path(path)

    @classmethod
    def load_json(cls, path: str | Path) -> CausalUnits:
        """Deprecated alias of :meth:`from_json`."""
        warnings.warn("`CausalUnits.load_json(path)` is deprecated; use `from_json(path)`", DeprecationWarning,
                      stacklevel=2)
        return cls.from_json(path)

    def table(self) -> str:
        """A Markdown table: per ``n``, the fraction left after ablation (relative to the baseline)."""
        rows = ["| n | top-n by α | top-n by IoU | n random |", "|---:|---:|---:|---:|"]
        for c in self.comparison:
            cells = [_relative(getattr(c, f"ablated_{r}"), self.baseline) for r in RANKINGS]
            rows.append(f"| {c.n} | " + " | ".join(f"{v:.1%}" for v in cells) + " |")
        return "\n".join(rows)


def _finite(value: Any) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None
