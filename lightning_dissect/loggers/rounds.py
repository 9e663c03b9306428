"""A dissection round's content for loggers: scalars, tables, pictures, the emergence layout.

:class:`RoundLogger` holds the tag prefix and the pictures' palette, and builds a round's
:class:`~lightning_dissect.loggers.content.RoundContent` once; each logger's writer
(:mod:`lightning_dissect.loggers`) then writes that content its own way. The callback uses it
during training; the command line uses it to write the same tags for rounds dissected from
checkpoints. Tags are documented in ``docs/callback.md``; the pictures are drawn by
:mod:`lightning_dissect.visual.round_pictures`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from lightning_dissect.callbacks.history import round_prefix
from lightning_dissect.loggers.causal import add_causal_content, causal_layout
from lightning_dissect.loggers.content import RoundContent, Table
from lightning_dissect.report._ablation_table import ablation_header, ablation_markdown, ablation_values
from lightning_dissect.result import DissectionResult, LayerDissection, label_changes, unit_labels
from lightning_dissect.visual.round_pictures import (
    iou_heatmap_image,
    no_units_image,
    unit_strip,
    unit_strip_grid,
    units_by_round_image,
)

__all__ = ["RoundLogger", "round_entry", "ablation_table"]


def round_entry(result: DissectionResult, step: int, epoch: int) -> dict[str, Any]:
    """The compact record of one round kept in the callback's history (plain values only).

    Examples:
        >>> from lightning_dissect.result import UnitDissection
        >>> from lightning_dissect import ConceptVocabulary
        >>> vocab = ConceptVocabulary(("unlabeled", "sky"), ("none", "material"))
        >>> unit = UnitDissection(0, "sky", 1, "material", 0.5, 0.2, 1.0, True, 0.01)
        >>> layer = LayerDissection("conv", [unit], torch.tensor([[0.0, 0.5]]))
        >>> round_entry(DissectionResult({"conv": layer}, vocab), 10, 0)["layers"]["conv"]["labels"]
        ['sky']
    """
    layers = {}
    for name, layer in result.layers.items():
        layers[name] = {
            "labels": unit_labels(layer),
            "iou": [round(u.iou, 5) for u in layer.units],
            "num_interpretable": layer.num_interpretable,
        }
    return {"global_step": int(step), "epoch": int(epoch), "layers": layers}


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
        return round_prefix(self.name)

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
            new_labels = unit_labels(layer)
            gained, lost, relabelled = (len(units) for units in label_changes(old_labels, new_labels))
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

    def layout(self, layers: Sequence[str]) -> dict[str, dict[str, list[Any]]]:
        """The custom-scalars emergence charts of ``layers`` (TensorBoard's CUSTOM SCALARS tab)."""
        tag = self.tag
        return {
            f"{self.prefix}/{name} emergence": {
                "units per concept": ["Multiline", [tag(name, "units_per_concept", ".*")]],
                "interpretable units per category": ["Multiline", [tag(name, "interpretable", ".*")]],
                "label churn": ["Multiline", [tag(name, "churn", ".*")]],
                # the units' and the random control's relative drops side by side
                "ablation: relative drop, units and random control": [
                    "Multiline", [tag(name, "ablation", ".*relative_drop")]],
            }
            for name in layers
        }

    def content(
        self,
        result: DissectionResult,
        step: int,
        *,
        history: Sequence[Mapping[str, Any]] = (),
        ablations: Mapping[str, Sequence[Any]] | None = None,
        causal: Sequence[Any] = (),
    ) -> RoundContent:
        """Everything one round delivers to loggers, built once.

        ``causal``: the round's causal unit sets (:class:`~lightning_dissect.interventions.CausalUnits`),
        logged as described in :mod:`lightning_dissect.loggers.causal`.

        ``history`` holds the :func:`round_entry` records of the earlier rounds (the last one gives
        the churn); the current round is appended for the units-by-round picture. ``step`` is the
        step every logger files the round under.
        """
        ablations = ablations or {}
        previous = history[-1] if history else None
        tag = self.tag
        top = self.num_visualized_units or 20
        entries = [*history, round_entry(result, step, 0)]
        content = RoundContent(
            self.prefix, int(step), result,
            scalars=self.scalars(result, previous, ablations),
            layout=self.layout(list(result.layers)),
        )
        for name, layer in result.layers.items():
            # one choice of units for the table, the strips and the heatmap (row i of the table is
            # row i of the strips): interpretable first, best first, none at or below chance
            shown = layer.top_units(top)
            columns, rows = result.top_units_table(name, top)
            frames = result.unit_images.get(name, {})
            if rows:
                content.tables[tag(name, "top_units")] = Table(
                    columns, rows, result.markdown_table(name, top=top),
                    images=[unit_strip(frames[u.unit]) if u.unit in frames else None for u in shown],
                )
            else:  # every logger says in words why the table is empty this round
                note = result.no_units_note(name)
                content.tables[tag(name, "top_units")] = Table(["note"], [[note]], note)
            content.histograms[tag(name, "best_iou")] = torch.tensor([u.iou for u in layer.units])
            grid = unit_strip_grid(result, name, [u.unit for u in shown])
            if grid is None and not shown and self.num_visualized_units:
                grid = no_units_image()  # the tag stays, and says why it is empty this round
            if grid is not None:
                content.images[tag(name, "unit_strips")] = grid
            picture = iou_heatmap_image(layer, result.vocabulary.names, shown)
            content.images[tag(name, "iou_heatmap")] = picture if picture is not None else no_units_image()
            content.images[tag(name, "units_by_round")] = units_by_round_image(entries, name, self.palette)
            records = ablations.get(name, [])
            if records:
                content.tables[tag(name, "ablation")] = ablation_table(records)
        if causal:
            add_causal_content(content, causal, tag, history)
            for name in {r.layer for r in causal}:
                charts = causal_layout(tag, name, [r.concept for r in causal if r.layer == name])
                content.layout.setdefault(f"{self.prefix}/{name} emergence", {}).update(charts)
        return content


def ablation_table(records: Sequence[Any]) -> Table:
    """The ablation check's records of one layer as a :class:`~lightning_dissect.loggers.content.Table`.

    Every measure for the chosen units and for the random control side by side, in the same units
    (:data:`~lightning_dissect.report._ablation_table.ABLATION_COLUMNS`); the rows hold the numbers, the
    Markdown the formatted table.
    """
    return Table(ablation_header(), ablation_values(records), ablation_markdown(records))
