"""``emergence.html``: how the units of a run's layers came to mean what they mean, round by round.

:func:`write_emergence_report` turns a series of rounds (``load_history(run)``, or what
``lightning-dissect emergence`` dissected from checkpoints) into one self-contained page (inline
CSS, SVG and PNG data; no network). Per layer:

* units × steps: each unit's label at each step, coloured by concept (legend below);
* interpretable units per concept over the steps (a line per concept);
* churn between consecutive steps: units gained, lost, relabelled
  (:meth:`~lightning_dissect.result.DissectionResult.compare`);
* the first step at which each concept labels an interpretable unit;
* the final step's unit strips (when given).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from html import escape
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from lightning_dissect._utils.io import atomic_write_text, check_writable_output
from lightning_dissect._utils.text import plural
from lightning_dissect.report import layer_slug
from lightning_dissect.report._page import html_page, run_facts, subtitle
from lightning_dissect.visual.colours import concept_colour
from lightning_dissect.visual.visualize import strip_png

if TYPE_CHECKING:
    from lightning_dissect.result import DissectionResult

__all__ = ["write_emergence_report", "concept_hex", "emergence_tables"]

_CSS = """
.grid-legend { display: flex; flex-wrap: wrap; gap: 6px 14px; margin: 8px 0 4px; font-size: 13px; }
.grid-legend span.sw { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
  margin-right: 5px; vertical-align: -1px; border: 1px solid rgba(0,0,0,.15); }
