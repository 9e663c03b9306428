"""A self-contained static HTML report of a :class:`~lightning_dissect.result.DissectionResult`.

:func:`write_report` writes into one directory::

    index.html          # the page: inline CSS, inline SVG charts, a little inline JS; no network
    dissect.json        # the result (see docs/schema.md)
    images/<layer>/unit-<u>.png   # per-unit strips: top images, outside the unit's mask dimmed

The page starts with a legend (IoU, IQR, threshold, chance IoU) and a summary across layers
(interpretable units per category per layer). Per layer it shows the interpretable units per
concept (bars grouped by category, as in GAN Dissection), an IoU heatmap of the top units against
the concepts that label any unit (fixed colour scale, label cells on a diagonal), image strips of
the top units, the ablation check when the result carries one (``DissectionResult.ablations``) and
a sortable table of every unit; then the settings and metadata.

The report depends on :mod:`lightning_dissect.result` (for annotations only) and never the reverse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from html import escape
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_dissect._utils.io import atomic_write_bytes, atomic_write_text, check_writable_output
from lightning_dissect._utils.text import plural
from lightning_dissect.interpretability import InterpretabilityRule
from lightning_dissect.report._ablation_table import ABLATION_COLUMNS, ablation_rows
from lightning_dissect.report._page import html_page, run_facts, subtitle
from lightning_dissect.report._svg import category_colour, concept_bar_chart, iou_heatmap
from lightning_dissect.report.causal import (
    causal_css,
    causal_section,
    causal_slug,
    write_causal_images,
    write_causal_report,
)
from lightning_dissect.visual.colours import IOU_SCALE_MAX
from lightning_dissect.visual.visualize import strip_png

if TYPE_CHECKING:
    from lightning_dissect.engine.hooks import OutputSelector
    from lightning_dissect.engine.latents import LatentBank
    from lightning_dissect.interventions.causal_result import CausalUnits
    from lightning_dissect.result import DissectionResult, LayerDissection, UnitDissection

__all__ = ["write_report", "write_causal_report", "layer_slug"]


def layer_slug(name: str, index: int) -> str:
    """Return a file-system-safe, unique folder name for a layer.

    Examples:
        >>> layer_slug("generator.block2/conv", 0)
        '00-generator.block2_conv'

    """
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "layer"
    return f"{index:02d}-{safe[:60]}"


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _fmt_p(value: float | None) -> str:
    """A p-value with three significant digits, ``–`` when not measured."""
    return "–" if value is None else f"{value:.3g}"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _level(value: float) -> str:
    return f"{value:.4g}"


def write_report(
    result: DissectionResult,
    directory: str | Path,
    *,
    generator: nn.Module | None = None,
    latent_bank: LatentBank | None = None,
    segmenter_value_range: tuple[float, float] = (-1.0, 1.0),
    num_units: int = 12,
    generate: Any = None,
    selector: OutputSelector | Mapping[str, OutputSelector] = None,
    device: torch.device | str | None = None,
    heatmap_units: int = 40,
    title: str | None = None,
    write_json: bool = True,
    causal: Sequence[CausalUnits] = (),
) -> Path:
    """Write the static HTML report of ``result`` into ``directory``; return ``index.html``'s path.

    Unit image strips come from ``result.unit_images`` when present (``dissect(...,
    num_visualized_units=n)``); otherwise, when ``generator`` and ``latent_bank`` (the bank the
    result was computed on) are given, the top ``num_units`` units of every layer are rendered
    with :func:`~lightning_dissect.dissection.strips.render_unit_images`; otherwise the page says how to
    get them.

    Args:
        result: The dissection result.
        directory: Output folder (created; existing report files are overwritten). Checked before
            any work: a ``ValueError`` names ``directory`` when it is a file, lies under a file or
            is not writable.
        generator: Optional generator to render missing unit images.
        latent_bank: The latent bank of the dissection (needed with ``generator``).
        segmenter_value_range: Value range of the generator's images (for rendering).
        num_units: Units per layer to render when rendering.
        generate: Custom ``(generator, latents) -> images`` (as for ``dissect``).
        selector: Layer output selector (as for ``dissect``).
        device: Device to render on.
        heatmap_units: Rows (top units) of the IoU heatmap.
        title: Page title (default: "Dissection report").
        write_json: Also write ``dissect.json``.
        causal: Causal unit sets (:func:`~lightning_dissect.interventions.causal_units`) to show,
            a section each after the layers (α profile, effect curves, before/after pictures);
            each is also written as ``causal-<layer>-<concept>.json`` (its ``to_dict()``).

    Returns:
        Path of ``index.html``.

    Examples:
        >>> import tempfile
        >>> from lightning_dissect.result import DissectionResult, LayerDissection, UnitDissection
        >>> from lightning_dissect import ConceptVocabulary
        >>> vocab = ConceptVocabulary(("unlabeled", "sky"), ("none", "material"))
        >>> unit = UnitDissection(0, "sky", 1, "material", 0.5, 0.2, 1.0, True, 0.01)
        >>> result = DissectionResult({"conv": LayerDissection("conv", [unit],
        ...                                                    torch.tensor([[0.0, 0.5]]))}, vocab)
        >>> path = write_report(result, tempfile.mkdtemp())
        >>> path.name, (path.parent / "dissect.json").exists()
        ('index.html', True)

    """
    out = check_writable_output(directory, "directory", directory=True)
    if write_json:
        atomic_write_text(out / "dissect.json", result.to_json(indent=1))
    unit_images: dict[str, dict[int, Tensor]] = {
        name: dict(images) for name, images in (result.unit_images or {}).items() if images
    }
    rendered = False
    if not unit_images and generator is not None and latent_bank is not None and num_units > 0:
        from lightning_dissect.dissection.strips import render_unit_images

        unit_images = render_unit_images(generator, result, latent_bank, segmenter_value_range, num_units=num_units,
                                         generate=generate, selector=selector, device=device)
        rendered = True
    sections, nav, written = _layer_sections(out, result, unit_images, heatmap_units, rendered, generator is not None)
    if causal:
        for item in causal:
            atomic_write_text(out / f"{causal_slug(item)}.json", json.dumps(item.to_dict(), indent=1))
            pictures = write_causal_images(item, out, segmenter_value_range)
            written.update(pictures.values())
            sections.append(causal_section(item, pictures))
            nav.insert(-1, f'<a href="#{causal_slug(item)}">causal: {escape(item.concept)}</a>')
    _remove_stale_pictures(out, written)
    return atomic_write_text(out / "index.html", _page(result, sections, nav, title, bool(causal)))


def _layer_sections(
    out: Path,
    result: DissectionResult,
    unit_images: Mapping[str, Mapping[int, Tensor]],
    heatmap_units: int,
    rendered: bool,
    had_generator: bool,
) -> tuple[list[str], list[str], set[str]]:
    """Write every layer's strips; return the layer sections, the navigation links and the files written."""
    sections = []
    nav = ['<a href="#legend">legend</a>', '<a href="#summary">summary</a>']
    written: set[str] = set()
    for index, (name, layer) in enumerate(result.layers.items()):
        slug = layer_slug(name, index)
        strips = _write_strips(out, slug, unit_images.get(name, {}))
        written.update(strips.values())
        sections.append(_layer_section(result, name, layer, slug, strips, heatmap_units, rendered, had_generator))
        nav.append(f'<a href="#{slug}">{escape(name)}</a>')
    nav.append('<a href="#settings">settings</a>')
    return sections, nav, written


