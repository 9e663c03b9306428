"""``lightning-dissect compare RUN_A RUN_B``: interpretable units per concept of two results side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lightning_dissect.cli._arguments import add_command, add_run_arguments
from lightning_dissect.cli._loading import CLIError

__all__ = [
    "add_compare_command", "run_compare", "load_run", "comparison_table", "comparison_markdown",
    "settings_differences", "COMPARED_SETTINGS",
]

COMPARED_SETTINGS = (
    "num_samples", "threshold_mode", "quantile", "num_levels", "level_selection_samples",
    "iou_threshold", "iqr_threshold", "interpretable", "chance_ratio", "min_excess", "max_p_value",
    "chance_groups", "min_concept_fraction",
)
"""Settings that change the counts: two results that differ in any of them are not comparable."""


def add_compare_command(sub: Any) -> None:
    """Register ``compare`` on the sub-command parsers ``sub``."""
    p = add_command(
        sub, "compare", "interpretable units per concept of two results side by side",
        "Compare two dissection results: per layer, the interpretable units per concept of "
        "RUN_A and RUN_B with totals and deltas (B - A), and the units gained, lost and "
        "relabelled going from A to B. RUN is a dissect.json, a round JSON, or a folder: "
        "its dissect.json, else its rounds (a run's log folder), of which the last is used. "
        "A layer found in one result only is shown as absent on the other side; a warning line "
        "names the settings (samples, threshold mode, levels, interpretability rule, vocabulary) "
        "in which the two results differ, since their counts are then not comparable.",
        show_defaults=False,
    )
    p.add_argument("run_a", metavar="RUN_A", help="the first (older) result")
    p.add_argument("run_b", metavar="RUN_B", help="the second (newer) result")
    p.add_argument("--output", metavar="FILE",
                   help="also write the comparison to FILE: JSON when FILE ends in .json, else Markdown")
    add_run_arguments(p)


def load_run(path: str, argument: str = "RUN") -> Any:
    """A result from a JSON file, a folder's ``dissect.json``, or the last round of a folder's rounds."""
    from lightning_dissect.callbacks.history import load_history
    from lightning_dissect.result import DissectionResult

    source = Path(path)
    if not source.exists():
        raise CLIError(f"{argument}: not found: {path}")
    try:
        if source.is_dir():
            if (source / "dissect.json").is_file():
                return DissectionResult.from_json(source / "dissect.json")
            rounds = load_history(source)
            if not rounds:
                raise CLIError(f"{argument}: {path} holds neither dissect.json nor dissection rounds")
            return rounds[-1]
        return DissectionResult.from_json(source)
    except (ValueError, FileNotFoundError) as err:
        raise CLIError(f"{argument}: {' '.join(str(err).split())}") from err


def settings_differences(a: Any, b: Any) -> list[str]:
    """What differs between the settings (and vocabularies) of two results, one line per setting.

    Settings missing on both sides are not compared; one missing on one side only reads ``–``.
    A result written before the interpretability rule was a setting used the papers' fixed cut.

    Examples:
        >>> from types import SimpleNamespace
        >>> from lightning_dissect import ConceptVocabulary
        >>> vocab = ConceptVocabulary(("unlabeled", "sky"), ("none", "material"))
        >>> a = SimpleNamespace(settings={"num_samples": 512, "interpretable": "paper"}, vocabulary=vocab)
        >>> b = SimpleNamespace(settings={"num_samples": 1000}, vocabulary=vocab)
        >>> settings_differences(a, b)
        ['num_samples: A 512, B 1000']
    """
    out = []
    defaults = {"interpretable": "paper"}
    for key in COMPARED_SETTINGS:
        va = a.settings.get(key, defaults.get(key))
        vb = b.settings.get(key, defaults.get(key))
        if va != vb and not (key in ("num_levels", "iqr_threshold")
                             and a.settings.get("threshold_mode") == b.settings.get("threshold_mode") == "quantile"):
            out.append(f"{key}: A {'–' if va is None else va}, B {'–' if vb is None else vb}")
    if list(a.vocabulary.names) != list(b.vocabulary.names):
        out.append(f"vocabulary: A {a.vocabulary.num_concepts} concepts, B {b.vocabulary.num_concepts} "
                   "concepts" + (" (same number, other names or order)"
                                 if a.vocabulary.num_concepts == b.vocabulary.num_concepts else ""))
    return out


def comparison_table(a: Any, b: Any) -> dict[str, Any]:
    """Per layer: concepts with A's and B's interpretable units and the delta, totals, and churn.

    Churn (units gained, lost and relabelled going from ``a`` to ``b``) comes from
    :meth:`~lightning_dissect.result.DissectionResult.compare`. A layer missing from one result
    has ``None`` (absent, not zero) for that side's counts and for every delta.

    Examples:
        >>> import torch
        >>> from lightning_dissect.result import DissectionResult, LayerDissection, UnitDissection
        >>> from lightning_dissect import ConceptVocabulary
        >>> vocab = ConceptVocabulary(("unlabeled", "sky"), ("none", "material"))
        >>> def run(on):
        ...     u = UnitDissection(0, "sky", 1, "material", 0.5, 0.1, 1.0, on, 0.0)
        ...     return DissectionResult({"l": LayerDissection("l", [u], torch.zeros(1, 2))}, vocab)
        >>> comparison_table(run(False), run(True))["l"]["total"]
        {'a': 0, 'b': 1, 'delta': 1}
    """
    comparison = b.compare(a)
    out: dict[str, Any] = {}
    for name in dict.fromkeys([*a.layers, *b.layers]):
        la, lb = a.layers.get(name), b.layers.get(name)
        ca = la.concept_counts() if la is not None else {}
        cb = lb.concept_counts() if lb is not None else {}
        categories = {u.label: u.category for layer in (la, lb) if layer is not None
                      for u in layer.units if u.interpretable}
        concepts = sorted(categories, key=lambda c: (-cb.get(c, 0), -ca.get(c, 0), c))
        both = la is not None and lb is not None
        rows = [{"concept": c, "category": categories[c],
                 "a": ca.get(c, 0) if la is not None else None, "b": cb.get(c, 0) if lb is not None else None,
                 "delta": cb.get(c, 0) - ca.get(c, 0) if both else None} for c in concepts]
        total_a = la.num_interpretable if la is not None else None
        total_b = lb.num_interpretable if lb is not None else None
        entry: dict[str, Any] = {
            "concepts": rows,
            "total": {"a": total_a, "b": total_b, "delta": total_b - total_a if both else None},  # type: ignore[operator]
            "units": {"a": la.num_units if la is not None else None, "b": lb.num_units if lb is not None else None},
        }
        if la is not None and lb is not None:
            entry["gained"] = comparison.gained[name]
            entry["lost"] = comparison.lost[name]
            entry["relabelled"] = [list(r) for r in comparison.relabelled[name]]
        out[name] = entry
    return out


def _signed(value: int | None) -> str:
    if value is None:
        return "–"
    return f"+{value}" if value > 0 else str(value)


def _count(value: int | None) -> str:
    return "absent" if value is None else str(value)


def comparison_markdown(
    table: dict[str, Any], label_a: str, label_b: str, warnings: list[str] | None = None
) -> str:
    """The :func:`comparison_table` as Markdown (one table per layer), after any ``warnings``.

    ``warnings`` are the :func:`settings_differences`; with any, a warning line says the counts are
    not comparable and lists them.
    """
    lines = [f"A: {label_a}", f"B: {label_b}"]
    if warnings:
        lines.append("")
        lines.append("WARNING: A and B were dissected with different settings, so their counts are not "
                     "comparable: " + "; ".join(warnings))
    for name, entry in table.items():
        ua, ub = entry["units"]["a"], entry["units"]["b"]
        lines += ["", f"## {name}", ""]
        if ua is None or ub is None:
            lines.append(f"(only in {'B' if ua is None else 'A'}: absent from {'A' if ua is None else 'B'}, "
                         "not zero)")
            lines.append("")
        lines += ["| concept | category | A | B | B - A |", "|:---|:---|---:|---:|---:|"]
        for row in entry["concepts"]:
            lines.append(f"| {row['concept']} | {row['category']} | {_count(row['a'])} | {_count(row['b'])} "
                         f"| {_signed(row['delta'])} |")
        t = entry["total"]
        lines.append(f"| **total** | | {_count(t['a'])} | {_count(t['b'])} | {_signed(t['delta'])} |")
        if "gained" in entry:
            lines.append("")
            lines.append(f"units gained {len(entry['gained'])}, lost {len(entry['lost'])}, "
                         f"relabelled {len(entry['relabelled'])} (A -> B)")
    return "\n".join(lines) + "\n"


def run_compare(args: argparse.Namespace) -> int:
    """Run the ``compare`` command (raises :class:`CLIError` on user errors)."""
    from lightning_dissect._utils.io import atomic_write_text

    a = load_run(args.run_a, "RUN_A")
    b = load_run(args.run_b, "RUN_B")
    table = comparison_table(a, b)
    warnings = settings_differences(a, b)
    text = comparison_markdown(table, args.run_a, args.run_b, warnings)
    print(text, end="")
    if args.output:
        target = Path(args.output)
        if target.is_dir():
            raise CLIError(f"--output: {args.output} is a folder; give a file name (.json or .md)")
        if target.suffix.lower() == ".json":
            body = json.dumps({"a": args.run_a, "b": args.run_b, "settings_differ": warnings, "layers": table},
                              indent=1)
        else:
            body = text
        try:
            atomic_write_text(target, body)
        except OSError as err:
            raise CLIError(f"--output: cannot write {args.output}: {err}") from err
        print(f"wrote {target}")
    return 0