table.data.compact { width: auto; min-width: 420px; }
.final img { image-rendering: pixelated; height: 72px; display: block; border-radius: 3px; }
"""

_SCRIPT = """
(function () {
  var imgs = Array.prototype.slice.call(document.querySelectorAll("img"));
  var status = document.getElementById("emergence-status");
  function done() {
    var loaded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
    status.setAttribute("data-loaded", String(loaded));
    status.setAttribute("data-total", String(imgs.length));
    status.setAttribute("data-charts", String(document.querySelectorAll("svg.emergence-chart").length));
    status.setAttribute("data-checked", "true");
    status.textContent = loaded + " of " + imgs.length + " images loaded";
  }
  var pending = imgs.filter(function (i) { return !i.complete; });
  if (!pending.length) { done(); return; }
  var left = pending.length;
  pending.forEach(function (i) {
    function one() { left -= 1; if (!left) { done(); } }
    i.addEventListener("load", one); i.addEventListener("error", one);
  });
})();
"""


def concept_hex(name: str, palette: Mapping[str, Sequence[int]] | None = None) -> str:
    """The concept's colour as ``#rrggbb`` (the TensorBoard units-by-round picture's colour).

    Examples:
        >>> concept_hex("sky", {"sky": [10, 20, 255]})
        '#0a14ff'
    """
    r, g, b = (int(v) for v in concept_colour(name, palette).tolist())
    return f"#{r:02x}{g:02x}{b:02x}"


def _steps(rounds: Sequence[DissectionResult]) -> list[int]:
    return [int(r.metadata.get("global_step", i)) for i, r in enumerate(rounds)]


def emergence_tables(rounds: Sequence[DissectionResult], layer: str) -> dict[str, Any]:
    """The numbers of one layer's page section (plain values).

    Returns a dict with ``steps``; ``counts``: concept → interpretable units per step; ``churn``:
    per step after the first, ``{"step", "gained", "lost", "relabelled"}``; ``first``: concept →
    first step with an interpretable unit; ``categories``: concept → category.

    Examples:
        >>> import torch
        >>> from lightning_dissect.result import DissectionResult, LayerDissection, UnitDissection
        >>> from lightning_dissect import ConceptVocabulary
        >>> vocab = ConceptVocabulary(("unlabeled", "sky", "tree"), ("none", "m", "o"))
        >>> def at(step, label, on):
        ...     u = UnitDissection(0, label, 1, "m", 0.5, 0.1, 1.0, on, 0.0)
        ...     layer = LayerDissection("l", [u], torch.zeros(1, 3))
        ...     return DissectionResult({"l": layer}, vocab, metadata={"global_step": step})
        >>> t = emergence_tables([at(5, "sky", False), at(9, "tree", True)], "l")
        >>> t["counts"], t["first"], t["churn"]
        ({'tree': [0, 1]}, {'tree': 9}, [{'step': 9, 'gained': 1, 'lost': 0, 'relabelled': 0}])
    """
    present = [r for r in rounds if layer in r.layers]
    steps = _steps(present)
    concepts: dict[str, str] = {}
    for r in present:
        for u in r.layers[layer].units:
            if u.interpretable:
                concepts.setdefault(u.label, u.category)
    order = sorted(concepts, key=lambda c: (-max(r.layers[layer].concept_counts().get(c, 0) for r in present), c))
    counts = {c: [r.layers[layer].concept_counts().get(c, 0) for r in present] for c in order}
    first = {c: next(s for s, n in zip(steps, counts[c]) if n) for c in order}
    churn = []
    for i in range(1, len(present)):
        cmp = present[i].compare(present[i - 1])
        churn.append({"step": steps[i], "gained": len(cmp.gained[layer]), "lost": len(cmp.lost[layer]),
                      "relabelled": len(cmp.relabelled[layer])})
    return {"steps": steps, "counts": counts, "churn": churn, "first": first,
            "categories": {c: concepts[c] for c in order}}


def _unit_grid(rounds: Sequence[DissectionResult], layer: str, palette: Any) -> tuple[str, list[str]]:
    present = [r for r in rounds if layer in r.layers]
    steps = _steps(present)
    units = max(r.layers[layer].num_units for r in present)
    cols = len(present)
    cell_w = max(6.0, min(48.0, 720.0 / cols))
    cell_h = max(2.0, min(18.0, 560.0 / units))
    left, top, bottom = 56, 8, 46
    width = left + cell_w * cols + 10
    height = top + cell_h * units + bottom
    used: list[str] = []
    parts = [f'<rect x="{left}" y="{top}" width="{cell_w * cols:.1f}" height="{cell_h * units:.1f}" fill="#2a2f3a"/>']
    for j, r in enumerate(present):
        x = left + j * cell_w
        for u in r.layers[layer].units:
            if not u.interpretable:
                continue
            if u.label not in used:
                used.append(u.label)
            y = top + u.unit * cell_h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{cell_w:.1f}" height="{cell_h:.1f}" '
                f'fill="{concept_hex(u.label, palette)}"><title>unit {u.unit} at step {steps[j]}: '
                f"{escape(u.label)} (IoU {u.iou:.3f})</title></rect>"
            )
    every = max(1, cols // 12)
    for j, s in enumerate(steps):
        if j % every == 0 or j == cols - 1:
            x = left + (j + 0.5) * cell_w
            parts.append(f'<text x="{x:.1f}" y="{top + cell_h * units + 14:.1f}" font-size="10.5" '
                         f'text-anchor="middle" fill="#5b6475">{s}</text>')
    unit_ticks = sorted({0, units - 1, *range(0, units, max(1, units // 8))})
    for u in unit_ticks:
        y = top + (u + 0.5) * cell_h + 3.5
        parts.append(f'<text x="{left - 6}" y="{y:.1f}" font-size="10.5" text-anchor="end" fill="#5b6475">{u}</text>')
    parts.append(f'<text x="{left + cell_w * cols / 2:.1f}" y="{height - 8:.1f}" font-size="11.5" '
                 'text-anchor="middle" fill="#1d2330">global step</text>')
    parts.append(f'<text x="12" y="{top + cell_h * units / 2:.1f}" font-size="11.5" text-anchor="middle" '
                 f'fill="#1d2330" transform="rotate(-90 12 {top + cell_h * units / 2:.1f})">unit</text>')
    svg = (f'<svg class="emergence-chart units-grid" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
           f'height="{height:.0f}" role="img" aria-label="units by step">{"".join(parts)}</svg>')
    return svg, used


def _line_chart(steps: list[int], counts: Mapping[str, list[int]], palette: Any) -> str:
    if not counts:
        return ""
    left, right, top, bottom, w, h = 44, 16, 12, 40, 640, 220
    lo, hi = min(steps), max(steps)
    span = (hi - lo) or 1
    ymax = max(1, max(max(v) for v in counts.values()))

    def x(s: int) -> float:
        return left + (w * (s - lo) / span if hi > lo else w / 2)

    def y(v: float) -> float:
        return top + h - h * v / ymax

    parts = []
    ticks = sorted({0, ymax, *([ymax // 2] if ymax >= 4 else [])})
    for t in ticks:
        parts.append(f'<line x1="{left}" x2="{left + w}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#e3e6ec"/>')
        parts.append(f'<text x="{left - 6}" y="{y(t) + 4:.1f}" font-size="11" text-anchor="end" '
                     f'fill="#5b6475">{t}</text>')
    every = max(1, len(steps) // 10)
    for j, s in enumerate(steps):
        if j % every == 0 or j == len(steps) - 1:
            parts.append(f'<text x="{x(s):.1f}" y="{top + h + 16}" font-size="10.5" text-anchor="middle" '
                         f'fill="#5b6475">{s}</text>')
    for concept, values in counts.items():
        colour = concept_hex(concept, palette)
        points = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in zip(steps, values))
        parts.append(f'<polyline class="concept-line" data-concept="{escape(concept)}" points="{points}" '
                     f'fill="none" stroke="{colour}" stroke-width="2"/>')
        for s, v in zip(steps, values):
            parts.append(f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="2.6" fill="{colour}">'
                         f"<title>{escape(concept)} at step {s}: {plural(v, 'unit')}</title></circle>")
    parts.append(f'<text x="{left + w / 2:.1f}" y="{top + h + 34}" font-size="11.5" text-anchor="middle" '
                 'fill="#1d2330">global step</text>')
    return (f'<svg class="emergence-chart concept-lines" xmlns="http://www.w3.org/2000/svg" '
            f'width="{left + w + right}" height="{top + h + bottom}" role="img" '
            f'aria-label="interpretable units per concept">{"".join(parts)}</svg>')


def _legend(concepts: Sequence[str], palette: Any, *, none: bool = True) -> str:
    items = "".join(f'<span><span class="sw" style="background:{concept_hex(c, palette)}"></span>{escape(c)}</span>'
                    for c in concepts)
    if none:
        items += '<span><span class="sw" style="background:#2a2f3a"></span>not interpretable</span>'
    return f'<div class="grid-legend">{items}</div>'


def _png_uri(tiles: Tensor) -> str:
    png = strip_png(tiles)
    return "" if png is None else "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _final_strips(result: DissectionResult, layer: str, images: Mapping[int, Tensor]) -> str:
    if not images:
        return '<p class="note">No unit images (run with a generator for the last checkpoint).</p>'
    by_unit = {u.unit: u for u in result.layers[layer].units}
    cards = []
    for unit in sorted(images, key=lambda u: (-by_unit[u].iou, u)):
        u = by_unit[unit]
        if images[unit].shape[0] == 0:
            continue
        badge = ('<span class="badge">interpretable</span>' if u.interpretable
                 else '<span class="badge no">not interpretable</span>')
        cards.append(
            f'<div class="unit-card final{"" if u.interpretable else " dim"}"><div class="head">'
            f'<span class="name">unit {u.unit}</span><span class="label">{escape(u.label)}</span>'
            f'<span class="meta">{escape(u.category)} · IoU {u.iou:.3f}</span>{badge}</div>'
            f'<div class="strip"><img src="{_png_uri(images[unit])}" alt="top images of unit {u.unit}"></div></div>'
        )
    return f'<div class="units">{"".join(cards)}</div>'


def _layer_section(rounds: Sequence[DissectionResult], layer: str, index: int, palette: Any,
                   images: Mapping[int, Tensor]) -> str:
    slug = layer_slug(layer, index)
    tables = emergence_tables(rounds, layer)
    steps = tables["steps"]
    grid, used = _unit_grid(rounds, layer, palette)
    lines = _line_chart(steps, tables["counts"], palette)
    present = [r for r in rounds if layer in r.layers]
    last = present[-1]
    totals = "".join(f'<td class="num">{r.layers[layer].num_interpretable}</td>' for r in present)
    churn_rows = "".join(
        f'<tr><td class="num">{c["step"]}</td><td class="num">{c["gained"]}</td><td class="num">{c["lost"]}</td>'
        f'<td class="num">{c["relabelled"]}</td></tr>' for c in tables["churn"]
    ) or '<tr><td colspan="4">one step only: no churn</td></tr>'
    first_rows = "".join(
        f'<tr><td><span class="swatch" style="background:{concept_hex(c, palette)}"></span>{escape(c)}</td>'
        f"<td>{escape(tables['categories'][c])}</td><td class=\"num\">{tables['first'][c]}</td>"
        f'<td class="num">{max(tables["counts"][c])}</td><td class="num">{tables["counts"][c][-1]}</td></tr>'
        for c in sorted(tables["first"], key=lambda c: (tables["first"][c], c))
    ) or '<tr><td colspan="5">no concept labels an interpretable unit at any step</td></tr>'
    return f"""
