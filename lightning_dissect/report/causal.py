"""The report's section per optimised concept: α profile, effect curves, before/after pictures.

:func:`causal_section` renders one :class:`~lightning_dissect.interventions.CausalUnits` as HTML
(inline SVG charts, pictures written as PNGs next to the page); :func:`write_causal_report`
writes a page of such sections (``causal.html``) with the results as ``causal.json``;
:func:`~lightning_dissect.report.write_report` appends the same sections to a dissection report.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from html import escape
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lightning_dissect._utils.io import atomic_write_bytes, atomic_write_text, check_writable_output
from lightning_dissect._utils.text import plural
from lightning_dissect.report._page import html_page, subtitle
from lightning_dissect.report._svg import _text
from lightning_dissect.visual.visualize import as_rgb, encode_png, enlarge, image_strip, strip_png, to_uint8

if TYPE_CHECKING:  # annotations only: the report sits above the results
    from lightning_dissect.interventions.causal_result import CausalUnits

__all__ = ["CURVE_COLOURS", "causal_css", "causal_section", "causal_slug", "write_causal_report", "write_causal_images"]

#: Line colours of the three rankings in the effect curves.
CURVE_COLOURS = {"alpha": "#c2255c", "iou": "#4263eb", "random": "#868e96"}
_LABELS = {"alpha": "top-n by α", "iou": "top-n by IoU", "random": "n random"}


def causal_slug(result: CausalUnits) -> str:
    """File-system-safe id of a result's section: ``causal-<layer>-<concept>``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{result.layer}-{result.concept}").strip("._") or "concept"
    return f"causal-{safe[:80]}"


def write_causal_images(result: CausalUnits, directory: Path, value_range: tuple[float, float]) -> dict[str, str]:
    """Write the result's before/ablated/inserted pictures and unit strips as PNGs; return name → relative path.

    Unit strips are named ``unit-<u>``.
    """
    if not result.examples and not result.unit_images:
        return {}
    slug = causal_slug(result)
    folder = directory / "images" / slug
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for unit, tiles in result.unit_images.items():
        png = strip_png(tiles)
        if png is not None:
            name = f"unit-{int(unit):04d}"
            atomic_write_bytes(folder / f"{name}.png", png)
            paths[f"unit-{int(unit)}"] = f"images/{slug}/{name}.png"
    for name, images in result.examples.items():
        tiles = enlarge(as_rgb(to_uint8(images, value_range)))
        atomic_write_bytes(folder / f"{name}.png", encode_png(image_strip(list(tiles), gap=4)))
        paths[name] = f"images/{slug}/{name}.png"
    return paths


