"""A round's causal unit sets for loggers: curves, α-ranked units, and how the set emerges.

The callback optimises α for named concepts every few rounds
(:func:`~lightning_dissect.interventions.causal_units`); this module turns those results into
scalars, tables, α histograms and TensorBoard custom-scalars charts under the round's prefix, next
to the IoU emergence charts of the same layer:

* ``<prefix>/<layer>/causal/<concept>/left/{alpha,iou,random}/n<n>`` — the concept's fraction
  left after ablating the top-``n`` units by α, by IoU and ``n`` random units (1 = unchanged);
* ``<prefix>/<layer>/causal/<concept>/inserted/{alpha,iou,random}/n<n>`` — after inserting them;
* ``<prefix>/<layer>/causal/<concept>/top_overlap`` — the share of the top ``k`` units by α that
  were also in the top ``k`` at the previous causal round (the set forming and settling: 1 = the
  same set); ``k = min(8, units)``;
* ``<prefix>/<layer>/causal/<concept>/alpha_mass`` — ``Σα``, the size of the learned set;
* a table ``<prefix>/<layer>/causal/<concept>`` (per ``n``: the units and the fractions) and a
  histogram ``<prefix>/<layer>/causal/<concept>/alpha``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable

from lightning_dissect.loggers.content import RoundContent, Table

if TYPE_CHECKING:  # annotations only
    from lightning_dissect.interventions.causal_result import CausalUnits

__all__ = ["TOP_K", "causal_entry", "add_causal_content", "causal_layout"]

TOP_K = 8
"""Units compared between rounds for ``top_overlap``."""

_RANKINGS = ("alpha", "iou", "random")


def causal_entry(results: Sequence[CausalUnits]) -> dict[str, dict[str, Any]]:
    """The compact record of a round's causal sets kept in the history (plain values only).

    ``concept -> {"layer", "top" (the top ``TOP_K`` units by α), "alpha" (rounded, unit order)}``.
    """
    return {
        r.concept: {
            "layer": r.layer,
            "top": r.top_units(min(TOP_K, len(r.alpha))),
            "alpha": [round(float(a), 4) for a in r.alpha],
        }
        for r in results
    }


def _previous_top(history: Sequence[Mapping[str, Any]], concept: str, layer: str) -> list[int] | None:
    for entry in reversed(history):
        record = (entry.get("causal") or {}).get(concept)
        if record is not None and record.get("layer") == layer:
            return [int(u) for u in record["top"]]
    return None


def add_causal_content(
    content: RoundContent,
    results: Sequence[CausalUnits],
    tag: Callable[..., str],
    history: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Add the scalars, tables and α histograms of ``results`` to ``content`` (see the module docs)."""
    for r in results:
        base = ("causal", r.concept)
        for kind, group in (("ablated", "left"), ("inserted", "inserted")):
            for ranking in _RANKINGS:
                for n, value in zip(r.sizes, r.curve(kind, ranking)):
                    content.scalars[tag(r.layer, *base, group, ranking, f"n{n}")] = float(value)
        content.scalars[tag(r.layer, *base, "alpha_mass")] = float(r.alpha.sum())
        previous = _previous_top(history, r.concept, r.layer)
        top = r.top_units(min(TOP_K, len(r.alpha)))
        if previous is not None and top:
            content.scalars[tag(r.layer, *base, "top_overlap")] = len(set(top) & set(previous)) / len(top)
        content.histograms[tag(r.layer, *base, "alpha")] = r.alpha.detach().float().cpu().clone()
        content.tables[tag(r.layer, *base)] = causal_table(r)


def causal_table(result: CausalUnits) -> Table:
    """Per ``n``: the top units by α and by IoU, the fractions left and after insertion (relative)."""
    columns = ["n", "top units by α", "top units by IoU", "left (α)", "left (IoU)", "left (random)",
               "inserted (α)", "inserted (IoU)", "inserted (random)"]  # fmt: skip
    rows = []
    left = {k: result.curve("ablated", k) for k in _RANKINGS}
    inserted = {k: result.curve("inserted", k) for k in _RANKINGS}
    for i, c in enumerate(result.comparison):
        rows.append([c.n, " ".join(map(str, c.units_alpha)), " ".join(map(str, c.units_iou)),
                     *(left[k][i] for k in _RANKINGS), *(inserted[k][i] for k in _RANKINGS)])  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|" + "---:|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(v if isinstance(v, str) else f"{v:.3g}" for v in row) + " |")
    lines.append("\nα of the top units: " + ", ".join(
        f"{u}: {float(result.alpha[u]):.2f}" for u in result.top_units(min(TOP_K, len(result.alpha)))
    ))  # fmt: skip
    return Table(columns, rows, "\n".join(lines))


def causal_layout(tag: Callable[..., str], layer: str, concepts: Sequence[str]) -> dict[str, list[Any]]:
    """Custom-scalars charts of the causal sets of ``layer`` (beside its IoU emergence charts)."""
    charts: dict[str, list[Any]] = {}
    for concept in concepts:
        charts[f"causal {concept}: left after ablating top-n (α vs IoU vs random)"] = [
            "Multiline", [tag(layer, "causal", concept, "left", ".*")]
        ]
        charts[f"causal {concept}: top-{TOP_K} α set overlap with the previous round"] = [
            "Multiline", [tag(layer, "causal", concept, "top_overlap")]
        ]
    return charts