<section class="layer" id="{slug}">
  <h2>Layer <code>{escape(layer)}</code></h2>
  <div class="stats"><div class="stat"><b>{len(steps)}</b><span>steps</span></div>
  <div class="stat"><b>{last.layers[layer].num_interpretable} / {last.layers[layer].num_units}</b>
  <span>interpretable at the last step</span></div>
  <div class="stat"><b>{len(tables["first"])}</b><span>concepts ever</span></div></div>
  <h3>Units × steps</h3>
  <p class="note">Each row is a unit, each column a step; a cell is coloured by the unit's label when
  the unit is interpretable at that step. Hover a cell for its label and IoU.</p>
  <div class="chart">{grid}</div>
  {_legend(used, palette)}
  <h3>Interpretable units per concept</h3>
  <div class="chart">{lines or '<p class="note">No interpretable unit at any step.</p>'}</div>
  {_legend(list(tables["counts"]), palette, none=False) if lines else ""}
  <div class="table-wrap"><table class="data totals"><thead><tr><th>step</th>
  {"".join(f'<th class="num">{s}</th>' for s in steps)}</tr></thead>
  <tbody><tr><td>interpretable units</td>{totals}</tr></tbody></table></div>
  <h3>Churn</h3>
  <p class="note">Between a step and the one before: units that became interpretable (gained), stopped being
  interpretable (lost), or stayed interpretable with another label (relabelled).</p>
  <table class="data compact churn"><thead><tr><th class="num">step</th><th class="num">gained</th>
  <th class="num">lost</th><th class="num">relabelled</th></tr></thead><tbody>{churn_rows}</tbody></table>
  <h3>First step with a unit</h3>
  <table class="data compact first"><thead><tr><th>concept</th><th>category</th><th class="num">first step</th>
  <th class="num">most units</th><th class="num">units at the last step</th></tr></thead>
  <tbody>{first_rows}</tbody></table>
  <h3>Unit images at the last step ({steps[-1]})</h3>
  {_final_strips(last, layer, images)}
