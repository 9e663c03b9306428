"""What :class:`~lightning_dissect.callback.DissectionCallback` writes to loggers.

Kept apart from the scheduling logic so that the tags are in one place (and documented in
``docs/callback.md``).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import Tensor

from lightning_dissect.result import DissectionResult, LayerDissection
from lightning_dissect.visualize import heatmap, image_strip

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from lightning_dissect.callback import DissectionCallback

__all__ = [
    "layer_scalars",
    "tensorboard_writer",
    "log_directory",
    "log_tensorboard",
    "units_by_round_image",
    "concept_colour",
]


def concept_colour(name: str, palette: Mapping[str, Sequence[int]] | None = None) -> Tensor:
    """A stable RGB colour (uint8) for a concept name; from ``palette`` when it has one."""
    if palette and name in palette:
        return torch.tensor(list(palette[name]), dtype=torch.uint8)
    digest = hashlib.md5(name.encode()).digest()
    return torch.tensor([64 + digest[0] % 192, 64 + digest[1] % 192, 64 + digest[2] % 192], dtype=torch.uint8)


def _segmenter_palette(callback: DissectionCallback) -> dict[str, list[int]] | None:
    world = getattr(callback.segmenter, "world", None)
    palette = getattr(world, "palette", None)
    vocabulary = getattr(callback.segmenter, "vocabulary", None)
    if palette is None or vocabulary is None:
        return None
    rgb = ((palette.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return {name: rgb[i].tolist() for i, name in enumerate(vocabulary.names)}


def layer_scalars(
    callback: DissectionCallback,
    name: str,
    layer: LayerDissection,
    previous: Mapping[str, Any] | None,
    ablations: Sequence[Any],
) -> dict[str, float]:
    """Scalars of one layer at one round (every logger gets these)."""
    tag = callback._tag
    out: dict[str, float] = {
        tag(name, "interpretable_units"): float(layer.num_interpretable),
        tag(name, "mean_best_iou"): float(layer.mean_best_iou),
        tag(name, "concepts_covered"): float(layer.num_concepts_covered),
    }
    categories = sorted({c for c in callback.segmenter.vocabulary.categories if c != "none"})  # type: ignore[union-attr]
    counts = layer.category_counts()
    for category in categories:
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
        concept = record.concept
        for field in ("drop", "relative_drop", "control_drop", "control_relative_drop", "baseline"):
            if hasattr(record, field):
                out[tag(name, "ablation", concept, field)] = float(getattr(record, field))
    return out


def tensorboard_writer(trainer: pl.Trainer) -> Any:
    """The ``SummaryWriter`` of the first TensorBoard logger, or ``None``."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def log_directory(trainer: pl.Trainer) -> str | None:
    """Where round JSON files go: the first logger's ``log_dir``, else the trainer's root dir."""
    for logger in trainer.loggers:
        log_dir = getattr(logger, "log_dir", None)
        if log_dir:
            return str(log_dir)
    return trainer.default_root_dir


def units_by_round_image(
    entries: Sequence[Mapping[str, Any]],
    layer: str,
    palette: Mapping[str, Sequence[int]] | None = None,
    cell: int = 6,
) -> Tensor:
    """Units (rows) × rounds (columns), each cell coloured by the unit's label (dark: none).

    Rows are ``cell`` pixels tall; columns are wider while there are few rounds.
    """
    columns = [e["layers"][layer]["labels"] for e in entries if layer in e["layers"]]
    units = max(len(c) for c in columns)
    img = torch.full((3, units, len(columns)), 40, dtype=torch.uint8)
    for j, labels in enumerate(columns):
        for i, label in enumerate(labels):
            if label:
                img[:, i, j] = concept_colour(label, palette)
    width = max(cell, min(4 * cell, 240 // max(1, len(columns))))  # wide columns for few rounds
    return img.repeat_interleave(cell, 1).repeat_interleave(width, 2)


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


def log_tensorboard(
    callback: DissectionCallback,
    writer: Any,
    result: DissectionResult,
    ablations: Mapping[str, Sequence[Any]],
    step: int,
) -> None:
    """Tables, histograms, images and the emergence layout (TensorBoard only)."""
    tag = callback._tag
    palette = _segmenter_palette(callback)
    if not callback._layout_written:
        # Several callbacks share one writer: TensorBoard shows the latest layout, so write the
        # union of every callback's categories.
        layout = getattr(writer, "_lightning_dissect_layout", {})
        layout.update({
            f"{tag(name, '')[:-1]} emergence": {
                "units per concept": ["Multiline", [tag(name, "units_per_concept", ".*")]],
                "interpretable units per category": ["Multiline", [tag(name, "interpretable", ".*")]],
                "label churn": ["Multiline", [tag(name, "churn", ".*")]],
                "ablation: relative drop": ["Multiline", [tag(name, "ablation", ".*", "relative_drop")]],
            }
            for name in result.layers
        })
        writer._lightning_dissect_layout = layout
        writer.add_custom_scalars(layout)
        callback._layout_written = True
    for name, layer in result.layers.items():
        shown = [u.unit for u in layer.top_units(callback.config.num_visualized_units or 20)]
        table = result.markdown_table(name, top=max(len(shown), 1))
        writer.add_text(tag(name, "top_units"), table, step)
        writer.add_histogram(
            tag(name, "best_iou"), torch.tensor([u.iou for u in layer.units]), step
        )
        grid = _strip_grid(result, name, shown)
        if grid is not None:
            writer.add_image(tag(name, "unit_strips"), grid, step, dataformats="CHW")
        concepts = sorted({u.concept_index for u in layer.top_units(len(shown) or 20)})
        if concepts:
            top = torch.tensor(shown or [u.unit for u in layer.top_units(20)])
            writer.add_image(
                tag(name, "iou_heatmap"),
                heatmap(layer.iou[top][:, concepts], cell=8),
                step,
                dataformats="CHW",
            )
        entries = [*callback.history, callback._history_entry(result, step, 0, {})]
        writer.add_image(
            tag(name, "units_by_round"),
            units_by_round_image(entries, name, palette),
            step,
            dataformats="CHW",
        )
        records = ablations.get(name, [])
        if records:
            rows = [
                "| concept | units | baseline | ablated | drop | relative drop | control drop |",
                "|:---|---:|---:|---:|---:|---:|---:|",
            ]
            for r in records:
                rows.append(
                    f"| {r.concept} | {len(r.units)} | {r.baseline:.4f} | {r.ablated:.4f} | "
                    f"{r.drop:.4f} | {r.relative_drop:.3f} | {r.control_drop:.4f} |"
                )
            writer.add_text(tag(name, "ablation"), "\n".join(rows), step)
    writer.flush()
