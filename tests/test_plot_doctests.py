"""The ``.plot()`` examples of the metrics' docstrings skip without matplotlib, except in CI.

``LIGHTNING_DISSECT_REQUIRE_EXTRAS=1`` (CI) makes a missing extra a failure, as for the tests.
Each case runs pytest on the three metric modules in a fresh process where ``import matplotlib``
fails (the package is installed, so torchmetrics is imported first, then matplotlib is hidden).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = [f"lightning_dissect/metrics/{m}.py" for m in ("concept_fraction", "unit_quantiles", "unit_concept_iou")]
BLOCK = '''
import sys

import torchmetrics  # noqa: F401  # imported while matplotlib is there; from here on it cannot be imported


class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


for _name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
    del sys.modules[_name]
sys.meta_path.insert(0, _Block())
'''


def _run(tmp_path: Path, require: str) -> subprocess.CompletedProcess:
    (tmp_path / "block_matplotlib.py").write_text(BLOCK, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "LIGHTNING_DISSECT_REQUIRE_EXTRAS": require}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "block_matplotlib", *MODULES],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )


@pytest.mark.parametrize("require", ["", "1"])
def test_plot_doctests_without_matplotlib(tmp_path, require):
    pytest.importorskip("torchmetrics")
    out = _run(tmp_path, require)
    tail = out.stdout[-3000:] + out.stderr[-2000:]
    if require:
        assert out.returncode == 1, tail
        # the three plot examples fail; every other example of those modules still passes
        assert re.search(r"\b3 failed, \d+ passed", tail) and "ModuleNotFoundError" in tail, tail
    else:
        assert out.returncode == 0, tail
        assert "3 skipped" in tail and "could not import 'matplotlib'" in tail, tail