</section>"""


def _failed_section(failed: Sequence[tuple[str | Path, str]]) -> str:
    """The checkpoints that have no round because loading or dissecting them failed."""
    if not failed:
        return ""
    rows = "".join(
        f"<tr><td><code>{escape(str(path))}</code></td><td>{escape(reason)}</td></tr>" for path, reason in failed
    )
    return f"""<section id="failed"><h2>Checkpoints that failed</h2>
<p>{len(failed)} checkpoint(s) of the series have no round: they could not be loaded or dissected. The
other steps are shown below; fix or remove these files and run the command again to add them.</p>
<table class="data compact failed"><thead><tr><th>checkpoint</th><th>reason</th></tr></thead>
<tbody>{rows}</tbody></table></section>
"""


def write_emergence_report(
    rounds: Sequence[DissectionResult],
    path: str | Path,
    *,
    palette: Mapping[str, Sequence[int]] | None = None,
    unit_images: Mapping[str, Mapping[int, Tensor]] | None = None,
    title: str | None = None,
    failed: Sequence[tuple[str | Path, str]] = (),
) -> Path:
    """Write the emergence page of ``rounds`` (oldest step first) to the file ``path``.

    Args:
        rounds: The rounds, e.g. :func:`~lightning_dissect.callbacks.history.load_history` of a run.
        path: The HTML file to write (parents created).
        palette: Concept colours (:func:`~lightning_dissect.visual.round_pictures.segmenter_palette`);
            other concepts get the stable hashed colour of the TensorBoard pictures.
        unit_images: Strips of the last round's units, ``layer -> unit -> uint8 (k, 3, H, W)``
            (:func:`~lightning_dissect.dissection.strips.render_unit_images`), embedded as PNG data.
        title: Page title.
        failed: ``(checkpoint file, reason)`` of the checkpoints that could not be loaded or
            dissected (e.g. a diverged step), listed on the page.

    Returns:
        The path written.

    Raises:
        ValueError: If ``rounds`` is empty, or ``path`` is not writable (the message names it).

    Examples:
        >>> import tempfile, torch
        >>> from lightning_dissect.result import DissectionResult, LayerDissection, UnitDissection
        >>> from lightning_dissect import ConceptVocabulary
        >>> vocab = ConceptVocabulary(("unlabeled", "sky"), ("none", "material"))
        >>> unit = UnitDissection(0, "sky", 1, "material", 0.5, 0.2, 1.0, True, 0.01)
        >>> result = DissectionResult({"conv": LayerDissection("conv", [unit], torch.tensor([[0.0, 0.5]]))},
        ...                           vocab, metadata={"global_step": 3})
        >>> write_emergence_report([result], Path(tempfile.mkdtemp()) / "emergence.html").name
        'emergence.html'
    """
    if not rounds:
        raise ValueError("write_emergence_report: `rounds` is empty (no round to show)")
    target = check_writable_output(path, "path")
    layers = list(dict.fromkeys(name for r in rounds for name in r.layers))
    images = unit_images or {}
    sections = "".join(_layer_section(rounds, name, i, palette, images.get(name, {})) for i, name in enumerate(layers))
    nav = "".join(f'<a href="#{layer_slug(n, i)}">{escape(n)}</a>' for i, n in enumerate(layers))
    steps = _steps(rounds)
    span = f" ({steps[0]} – {steps[-1]})" if len(rounds) > 1 else f" ({steps[0]})"
    sub = subtitle(plural(len(rounds), "step") + span, *run_facts(len(layers), rounds[-1].settings),
                   f"interpretable: {rounds[-1].rule.describe()}")
    css = resources.files("lightning_dissect.report").joinpath("report.css").read_text(encoding="utf-8")
    from lightning_dissect import __version__

    main = f"""{_failed_section(failed)}{sections}
<footer>lightning-dissect {escape(__version__)} · every step dissected on the same seeded latent bank ·
<span id="emergence-status" data-loaded="" data-total="" data-charts="" data-checked="false"></span></footer>"""
    html = html_page(title or "Emergence of interpretable units", sub, nav, f"{css}\n{_CSS}", main, _SCRIPT)
    return atomic_write_text(target, html)
