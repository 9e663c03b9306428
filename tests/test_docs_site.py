"""The documentation site builds offline and loads nothing from outside itself; pages fit the window.

The build test needs ``mkdocs`` (the ``docs`` extra). The ``browser`` tests need Chromium; they open
the built pages headless, measure in the page whether anything is wider than the window, and take
screenshots (kept as ``site_*.png`` in the folder ``LIGHTNING_DISSECT_SITE_SCREENSHOTS`` names, e.g.
``runs/site-screenshots``; no page shows them).
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTERNAL = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)
# (tag, attribute) pairs that make the browser fetch something
RESOURCE_ATTRS = {
    ("script", "src"), ("img", "src"), ("img", "srcset"), ("source", "src"), ("source", "srcset"),
    ("iframe", "src"), ("embed", "src"), ("object", "data"), ("video", "src"), ("video", "poster"),
    ("audio", "src"), ("input", "src"), ("track", "src"),
}
FETCHING_LINK_RELS = {"stylesheet", "preload", "prefetch", "modulepreload", "icon", "shortcut", "manifest",
                      "apple-touch-icon", "preconnect", "dns-prefetch"}
PAGES = {"index": "index.html", "callback": "callback.html", "metrics": "metrics.html", "api": "api.html"}


class _Resources(HTMLParser):
    """Collects every URL a page would fetch by itself (not the links a reader may follow)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []
        self.in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        for attr, value in values.items():
            if (tag, attr) in RESOURCE_ATTRS:
                self.urls += [(f"<{tag} {attr}>", u.split()[0]) for u in value.split(",") if u.strip()]
        if tag == "link" and set(values.get("rel", "").lower().split()) & FETCHING_LINK_RELS:
            self.urls.append(("<link href>", values.get("href", "")))
        if "style" in values:
            self.urls += [("style attribute", u) for u in _css_urls(values["style"])]
        self.in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self.in_style = False

    def handle_data(self, data: str) -> None:
        if self.in_style:
            self.urls += [("<style>", u) for u in _css_urls(data)]


def _css_urls(css: str) -> list[str]:
    found = re.findall(r"url\(\s*['\"]?([^'\")]+)", css)
    found += re.findall(r"@import\s+['\"]([^'\"]+)", css)
    return [html.unescape(u) for u in found]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return out


def test_site_builds_with_every_page(site: Path):
    for page in [*PAGES.values(), "math.html", "report.html", "segmenters.html"]:
        assert (site / page).is_file(), page


def test_site_loads_nothing_from_outside(site: Path):
    offending = []
    for page in sorted(site.rglob("*.html")):
        parser = _Resources()
        parser.feed(page.read_text(encoding="utf-8"))
        offending += [f"{page.relative_to(site)}: {where} {url}" for where, url in parser.urls if EXTERNAL.match(url)]
    for sheet in sorted(site.rglob("*.css")):
        offending += [f"{sheet.relative_to(site)}: {url}" for url in _css_urls(sheet.read_text(encoding="utf-8"))
                      if EXTERNAL.match(url)]
    assert not offending, "resources loaded from outside the site:\n" + "\n".join(offending)
    # links a reader may follow are fine: the check does see them, it only does not count them
    assert "https://" in (site / "index.html").read_text(encoding="utf-8")


class _Links(HTMLParser):
    """Collects the ``href`` of every ``<a>`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


def test_site_is_browsable_from_disk(site: Path):
    """Opened as file://, a link to a folder shows a directory listing: every link must name a file."""
    broken = []
    # 404.html is what a web server shows for a missing page (absolute links, by design); on disk
    # nothing links to it
    pages = sorted(p for p in site.rglob("*.html") if p.name != "404.html")
    assert len(pages) >= 17
    for page in pages:
        parser = _Links()
        parser.feed(page.read_text(encoding="utf-8"))
        for href in parser.hrefs:
            target = href.split("#")[0].split("?")[0]
            if not target or EXTERNAL.match(href) or re.match(r"^[a-z]+:", href):
                continue
            resolved = (page.parent / html.unescape(target)).resolve()
            if not resolved.is_file():
                broken.append(f"{page.relative_to(site)}: {href}")
    assert not broken, "links that do not name a file:\n" + "\n".join(broken[:20])


def test_code_is_highlighted_at_build_time(site: Path):
    page = (site / "interventions.html").read_text(encoding="utf-8")
    assert 'class="language-python highlight"' in page or '<div class="highlight">' in page
    assert '<span class="kn">import</span>' in page          # Pygments tokens, no client-side highlighter
    assert "highlight.min.js" not in page and "hljs" not in page


def test_lists_and_fences_render(site: Path):
    math = (site / "math.html").read_text(encoding="utf-8")
    ordered = math[math.index("<ol>"):math.index("</ol>")]
    assert "IoU(u, c) = Σ I / (Σ A_u + Σ S_c − Σ I)" in ordered      # the formula stays in item 3
    assert ordered.count("<li>") == 4 and "<li>\n<p><strong>Labels.</strong>" in ordered   # item 4 is its own item
    for page in sorted(site.glob("*.html")):
        assert "```" not in page.read_text(encoding="utf-8"), f"{page.name}: a literal code fence"
    report = (site / "report.html").read_text(encoding="utf-8")
    listed = report[report.index("Where the unit images come from"):]
    listed = listed[listed.index("<ol>"):listed.index("</ol>")]
    assert listed.count("<li>") == 3, listed                          # three items, the code inside item 2
    assert "LatentBank" in listed and "highlight" in listed