def _remove_stale_pictures(out: Path, written: set[str]) -> None:
    """Delete the pictures an earlier report left in ``out/images`` that this page does not show.

    A report rewritten into the same folder (fewer layers, other units, other causal sets) must not
    leave pictures that no result describes. Only files of the report's own naming are deleted
    (``images/<layer>/unit-NNNN.png``, ``images/causal-*/*.png``), then the folders they leave empty.
    """
    images = out / "images"
    if not images.is_dir():
        return
    for strip in [*images.glob("*/unit-*.png"), *images.glob("causal-*/*.png")]:
        if strip.relative_to(out).as_posix() not in written:
            strip.unlink(missing_ok=True)
    for folder in images.iterdir():
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    if not any(images.iterdir()):
        images.rmdir()


def _page(
    result: DissectionResult, sections: list[str], nav: list[str], title: str | None, causal: bool = False
) -> str:
    """The whole ``index.html``."""
    from lightning_dissect import __version__

    sub = subtitle(
        *run_facts(len(result.layers), result.settings), plural(result.vocabulary.num_concepts, "concept")
    )
    main = f"""{_legend_section(result)}
{_summary_section(result)}
{"".join(sections)}
{_settings_section(result)}
<footer>lightning-dissect {escape(__version__)} · result schema version {result.schema_version}
 · data: <a href="dissect.json">dissect.json</a>
 · <span id="image-status" data-loaded="" data-total="" data-checked="false"></span></footer>"""
    css = _asset("report.css") + (causal_css() if causal else "")
    return html_page(title or "Dissection report", sub, "".join(nav), css, main, _asset("report.js"))


