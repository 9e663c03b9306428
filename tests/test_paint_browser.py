"""The paint page in a real browser: headless Chromium, driven by Playwright, paints and erases a tree.

Playwright drives the system's Chromium (``executable_path``; no browser download). Skipped where
no Chromium binary is installed (CI installs it: ``scripts/dev.sh test``). The numbers asserted are
computed here from the page's own images, segmented again with NumPy-side code, not read from the
page. Set ``LIGHTNING_DISSECT_SCREENSHOT=path.png`` to keep the screenshot taken after the paint
(the docs' picture ``docs/images/paint.png`` is made so).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from lightning_dissect.app import Painter
from tests.helpers.paint_app import SIZE, decode_data_url, fractions, painting_setup, runs_to_mask, tree_sample
from tests.test_report_browser import find_chromium

pytestmark = pytest.mark.browser

playwright_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from lightning_dissect.app.server import PaintServer, create_app  # noqa: E402

FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def setup():
    return painting_setup()


@pytest.fixture(scope="module")
def server(setup):
    painter = Painter(setup.generator, setup.result, setup.segmenter, statistics_samples=64,
                      generator_name="tests.helpers.paint_app:make_generator")
    with PaintServer(create_app(painter)) as running:
        yield running


@pytest.fixture(scope="module")
def page(server):
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium binary found (install it with `apt-get install -y chromium`)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(server.url)
        page.wait_for_function("document.getElementById('edited').dataset.version === '1'")
        yield page
        browser.close()
        assert not errors, errors


def grass_seed(setup) -> int:
    """The first seed whose lower-left band (where the test paints) is all grass."""
    from lightning_dissect.app.edits import sample_bank

    grass = setup.world.vocabulary.index("grass")
    for seed in range(100):
        z = sample_bank(seed, (setup.generator.latent_dim,)).latents
        labels = setup.segmenter(setup.generator(z))[0].numpy()
        if (labels[38:60, 2:44] == grass).all():
            return seed
    raise AssertionError("no sample with a plain lawn")


def open_seed(page, seed: int) -> None:
    version = int(page.get_attribute("#edited", "data-version"))
    page.fill("#seed-input", str(seed))
    page.click("#seed-go")
    wait_render(page, version)


def wait_render(page, version: int) -> None:
    page.wait_for_function(f"Number(document.getElementById('edited').dataset.version) > {version}", timeout=60_000)


def brush(page, points: list[tuple[float, float]]) -> None:
    """Drag the mouse through ``points`` (image pixel coordinates) on the paintable image."""
    version = int(page.get_attribute("#edited", "data-version"))
    frame = page.locator("#brush").bounding_box()

    def at(x: float, y: float) -> tuple[float, float]:
        return frame["x"] + (x + 0.5) / SIZE * frame["width"], frame["y"] + (y + 0.5) / SIZE * frame["height"]

    page.mouse.move(*at(*points[0]))
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*at(*point), steps=4)
    page.mouse.up()
    wait_render(page, version)


def shown(page) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """The page's original and edited images, the region of its strokes, and its numbers."""
    original = decode_data_url(page.get_attribute("#original", "src"))
    edited = decode_data_url(page.get_attribute("#edited", "src"))
    edit = page.evaluate("state.last.edit")
    region = np.zeros((SIZE, SIZE), dtype=bool)
    for stroke in edit["strokes"]:
        region |= runs_to_mask(stroke["mask"])
    stats = page.evaluate("state.last.stats")
    return original, edited, region, stats