def _alpha_profile(result: CausalUnits, width: int = 640, height: int = 160) -> str:
    """Bars of α of every unit, best first (sorted), the IoU of the same unit as a dot."""
    order = result.ranking.tolist()
    n = len(order)
    left, bottom, top = 36, 34, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    step = plot_w / max(n, 1)
    iou = torch.nan_to_num(result.iou.float(), nan=0.0)
    iou_max = max(float(iou.max()) if iou.numel() else 0.0, 1e-12)
    parts = [f'<svg class="alpha-profile" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             'role="img" aria-label="alpha of every unit, best first">']
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#dee2e6"/>')
        parts.append(_text(left - 4, y + 4, f"{frac:g}", text_anchor="end", font_size="10"))
    for i, unit in enumerate(order):
        a = float(result.alpha[unit])
        x = left + i * step
        h = plot_h * a
        parts.append(
            f'<rect x="{x:.2f}" y="{top + plot_h - h:.2f}" width="{max(step - 0.5, 0.5):.2f}" height="{h:.2f}" '
            f'fill="{CURVE_COLOURS["alpha"]}"><title>unit {unit}: α = {a:.3f}, IoU = {float(iou[unit]):.3f}'
            "</title></rect>"
        )
        y = top + plot_h * (1 - float(iou[unit]) / iou_max)
        parts.append(f'<circle cx="{x + step / 2:.2f}" cy="{y:.2f}" r="1.6" fill="{CURVE_COLOURS["iou"]}"/>')
    labelled = min(n, 8) if step >= 14 else 0  # unit numbers only where they fit under their bars
    for i, unit in enumerate(order[:labelled]):
        x = left + (i + 0.5) * step
        parts.append(_text(x, height - bottom + 12, str(unit), text_anchor="middle", font_size="9"))
    shown = f"labels: the top {labelled}" if labelled else "hover a bar for its unit"
    caption = f"{plural(n, 'unit')} by α, best first ({shown}); dots: IoU / max IoU ({iou_max:.3f})"
    parts.append(_text(left, height - 3, caption, font_size="10"))
    parts.append("</svg>")
    return "".join(parts)


def _curve_chart(result: CausalUnits, kind: str, width: int = 320, height: int = 200) -> str:
    """Concept fraction (relative to the unedited baseline) against n, one line per ranking."""
    sizes = result.sizes
    curves = {r: result.curve(kind, r) for r in CURVE_COLOURS}
    peak = max([1.0, *(v for c in curves.values() for v in c)])
    left, bottom, top, right = 40, 30, 12, 10
    plot_w, plot_h = width - left - right, height - bottom - top
    xs = list(range(len(sizes)))

    def px(i: int) -> float:
        return left + plot_w * (i / max(len(sizes) - 1, 1))

    def py(v: float) -> float:
        return top + plot_h * (1 - v / peak)

    title = "left after ablating" if kind == "ablated" else "after inserting"
    parts = [f'<svg class="causal-curve" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="concept {title} n units">']
    for v in (0.0, 0.5 * peak, peak):
        parts.append(f'<line x1="{left}" y1="{py(v):.1f}" x2="{width - right}" y2="{py(v):.1f}" stroke="#dee2e6"/>')
        parts.append(_text(left - 4, py(v) + 4, f"{v:.0%}", text_anchor="end", font_size="10"))
    for i, n in zip(xs, sizes):
        parts.append(_text(px(i), height - bottom + 14, str(n), text_anchor="middle", font_size="10"))
    parts.append(_text(left + plot_w / 2, height - 2, f"n units ({title}; 100% = unedited)", text_anchor="middle",
                       font_size="10"))
    for name, values in curves.items():
        points = " ".join(f"{px(i):.1f},{py(v):.1f}" for i, v in zip(xs, values))
        colour = CURVE_COLOURS[name]
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for i, v, n in zip(xs, values, sizes):
            parts.append(f'<circle cx="{px(i):.1f}" cy="{py(v):.1f}" r="3" fill="{colour}">'
                         f"<title>{_LABELS[name]}, n = {n}: {v:.1%}</title></circle>")
    parts.append("</svg>")
    return "".join(parts)


def _legend() -> str:
    return " ".join(
        f'<span class="swatch" style="background:{c}"></span>{escape(_LABELS[n])}' for n, c in CURVE_COLOURS.items()
    )


def _table(result: CausalUnits) -> str:
    rows = []
    for c in result.comparison:
        cells = "".join(
            f"<td>{result.curve(kind, r)[result.sizes.index(c.n)]:.1%}</td>"
            for kind in ("ablated", "inserted") for r in CURVE_COLOURS
        )  # fmt: skip
        rows.append(f"<tr><td>{c.n}</td>{cells}</tr>")
    head = "".join(f"<th>{escape(_LABELS[r])}</th>" for r in CURVE_COLOURS)
    return (
        '<table class="causal-table"><thead><tr><th rowspan="2">n</th><th colspan="3">left after ablation</th>'
        f'<th colspan="3">after insertion</th></tr><tr>{head}{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def causal_section(result: CausalUnits, images: dict[str, str] | None = None) -> str:
    """One optimised concept's section (``images``: from :func:`write_causal_images`)."""
    settings = ", ".join(f"{k} = {v}" for k, v in result.settings.items())
    top = ", ".join(str(u) for u in result.top_units(10))
    pictures = ""
    if images:
        units = ("units " if len(result.example_units) > 1 else "unit ") + ", ".join(map(str, result.example_units))
        rows = "".join(
            f'<figure><figcaption>{escape(label)}</figcaption><img src="{escape(images[name])}" '
            f'alt="{escape(label)}"></figure>'
            for name, label in (("before", "unedited"), ("ablated", f"{units} switched off"),
                                ("inserted", f"{units} switched on"))
            if name in images
        )  # fmt: skip
        pictures = f'<h3>Top units by α, before and after</h3><div class="causal-images">{rows}</div>'
    strips = [(u, images[f"unit-{u}"]) for u in result.top_units(len(result.alpha)) if images and f"unit-{u}" in images]
    if strips:
        cards = "".join(
            f'<figure><figcaption>unit {u}: α = {float(result.alpha[u]):.2f}, IoU = {float(result.iou[u]):.3f}'
            f'</figcaption><img src="{escape(path)}" alt="unit {u}"></figure>'
            for u, path in strips
        )
        pictures += (f'<h3>Top units by α: their top images</h3><p class="note">Each unit\'s top images in the '
                     f'dissection, outside its thresholded map dimmed.</p><div class="causal-images">{cards}</div>')
    return f"""
<section class="causal" id="{causal_slug(result)}">
  <h2>Causal units of <code>{escape(result.concept)}</code> in <code>{escape(result.layer)}</code></h2>
  <p class="note">α per unit learned so that switching the units off in proportion to α removes the
  concept where it is and switching them on creates it where it is not, with an L2 penalty
  ({escape(settings)}; seed {result.seed}). {plural(result.num_images, 'sample image')},
  {result.num_images_with_concept} showing the concept (baseline fraction {result.baseline:.2%});
  {result.passes_per_image} forward+backward passes per image. Top units by α: {escape(top)}.</p>
  <h3>α profile</h3>
  <div class="chart">{_alpha_profile(result)}</div>
  <h3>Effect against n</h3>
  <p class="legend">{_legend()}</p>
  <div class="chart causal-curves">{_curve_chart(result, "ablated")}{_curve_chart(result, "inserted")}</div>
  {_table(result)}
  {pictures}
</section>"""


_CSS = """
.causal .causal-curves { display: flex; gap: 1.5rem; flex-wrap: wrap; }
.causal .swatch { display: inline-block; width: .8em; height: .8em; margin: 0 .3em 0 1em; vertical-align: middle; }
.causal .causal-images { display: flex; flex-direction: column; gap: .5rem; }
.causal figure { margin: 0; }
.causal figcaption { font-size: .85rem; color: #495057; }
.causal img { image-rendering: pixelated; max-width: 100%; }
.causal-table td, .causal-table th { padding: .15rem .6rem; text-align: right; }
"""


def causal_css() -> str:
    """The CSS of the causal sections (appended to the report's)."""
    return _CSS


def _report_css() -> str:
    return resources.files("lightning_dissect.report").joinpath("report.css").read_text(encoding="utf-8")


def write_causal_report(
    results: Sequence[CausalUnits],
    directory: str | Path,
    *,
    value_range: tuple[float, float] = (-1.0, 1.0),
    title: str | None = None,
) -> Path:
    """Write ``causal.json`` (a list of results) and ``causal.html`` (a section each); return the page.

    Args:
        results: Causal unit sets (one per concept).
        directory: Output folder (created).
        value_range: Value range of the generated pictures.
        title: Page title (default "Causal units").

    Examples:
        >>> import tempfile
        >>> from lightning_dissect.interventions import CausalComparison, CausalUnits
        >>> result = CausalUnits("conv", "sky", 1, torch.tensor([1.0, 0.0]), torch.tensor([0, 1]),
        ...                      torch.tensor([0.2, 0.5]), torch.tensor([-0.1, 0.0]), torch.ones(2), 0.5,
        ...                      [CausalComparison(1, [0], [1], [1], 0.0, 0.5, 0.5, 0.9, 0.5, 0.5)])
        >>> page = write_causal_report([result], tempfile.mkdtemp())
        >>> page.name, (page.parent / "causal.json").exists()
        ('causal.html', True)
    """
    from lightning_dissect import __version__

    out = check_writable_output(directory, "directory", directory=True)
    payload = results[0].to_dict() if len(results) == 1 else [r.to_dict() for r in results]
    atomic_write_text(out / "causal.json", json.dumps(payload, indent=1))
    sections = [causal_section(r, write_causal_images(r, out, value_range)) for r in results]
    nav = "".join(f'<a href="#{causal_slug(r)}">{escape(r.concept)}</a>' for r in results)
    main = "".join(sections) + (
        f'<footer>lightning-dissect {escape(__version__)} · data: <a href="causal.json">causal.json</a></footer>'
    )
    sub = subtitle(f"{len(results)} concept{'s' if len(results) != 1 else ''}")
    page = html_page(title or "Causal units", sub, nav, _report_css() + _CSS, main, "")
    return atomic_write_text(out / "causal.html", page)