def _write_strips(out: Path, slug: str, images: Mapping[int, Tensor]) -> dict[int, str]:
    """Save each unit's ``(k, 3, H, W)`` images as one PNG strip; return unit → relative path."""
    paths: dict[int, str] = {}
    if not images:
        return paths
    folder = out / "images" / slug
    folder.mkdir(parents=True, exist_ok=True)
    for unit, tiles in images.items():
        png = strip_png(tiles)
        if png is None:
            continue
        name = f"unit-{int(unit):04d}.png"
        atomic_write_bytes(folder / name, png)
        paths[int(unit)] = f"images/{slug}/{name}"
    return paths


def _layer_section(
    result: DissectionResult,
    name: str,
    layer: LayerDissection,
    slug: str,
    strips: dict[int, str],
    heatmap_units: int,
    rendered: bool,
    had_generator: bool,
) -> str:
    """One layer's section: stats, concept bars, IoU heatmap, unit strips, ablations, unit table."""
    cutoff = result.settings.get("iou_threshold")
    heat = iou_heatmap(layer, result.vocabulary.names, max_units=heatmap_units,
                       threshold=float(cutoff) if isinstance(cutoff, (int, float)) else None)
    shown = len(layer.top_units(heatmap_units))
    return f"""
<section class="layer" id="{slug}">
  <h2>Layer <code>{escape(name)}</code></h2>
  <div class="stats">{_stats_html(layer)}</div>
  <h3>Interpretable units per concept</h3>
  {_bars_html(result, layer)}
  <h3>IoU of the top {plural(shown, "unit") if shown != 1 else "unit"}</h3>
  <p class="note">Rows: the top units (interpretable first, best label IoU first; none at or below
  its chance IoU), grouped by label; columns: the concepts that
  label any unit, ordered so that each unit's label (outlined in red) runs down the diagonal. Fixed
  colour scale 0 – {IOU_SCALE_MAX:g} (higher IoUs get the top colour), the same in every layer and
  report; hover a cell for its value.</p>
  {f'<div class="chart">{heat}</div>' if shown else _no_units_html(result, name)}
  <h3>Unit images</h3>
  {_strips_html(layer, slug, strips, rendered, had_generator)}
  {_ablation_html(result, name)}
  <h3>All units</h3>
  {_units_table(layer, slug, strips)}
</section>"""


def _no_units_html(result: DissectionResult, name: str) -> str:
    """What the report shows in place of the heatmap when no unit is above its chance IoU."""
    return f'<p class="note no-units">{escape(result.no_units_note(name))}</p>'


def _stats_html(layer: LayerDissection) -> str:
    """The layer's headline numbers."""
    counts = layer.category_counts()
    stats = [
        (f"{layer.num_interpretable} / {layer.num_units}", "interpretable units"),
        (str(layer.num_concepts_covered), "concepts covered"),
        (f"{layer.mean_best_iou:.3f}", "mean best IoU"),
    ]
    if counts:
        stats.append((" · ".join(f"{v} {k}" for k, v in counts.items()), "by category"))
    if layer.layout is not None:
        stats.append((layer.layout, "layout read in"))
    return "".join(f'<div class="stat"><b>{escape(v)}</b><span>{escape(k)}</span></div>' for v, k in stats)


def _bars_html(result: DissectionResult, layer: LayerDissection) -> str:
    """Interpretable units per concept, or a note when there are none."""
    bars = concept_bar_chart(layer, list(result.vocabulary.category_names))
    return (f'<div class="chart">{bars}</div>' if bars else
            '<p class="note">No interpretable units in this layer (none has its '
            f'{escape(InterpretabilityRule.from_settings(result.settings).describe())}).</p>')


