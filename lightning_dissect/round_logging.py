"""What a dissection round writes to loggers: scalars, tables, pictures, the emergence layout.

:class:`RoundLogger` holds the tag prefix and the pictures' palette. The callback uses it during
training; the command line uses it to write the same tags for rounds dissected from checkpoints.
Tags are documented in ``docs/callback.md``.
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from lightning_dissect.result import DissectionResult, LayerDissection, UnitDissection
from lightning_dissect.visualize import (
    IOU_SCALE_MAX,
    diagonal_order,
    image_strip,
    labelled_heatmap,
    legend_image,
    text_image,
)

__all__ = [
    "RoundLogger",
    "round_entry",
    "segmenter_palette",
    "units_by_round_image",
    "units_by_round_concepts",
    "iou_heatmap_image",
    "concept_colour",
]

_NO_UNITS = "no unit has an iou above\nits chance iou this round"

# custom-scalars layouts per SummaryWriter: several loggers (named callbacks) share one writer,
# and TensorBoard shows the latest layout, so each writes the union
_LAYOUTS: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def round_entry(result: DissectionResult, step: int, epoch: int) -> dict[str, Any]:
    """The compact record of one round kept in the callback's history (plain values only).

    Examples:
        >>> from lightning_dissect.result import UnitDissection
        >>> from lightning_dissect.segmenters import ConceptVocabulary
        >>> vocab = ConceptVocabulary(("unlabeled", "sky"), ("none", "material"))
        >>> unit = UnitDissection(0, "sky", 1, "material", 0.5, 0.2, 1.0, True, 0.01)
        >>> layer = LayerDissection("conv", [unit], torch.tensor([[0.0, 0.5]]))
        >>> round_entry(DissectionResult({"conv": layer}, vocab), 10, 0)["layers"]["conv"]["labels"]
        ['sky']
    """
    layers = {}
    for name, layer in result.layers.items():
        layers[name] = {
            "labels": [u.label if u.interpretable else "" for u in layer.units],
            "iou": [round(u.iou, 5) for u in layer.units],
            "num_interpretable": layer.num_interpretable,
        }
    return {"global_step": int(step), "epoch": int(epoch), "layers": layers}


def concept_colour(name: str, palette: Mapping[str, Sequence[int]] | None = None) -> Tensor:
    """A stable RGB colour (uint8) for a concept name; from ``palette`` when it has one."""
    if palette and name in palette:
        return torch.tensor(list(palette[name]), dtype=torch.uint8)
    digest = hashlib.md5(name.encode()).digest()
    return torch.tensor([64 + digest[0] % 192, 64 + digest[1] % 192, 64 + digest[2] % 192], dtype=torch.uint8)


def segmenter_palette(segmenter: Any) -> dict[str, list[int]] | None:
    """Concept colours of a segmenter that has them (the scene world's), else ``None``."""
    world = getattr(segmenter, "world", None)
    palette = getattr(world, "palette", None)
    vocabulary = getattr(segmenter, "vocabulary", None)
    if palette is None or vocabulary is None:
        return None
    rgb = ((palette.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return {name: rgb[i].tolist() for i, name in enumerate(vocabulary.names)}


def units_by_round_concepts(entries: Sequence[Mapping[str, Any]], layer: str) -> list[str]:
    """The concepts that label a unit of ``layer`` in any of the rounds ``entries``, by name.

    Examples:
        >>> entries = [{"layers": {"l": {"labels": ["sky", ""]}}}, {"layers": {"l": {"labels": ["", "tree"]}}}]
        >>> units_by_round_concepts(entries, "l")
        ['sky', 'tree']
    """
    return sorted({label for e in entries if layer in e["layers"] for label in e["layers"][layer]["labels"] if label})


def units_by_round_image(
    entries: Sequence[Mapping[str, Any]],
    layer: str,
    palette: Mapping[str, Sequence[int]] | None = None,
    cell: int = 6,
    legend: bool = True,
) -> Tensor:
    """Units (rows) × rounds (columns), each cell coloured by the unit's label (dark: none).

    Rows are ``cell`` pixels tall; columns are wider while there are few rounds. The map is the
    picture's top-left corner; with ``legend``, a legend of the concepts that occur (colour swatch
    and name, :func:`units_by_round_concepts`) is drawn to its right.
    """
    columns = [e["layers"][layer]["labels"] for e in entries if layer in e["layers"]]
    units = max(len(c) for c in columns)
    img = torch.full((3, units, len(columns)), 40, dtype=torch.uint8)
    for j, labels in enumerate(columns):
        for i, label in enumerate(labels):
            if label:
                img[:, i, j] = concept_colour(label, palette)
    width = max(cell, min(4 * cell, 240 // max(1, len(columns))))  # wide columns for few rounds
    grid = img.repeat_interleave(cell, 1).repeat_interleave(width, 2)
    if not legend:
        return grid
    items = [(name, concept_colour(name, palette).tolist()) for name in units_by_round_concepts(entries, layer)]
    key = legend_image(items, title="concepts (dark: none)", max_height=max(grid.shape[1], 120))
    height = max(grid.shape[1], key.shape[1])
    out = torch.full((3, height, grid.shape[2] + 8 + key.shape[2]), 255, dtype=torch.uint8)
    out[:, : grid.shape[1], : grid.shape[2]] = grid
    out[:, : key.shape[1], grid.shape[2] + 8 :] = key
    return out


def iou_heatmap_image(
    layer: LayerDissection,
    names: Sequence[str],
    units: Sequence[UnitDissection],
    max_concepts: int = 16,
    vmax: float = IOU_SCALE_MAX,
) -> Tensor | None:
    """The labelled IoU heatmap of ``units`` (rows) × concepts (columns), or ``None`` without units.

    Columns: the labels of ``units``, then other concepts that label an interpretable unit of the
    layer, at most ``max_concepts``; rows and columns in
    :func:`~lightning_dissect.visualize.diagonal_order`, so the outlined label cells run down a
    diagonal. Rows are named ``unit <n>`` (grey: not interpretable); the colour scale is fixed,
    ``0 .. vmax``.
    """
    if not units:
        return None
    index = {u.unit: i for i, u in enumerate(layer.units)}
    iou = layer.iou.float()
    chosen = iou[torch.tensor([index[u.unit] for u in units])]
    candidates = {u.concept_index for u in layer.units if u.interpretable}
    rows, cols = diagonal_order(list(units), chosen, candidates, max(max_concepts, 1))
    values = iou[torch.tensor([index[u.unit] for u in rows])][:, cols]
    position = {c: j for j, c in enumerate(cols)}
    marks = [(i, position[u.concept_index]) for i, u in enumerate(rows) if u.concept_index in position]
    return labelled_heatmap(
        values,
        [f"unit {u.unit}" for u in rows],
        [names[c] for c in cols],
        vmax=vmax,
        marks=marks,
        row_colours=[(29, 35, 48) if u.interpretable else (140, 146, 158) for u in rows],
    )


def _strip_grid(result: DissectionResult, layer: str, units: Sequence[int]) -> Tensor | None:
    strips = result.unit_images.get(layer, {})
    rows = []
    for u in units:
        if u not in strips:
            continue
        images = strips[u]
        factor = max(1, 96 // int(images.shape[-2]))  # small images are enlarged (nearest)
        if factor > 1:
            images = images.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
        rows.append(image_strip(list(images)))
    if not rows:
        return None
    width = max(r.shape[2] for r in rows)
    gap = torch.full((3, 2, width), 255, dtype=torch.uint8)
    parts: list[Tensor] = []
    for i, row in enumerate(rows):
        if i:
            parts.append(gap)
        if row.shape[2] < width:
            pad = torch.full((3, row.shape[1], width - row.shape[2]), 255, dtype=torch.uint8)
            row = torch.cat([row, pad], 2)
        parts.append(row)
    return torch.cat(parts, 1)


class RoundLogger:
    """Writes dissection rounds under one tag prefix (``dissection`` or ``dissection-<name>``).

    Args:
        name: Distinguishes several callbacks' tags (``None``: ``dissection/...``).
        categories: Concept categories to count per round (``"none"`` is left out).
        palette: Concept colours for the units-by-round picture.
        num_visualized_units: Units shown per layer in tables, strips and heatmaps.

    Examples:
        >>> RoundLogger(name="ema").tag("layer2", "interpretable_units")
        'dissection-ema/layer2/interpretable_units'
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        categories: Sequence[str] = (),
        palette: Mapping[str, Sequence[int]] | None = None,
        num_visualized_units: int = 8,
    ) -> None:
        self.name = name
        self.categories = sorted({c for c in categories if c != "none"})
        self.palette = palette
        self.num_visualized_units = num_visualized_units

    @property
    def prefix(self) -> str:
        """``dissection`` or ``dissection-<name>``: the first part of every tag and the round folder."""
        return "dissection" if self.name is None else f"dissection-{self.name}"

    def tag(self, layer: str, *parts: str) -> str:
        """The tag of one value of one layer."""
        return "/".join([self.prefix, layer, *parts])

    def scalars(
        self,
        result: DissectionResult,
        previous: Mapping[str, Any] | None = None,
        ablations: Mapping[str, Sequence[Any]] | None = None,
    ) -> dict[str, float]:
        """Scalars of every layer at one round (every logger gets these)."""
        out: dict[str, float] = {}
        for name, layer in result.layers.items():
            out.update(self._layer_scalars(name, layer, previous, (ablations or {}).get(name, [])))
        return out

    def _layer_scalars(
        self, name: str, layer: LayerDissection, previous: Mapping[str, Any] | None, ablations: Sequence[Any]
    ) -> dict[str, float]:
        tag = self.tag
        out: dict[str, float] = {
            tag(name, "interpretable_units"): float(layer.num_interpretable),
            tag(name, "mean_best_iou"): float(layer.mean_best_iou),
            tag(name, "concepts_covered"): float(layer.num_concepts_covered),
        }
        counts = layer.category_counts()
        for category in self.categories:
            out[tag(name, "interpretable", category)] = float(counts.get(category, 0))
        for concept, count in layer.concept_counts().items():
            out[tag(name, "units_per_concept", concept)] = float(count)
        if previous is not None and name in previous["layers"]:
            old_labels = previous["layers"][name]["labels"]
            new_labels = [u.label if u.interpretable else "" for u in layer.units]
            gained = sum(1 for o, n in zip(old_labels, new_labels) if not o and n)
            lost = sum(1 for o, n in zip(old_labels, new_labels) if o and not n)
            relabelled = sum(1 for o, n in zip(old_labels, new_labels) if o and n and o != n)
            # concepts that lost all their units this round drop to zero explicitly
            for concept in set(old_labels) - set(new_labels) - {""}:
                out[tag(name, "units_per_concept", concept)] = 0.0
            out[tag(name, "churn", "gained")] = float(gained)
            out[tag(name, "churn", "lost")] = float(lost)
            out[tag(name, "churn", "relabelled")] = float(relabelled)
        for record in ablations:
            for field in ("drop", "relative_drop", "control_drop", "control_relative_drop", "baseline"):
                if hasattr(record, field):
                    out[tag(name, "ablation", record.concept, field)] = float(getattr(record, field))
        return out

    def write_layout(self, writer: Any, layers: Sequence[str]) -> None:
        """The custom-scalars emergence layout of ``layers`` (merged with other loggers' on ``writer``)."""
        layout = _LAYOUTS.setdefault(writer, {})
        tag = self.tag
        layout.update({
            f"{self.prefix}/{name} emergence": {
                "units per concept": ["Multiline", [tag(name, "units_per_concept", ".*")]],
                "interpretable units per category": ["Multiline", [tag(name, "interpretable", ".*")]],
                "label churn": ["Multiline", [tag(name, "churn", ".*")]],
                "ablation: relative drop": ["Multiline", [tag(name, "ablation", ".*", "relative_drop")]],
            }
            for name in layers
        })
        writer.add_custom_scalars(layout)

    def log_tensorboard(
        self,
        writer: Any,
        result: DissectionResult,
        step: int,
        *,
        history: Sequence[Mapping[str, Any]] = (),
        ablations: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        """Tables, histograms and pictures of one round (TensorBoard only).

        ``history`` holds the :func:`round_entry` records of the earlier rounds; the current one
        is appended for the units-by-round picture.
        """
        tag = self.tag
        ablations = ablations or {}
        entries = [*history, round_entry(result, step, 0)]
        for name, layer in result.layers.items():
            # one choice of units for the table, the strips and the heatmap (row i of the table is
            # row i of the strips): interpretable first, best first, none at or below chance
            shown = layer.top_units(self.num_visualized_units or 20)
            table = result.markdown_table(name, top=self.num_visualized_units or 20)
            writer.add_text(tag(name, "top_units"), table, step)
            writer.add_histogram(tag(name, "best_iou"), torch.tensor([u.iou for u in layer.units]), step)
            grid = _strip_grid(result, name, [u.unit for u in shown])
            if grid is None and not shown and self.num_visualized_units:
                grid = text_image(_NO_UNITS)  # the tag stays, and says why it is empty this round
            if grid is not None:
                writer.add_image(tag(name, "unit_strips"), grid, step, dataformats="CHW")
            picture = iou_heatmap_image(layer, result.vocabulary.names, shown)
            writer.add_image(tag(name, "iou_heatmap"), picture if picture is not None else text_image(_NO_UNITS),
                             step, dataformats="CHW")
            writer.add_image(
                tag(name, "units_by_round"), units_by_round_image(entries, name, self.palette), step, dataformats="CHW"
            )
            records = ablations.get(name, [])
            if records:
                writer.add_text(tag(name, "ablation"), _ablation_table(records), step)
        writer.flush()


def _ablation_table(records: Sequence[Any]) -> str:
    rows = [
        "| concept | units | baseline | ablated | drop | relative drop | control drop |",
        "|:---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        rows.append(
            f"| {r.concept} | {len(r.units)} | {r.baseline:.4f} | {r.ablated:.4f} | "
            f"{r.drop:.4f} | {r.relative_drop:.3f} | {r.control_drop:.4f} |"
        )
    return "\n".join(rows)
