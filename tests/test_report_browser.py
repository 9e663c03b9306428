"""Open the HTML report in headless Chromium: it renders, its scripts run, its images load.

Needs a Chromium binary (``apt-get install -y chromium``); skipped otherwise. Set
``LIGHTNING_DISSECT_SCREENSHOT=path.png`` to keep the screenshot (the docs' picture is made so).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lightning_dissect.dissection import dissect
from lightning_dissect.report import write_report
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
from tests.helpers.painting import PaintingGenerator

pytestmark = pytest.mark.browser

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    for path in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if os.access(path, os.X_OK):
            return path
    return None


def chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--run-all-compositor-stages-before-draw",
        "--virtual-time-budget=5000",
    ]
    # headless Chromium now and then hangs on start-up on a busy machine: one retry, fresh profile
    for attempt in range(2):
        try:
            return subprocess.run([binary, *flags, f"--user-data-dir={profile}-{attempt}", *args],
                                  capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            if attempt == 1:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    world = SceneWorld(32)
    gen = PaintingGenerator(world, ["tree", "house", "water", "sun", "roof", "door", "cloud"])
    result = dissect(gen, ["layout", "canvas"], SyntheticSceneSegmenter(world),
                     latent_shape=(gen.latent_dim,), num_samples=160, batch_size=80,
                     threshold_mode="iqr", num_levels=32, top_k=6, num_visualized_units=5,
                     progress=False)
    return write_report(result, tmp_path_factory.mktemp("report"), title="Painting generator")


def test_report_renders_and_images_load(report, tmp_path):
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium binary found (install it with `apt-get install -y chromium`)")
    url = report.resolve().as_uri()
    dom = chromium(binary, tmp_path / "profile-dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    marker = re.search(r'<span id="image-status"[^>]*>', dom.stdout)
    assert marker, "report not rendered: " + dom.stdout[:500]
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', marker.group(0)))
    assert attrs["data-checked"] == "true", "the load script did not run"
    total = int(attrs["data-total"])
    assert total == 10  # 5 units x 2 layers
    assert int(attrs["data-loaded"]) == total, f"only {attrs['data-loaded']} of {total} loaded"
    # the table script ran too (it titles every sortable column)
    assert 'title="sort by IoU"' in dom.stdout

    shot = tmp_path / "report.png"
    result = chromium(binary, tmp_path / "profile-shot", "--window-size=1280,1600",
                      f"--screenshot={shot}", "--hide-scrollbars", url)
    assert result.returncode == 0, result.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    keep = os.environ.get("LIGHTNING_DISSECT_SCREENSHOT")
    if keep:
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, keep)