def _strips_html(layer: LayerDissection, slug: str, strips: dict[int, str], rendered: bool,
                 had_generator: bool) -> str:
    """The unit cards with their strips (highest IoU first), or how to get strips."""
    if not strips:
        hint = ("the generator produced no images for these units" if had_generator else
                "run <code>dissect(..., num_visualized_units=n)</code>, or pass "
                "<code>generator=</code> and <code>latent_bank=</code> to "
                "<code>write_report</code>")
        return f'<p class="note">No unit images in this report: {hint}.</p>'
    by_unit = {u.unit: u for u in layer.units}
    ordered = sorted((by_unit[u] for u in strips if u in by_unit), key=lambda u: (-u.iou, u.unit))
    cards = [_unit_card(u, slug, strips[u.unit]) for u in ordered]
    how = "rendered for this report" if rendered else "recorded during dissection"
    return (
        '<p class="note">Each strip: the unit\'s top images by spatial max activation '
        f"({how}); outside the unit's thresholded mask dimmed, the mask outlined by a dark "
        f'and a light line (visible on any image).</p><div class="units">{"".join(cards)}</div>'
    )


def _unit_card(u: UnitDissection, slug: str, strip: str) -> str:
    """One unit's card: name, label, numbers, badge and strip."""
    badge = ('<span class="badge">interpretable</span>' if u.interpretable
             else '<span class="badge no">not interpretable</span>')
    maxacts = ", ".join(f"{img['maxact']:.3g}" for img in u.top_images[:8])
    return (
        f'<div class="unit-card{"" if u.interpretable else " dim"}" '
        f'id="{slug}-unit-{u.unit}">'
        f'<div class="head"><span class="name">unit {u.unit}</span>'
        f'<span class="label">{escape(u.label)}</span>'
        f'<span class="meta">{escape(u.category)} · IoU {u.iou:.3f} · '
        f'IQR {u.iou_iqr:.3f} · threshold {_level(u.level)} · '
        f'chance IoU {_fmt(u.chance_iou)} · excess {_fmt(u.excess)} · p {_fmt_p(u.p_value)}</span>{badge}</div>'
        f'<div class="strip"><img src="{escape(strip)}" loading="eager" '
        f'alt="top images of unit {u.unit} ({escape(u.label)})" '
        f'title="top images by max activation: {escape(maxacts)}"></div></div>'
    )


def _units_table(layer: LayerDissection, slug: str, strips: dict[int, str]) -> str:
    """The sortable table of every unit (unit numbers link to their cards)."""
    table_id = f"{slug}-table"
    rows = "".join(_unit_row(u, slug, u.unit in strips) for u in layer.units)
    return (
        f'<div class="controls"><label><input type="checkbox" class="only-interpretable" '
        f'data-table="{table_id}"> interpretable units only</label> · click a column to sort'
        f'</div><div class="table-wrap"><table class="data sortable" id="{table_id}"><thead><tr>'
        '<th class="num">unit</th><th>concept</th><th>category</th><th class="num">IoU</th>'
        '<th class="num">IQR</th><th class="num">threshold</th><th class="num">chance IoU</th>'
        '<th class="num">excess</th><th class="num">p-value</th>'
        f'<th>interpretable</th></tr></thead><tbody>{rows}</tbody></table></div>'
    )


def _unit_row(u: UnitDissection, slug: str, linked: bool) -> str:
    """One row of the unit table."""
    link = f'<a href="#{slug}-unit-{u.unit}">{u.unit}</a>' if linked else str(u.unit)
    return (
        f'<tr class="{"" if u.interpretable else "dim"}">'
        f'<td class="num" data-value="{u.unit}">{link}</td>'
        f"<td>{escape(u.label)}</td><td>{escape(u.category)}</td>"
        f'<td class="num" data-value="{u.iou:.6f}">{u.iou:.3f}</td>'
        f'<td class="num" data-value="{u.iou_iqr:.6f}">{u.iou_iqr:.3f}</td>'
        f'<td class="num" data-value="{u.level:.6g}">{_level(u.level)}</td>'
        f'<td class="num" data-value="{-1 if u.chance_iou is None else u.chance_iou:.6f}">'
        f"{_fmt(u.chance_iou)}</td>"
        f'<td class="num" data-value="{-9 if u.excess is None else u.excess:.6f}">{_fmt(u.excess)}</td>'
        f'<td class="num" data-value="{2 if u.p_value is None else u.p_value:.6g}">{_fmt_p(u.p_value)}</td>'
        f'<td data-value="{int(u.interpretable)}">{"yes" if u.interpretable else "no"}</td>'
        "</tr>"
    )