def test_api_reference_is_public_only_with_defaults(site: Path):
    api = (site / "api.html").read_text(encoding="utf-8")
    text = html.unescape(re.sub(r"<[^>]+>", "", api))
    documented = set(re.findall(r'id="(lightning_dissect\.[\w.]+)"', api))
    for name in ("UnitQuantiles", "unit_concept_iou", "DissectionConfig", "dissect", "DissectionCallback",
                 "load_history", "GeneratorRunner", "find_generator", "TorchvisionSegmenter",
                 "TransformersSegmenter", "SyntheticSceneDataModule", "adapt_input", "merge_segmenters",
                 "ablation_effect", "insert", "ConceptPixelFraction", "DissectionResult", "write_report", "main",
                 "InterpretabilityRule"):
        assert any(d.endswith("." + name) for d in documented), name
    assert len(documented) > 100
    internal = [d for d in documented if any(part.startswith("_") for part in d.split("."))]
    internal += [d for d in documented if d.rsplit(".", 1)[-1] in ("eval_mode", "module_device", "check_segmenter")]
    assert not internal, internal
    assert re.search(r"num_samples\s*:\s*int\s*=\s*1000", text)     # defaults and annotations are shown
    metrics = api[api.index('id="metrics"'):api.index('id="functional"')]
    assert "ConceptPixelFraction" in metrics


# ---------------------------------------------------------------------------------------------- browser

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MEASURE = """
<script>
window.addEventListener("load", function () {
  setTimeout(function () {
    var doc = document.documentElement, wide = [];
    document.querySelectorAll("table, pre, img, .doc-signature").forEach(function (el) {
      var box = el.getBoundingClientRect();
      if (box.right > window.innerWidth + 1) wide.push(el.tagName + "." + el.className + ":" + Math.round(box.right));
    });
    document.querySelectorAll("table").forEach(function (el) {
      if (el.scrollWidth > el.parentElement.clientWidth + 1)
        wide.push("table wider than its column: " + el.scrollWidth + " > " + el.parentElement.clientWidth);
    });
    var out = document.createElement("pre");
    out.id = "overflow-result";
    out.textContent = JSON.stringify({scrollWidth: doc.scrollWidth, innerWidth: window.innerWidth, wide: wide});
    document.body.appendChild(out);
  }, 200);
});
</script>
"""


def find_chromium() -> str | None:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--run-all-compositor-stages-before-draw", f"--user-data-dir={profile}", "--virtual-time-budget=5000"]
    # headless Chromium now and then hangs on start-up on a busy machine: one retry, fresh profile
    for attempt in range(2):
        flags[-2] = f"--user-data-dir={profile}-{attempt}"
        try:
            return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            if attempt == 1:
                raise
    raise AssertionError("unreachable")


@pytest.mark.browser
@pytest.mark.parametrize("width", [1280, 800])
@pytest.mark.parametrize("page", list(PAGES))
def test_page_fits_the_window(site: Path, page: str, width: int, tmp_path: Path):
    import json

    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium (apt-get install -y chromium)")
    source = site / PAGES[page]
    probe = source.with_name(f"probe-{width}.html")        # next to the page: relative assets resolve
    probe.write_text(source.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    dom = chromium(binary, tmp_path / "profile", f"--window-size={width},1000", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="overflow-result">(.*?)</pre>', dom.stdout, re.S)
    assert found, f"the measuring script did not run:\n{dom.stderr[-2000:]}"
    result = json.loads(html.unescape(found.group(1)))
    assert result["scrollWidth"] <= result["innerWidth"], f"{page} at {width}px scrolls sideways: {result}"
    assert not result["wide"], f"{page} at {width}px: elements wider than the window: {result['wide']}"

    shot = tmp_path / f"site_{page}.png"
    chromium(binary, tmp_path / "profile", f"--window-size={width},1000", f"--screenshot={shot}", source.as_uri())
    assert shot.is_file() and shot.stat().st_size > 5000
    keep = os.environ.get("LIGHTNING_DISSECT_SITE_SCREENSHOTS")
    if keep and width == 1280:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(keep) / shot.name)


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "docs" / "scripts").glob("*.py")))
def test_picture_scripts_import_what_exists(script: str):
    """The scripts that draw the docs' pictures compile and name only existing package objects."""
    import ast
    import importlib

    source = (ROOT / "docs" / "scripts" / script).read_text(encoding="utf-8")
    tree = ast.parse(source, script)
    missing = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lightning_dissect"):
            try:
                module = importlib.import_module(node.module)
            except ImportError:
                missing.append(node.module)
                continue
            missing += [f"{node.module}.{a.name}" for a in node.names if not hasattr(module, a.name)]
    assert not missing, f"{script} imports what the package does not have: {missing}"
