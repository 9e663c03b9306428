"""Open ``emergence.html`` in headless Chromium: it renders, its script runs, its strips load.

Skipped without a Chromium binary. ``LIGHTNING_DISSECT_EMERGENCE_SCREENSHOT=path.png`` keeps the
screenshot.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from lightning_dissect.cli import main
from tests.test_emergence import FACTORY, SERIES, write_checkpoint
from tests.test_report_browser import chromium, find_chromium

pytestmark = pytest.mark.browser


def test_emergence_page_renders_in_chromium(tmp_path, capsys):
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium binary found (install it with `apt-get install -y chromium`)")
    for step, rows in SERIES.items():
        write_checkpoint(tmp_path / "ck" / f"step{step}.ckpt", step, rows)
    out = tmp_path / "out"
    code = main(["emergence", "--generator", FACTORY, "--layers", "layout", "canvas", "--quiet",
                 "--num-samples", "48", "--batch-size", "24", "--top-k", "3", "--report-units", "4",
                 "--visualize-units", "0", "--no-tensorboard", "--checkpoints", str(tmp_path / "ck"),
                 "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    url = (out / "emergence.html").resolve().as_uri()
    dom = chromium(binary, tmp_path / "profile-dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    marker = re.search(r'<span id="emergence-status"[^>]*>', dom.stdout)
    assert marker, "page not rendered: " + dom.stdout[:500]
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', marker.group(0)))
    assert attrs["data-checked"] == "true", "the page script did not run"
    # the best 4 units of layout; none of canvas: its units' IoU (0) never exceeds their chance IoU (0)
    assert int(attrs["data-total"]) == 4
    assert attrs["data-loaded"] == attrs["data-total"]
    assert int(attrs["data-charts"]) == 3  # two unit grids, one line chart (canvas has no unit)

    shot = tmp_path / "emergence.png"
    result = chromium(binary, tmp_path / "profile-shot", "--window-size=1280,1800", f"--screenshot={shot}",
                      "--hide-scrollbars", url)
    assert result.returncode == 0, result.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    keep = os.environ.get("LIGHTNING_DISSECT_EMERGENCE_SCREENSHOT")
    if keep:
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, keep)