def _legend_section(result: DissectionResult) -> str:
    settings = result.settings
    mode = settings.get("threshold_mode")
    chosen = InterpretabilityRule.from_settings(settings)
    rule = escape(chosen.describe())
    rule += {
        "paper": " (the papers' fixed cut, <code>interpretable=\"paper\"</code>)",
        "chance_ratio": (" (<code>interpretable=\"chance_ratio\"</code>, an earlier default; the papers' fixed "
                         "cut alone is <code>interpretable=\"paper\"</code>)"),
    }.get(chosen.name, " (<code>interpretable=\"significant\"</code>, the default; the papers' fixed cut alone is "
                       "<code>interpretable=\"paper\"</code>)")
    return f"""
<section class="legend" id="legend">
  <h2>How to read this report</h2>
  <dl>
    <dt>unit mask</dt><dd>a unit's activation map, upsampled to the segmentation, above the
      unit's <b>threshold</b>.</dd>
    <dt>threshold</dt><dd>the activation level defining the mask (<code>level</code> in
      dissect.json): the top quantile of the unit's activations
      (<code>threshold_mode="quantile"</code>) or the level maximising the IQR with the label
      (<code>"iqr"</code>){f"; this result: <code>{escape(str(mode))}</code>" if mode else ""}.</dd>
    <dt>IoU</dt><dd>intersection over union of the unit mask with a concept's segmentation, summed
      over all sample images: 0 = never overlap, 1 = identical. A unit's <b>label</b> is its best
      concept; it is <b>interpretable</b> when {rule}.</dd>
    <dt>IQR</dt><dd>information quality ratio of mask and concept (mutual information / joint
      entropy, 0 – 1): like IoU, but also rewards agreement on where both are absent.</dd>
    <dt>chance IoU</dt><dd>the IoU the unit gets with its label when every image is paired with
      another image's segmentation: the overlap expected by chance from a concept's size and
      position alone. A unit whose IoU is not well above it does not detect its label.</dd>
    <dt>excess</dt><dd>(IoU − chance IoU) / (1 − chance IoU): the share of what is still possible
      above chance that the unit reaches; 1 for a unit whose mask is the concept's own mask in every
      image, about 0 for one that knows only where the concept usually is, for a concept of any size.</dd>
    <dt>p-value</dt><dd>how often the unit's IoU would be as far above its chance IoU if it knew
      nothing of its own images: the samples are split into groups by their index, and every subset
      of groups has its images' own and paired segmentations swapped (a randomisation test; its
      smallest value is 2<sup>−groups</sup>). Small: the excess is not the luck of the sample;
      – where it was not measured (results of earlier releases).</dd>
  </dl>
</section>"""


def _summary_section(result: DissectionResult) -> str:
    """A table across layers: interpretable units in total and per category, concepts, IoU."""
    vocab = result.vocabulary
    categories = list(dict.fromkeys(
        c for i, c in enumerate(vocab.categories) if i != vocab.unlabeled_index))
    used = [c for c in categories
            if any(layer.category_counts().get(c) for layer in result.layers.values())]
    head = "".join(
        f'<th class="num"><span class="swatch" style="background:{category_colour(c, categories)}">'
        f"</span>{escape(c)}</th>" for c in used)
    rows = []
    for index, (name, layer) in enumerate(result.layers.items()):
        counts = layer.category_counts()
        share = layer.num_interpretable / max(1, layer.num_units)
        cells = "".join(f'<td class="num">{counts.get(c, 0)}</td>' for c in used)
        rows.append(
            f'<tr><td><a href="#{layer_slug(name, index)}"><code>{escape(name)}</code></a></td>'
            f'<td class="num">{layer.num_interpretable} / {layer.num_units} ({share:.0%})</td>'
            f"{cells}"
            f'<td class="num">{layer.num_concepts_covered}</td>'
            f'<td class="num">{layer.mean_best_iou:.3f}</td></tr>'
        )
    return f"""
<section class="summary" id="summary">
  <h2>Summary across layers</h2>
  <p class="note">Interpretable units per layer, in total and per concept category.</p>
  <div class="table-wrap"><table class="data summary-table"><thead><tr><th>layer</th>
  <th class="num">interpretable</th>{head}<th class="num">concepts</th>
  <th class="num">mean best IoU</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>
</section>"""