def test_paint_a_tree_then_erase_one(page, setup, tmp_path):
    tree = setup.world.vocabulary.index("tree")
    open_seed(page, grass_seed(setup))
    page.select_option("#concept", "tree")
    page.click("#tool-draw")
    brush(page, [(8, 50), (20, 47), (32, 49), (38, 52)])
    assert page.get_attribute("#edited", "data-strokes") == "1"
    original, edited, region, stats = shown(page)
    assert region.sum() > 150  # the stroke, as the page sent it
    inside_before, outside_before = fractions(original, region, tree, setup.segmenter)
    inside_after, outside_after = fractions(edited, region, tree, setup.segmenter)
    assert inside_after - inside_before > 0.5, (inside_before, inside_after)  # a tree where the brush went
    assert abs(outside_after - outside_before) < 0.03, (outside_before, outside_after)  # barely elsewhere
    assert stats["inside_after"] == pytest.approx(inside_after)  # and the page says so
    assert stats["outside_after"] == pytest.approx(outside_after)
    assert "+" in page.inner_text("#in-delta")
    screenshot = os.environ.get("LIGHTNING_DISSECT_SCREENSHOT") or str(tmp_path / "paint.png")
    page.screenshot(path=screenshot, full_page=True)

    page.click("#undo")  # undo takes the stroke back
    page.wait_for_function("document.getElementById('edited').dataset.strokes === '0'")
    assert np.array_equal(decode_data_url(page.get_attribute("#edited", "src")), original)

    seed, tree_mask = tree_sample(setup)
    open_seed(page, seed)
    page.click("#tool-erase")
    rows, cols = np.nonzero(tree_mask)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()  # the brush is wider
    zigzag = [(left, top)]
    for y in range(top, bottom + 1, 4):
        zigzag += [(right, y), (left, min(y + 2, bottom))]
    brush(page, [(float(np.clip(x, 0, SIZE - 1)), float(np.clip(y, 0, SIZE - 1))) for x, y in zigzag])
    original, edited, region, stats = shown(page)
    assert region[tree_mask].mean() > 0.95  # the brush covered the tree
    inside_before, outside_before = fractions(original, region, tree, setup.segmenter)
    inside_after, outside_after = fractions(edited, region, tree, setup.segmenter)
    assert inside_before > 0.15 and inside_after < 0.02, (inside_before, inside_after)  # the tree is gone
    assert abs(outside_after - outside_before) < 0.03, (outside_before, outside_after)
    assert "−" in page.inner_text("#in-delta")


def test_units_tab_lists_units_with_strips(page, tmp_path):
    page.click("#tab-units")
    page.wait_for_selector("#units-table tbody tr")
    page.check("#units-interpretable")
    rows = page.locator("#units-table tbody tr")
    assert rows.count() == 5  # the five concept units; the random unit is filtered out
    page.select_option("#units-concept", "tree")
    assert rows.count() == 1 and "tree" in rows.first.inner_text()
    page.wait_for_function("document.querySelector('#units-table tbody img').naturalWidth > 0")
    page.select_option("#units-concept", "")
    page.wait_for_function("[...document.querySelectorAll('#units-table tbody img')].every(i => i.naturalWidth > 0)")
    screenshot = os.environ.get("LIGHTNING_DISSECT_SCREENSHOT")
    page.screenshot(path=screenshot.replace(".png", "_units.png") if screenshot else str(tmp_path / "units.png"))
    page.select_option("#units-concept", "tree")
    page.click("#units-table tbody button")  # paint with this unit: back to the paint view, unit set = it
    assert page.is_visible("#paint-view") and page.input_value("#units") == "0"


def test_a_bad_unit_set_shows_a_clear_message(page):
    page.click("#tab-paint")
    page.click("#reset")
    page.fill("#units", "0, 99")
    page.check("#use-units")
    frame = page.locator("#brush").bounding_box()
    page.mouse.move(frame["x"] + 20, frame["y"] + 20)
    page.mouse.down()
    page.mouse.move(frame["x"] + 60, frame["y"] + 40, steps=4)
    page.mouse.up()
    page.wait_for_selector("#message.error")
    assert "unit 99 is out of range: layer 'layout' has 6 units (0 to 5)" in page.inner_text("#message")
    assert page.evaluate("state.strokes.length") == 0  # the refused stroke is taken back