def _num(record: Mapping[str, Any], key: str) -> float | None:
    value = record.get(key)
    return float(value) if isinstance(value, (int, float)) and value == value else None


def _ablation_html(result: DissectionResult, layer: str) -> str:
    """The ablation check of ``layer`` (``result.ablations[layer]``) as a table, or ``""``.

    Every measure appears twice, for the chosen units and for the random control, in the same
    units (:data:`~lightning_dissect.report._ablation_table.ABLATION_COLUMNS`).
    """
    records = (result.ablations or {}).get(layer) or []
    if not records:
        return ""
    records = sorted(records, key=lambda r: -(_num(r, "relative_drop") or 0.0))
    rows = []
    for record, cells in zip(records, ablation_rows(records)):
        rel, ctrl = _num(record, "relative_drop"), _num(record, "control_relative_drop")
        units = record.get("units") or []
        bars = "".join(
            f'<span class="bar{cls}" style="width:{max(0.0, min(v, 1.0)) * 100:.0f}%" title="{label}"></span>'
            for v, cls, label in ((rel, "", "units"), (ctrl, " control", "random control")) if v is not None
        )
        rows.append(
            f'<tr><td>{escape(cells[0])}</td>'
            f'<td class="num" title="{escape(", ".join(map(str, units)))}">{cells[1]}</td>'
            + "".join(f'<td class="num">{escape(c)}</td>' for c in cells[2:])
            + f'<td class="barcell">{bars}</td></tr>'
        )
    head = "".join(f'<th class="num">{escape(h)}</th>' for h, _, _ in ABLATION_COLUMNS)
    mode = records[0].get("mode", "zero")
    images = records[0].get("num_images")
    return f"""<h3>Ablation check</h3>
  <p class="note">Per concept, its interpretable units switched off ({escape(str(mode))} ablation{
      ", " + plural(images, "image") if images else ""}), and as a control as many random other units of
  the layer. Each measure is shown for both, side by side: the fraction of all pixels the segmenter
  assigns to the concept before (baseline) and after (ablated), the drop (baseline − ablated, a
  fraction of all pixels) and the relative drop (drop / baseline). A drop well above the random
  control's means the units cause the concept; the bars show both relative drops (dark: units,
  light: random).</p>
  <div class="table-wrap"><table class="data ablation"><thead><tr><th>concept</th>
  <th class="num">units off</th>{head}<th></th></tr></thead>
  <tbody>{"".join(rows)}</tbody></table></div>"""


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def _settings_section(result: DissectionResult) -> str:
    def table(items: Mapping[str, Any]) -> str:
        rows = "".join(
            f"<tr><td><code>{escape(str(k))}</code></td><td>{escape(_value(v))}</td></tr>"
            for k, v in items.items()
        )
        return f'<table class="data kv"><tbody>{rows}</tbody></table>'

    vocab = result.vocabulary
    per_category: dict[str, int] = {}
    for c in vocab.categories:
        per_category[c] = per_category.get(c, 0) + 1
    vocab_line = ", ".join(f"{v} {k}" for k, v in per_category.items())
    meta = (f"<h3>Metadata</h3>{table(result.metadata)}" if result.metadata else "")
    return f"""
<section class="settings" id="settings">
  <h2>Settings</h2>
  {table(result.settings) if result.settings else '<p class="note">No settings recorded.</p>'}
  {meta}
  <h3>Vocabulary</h3>
  <p class="note">{vocab.num_concepts} concepts ({escape(vocab_line)}).</p>
</section>"""
