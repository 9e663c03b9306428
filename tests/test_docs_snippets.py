"""Every Python block in README.md and docs/*.md runs as written, in a fresh process from the repository root.

A block that needs downloaded weights carries an HTML comment containing ``no-run`` on the line
before its fence; it is only compiled.  At most one block in five may be marked.  The selected
blocks run in parallel (one process each); each test then checks its own block's outcome.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
TIMEOUT_S = 300


def python_blocks(path: Path) -> list[tuple[int, str, bool]]:
    """(line of the opening fence, dedented source, marked no-run) for each ```python block of ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2)
        start, body, i = i, [], i + 1
        while i < len(lines) and not re.match(rf"^{re.escape(indent)}```\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"{path.name}:{start + 1}: unclosed code fence"
        i += 1
        if lang in ("python", "py", "python3"):
            previous = lines[start - 1] if start > 0 else ""
            marked = "<!--" in previous and "no-run" in previous
            blocks.append((start + 1, textwrap.dedent("\n".join(body)) + "\n", marked))
    return blocks


BLOCKS = {
    f"{path.relative_to(ROOT).as_posix()}:{line}": (src, marked)
    for path in PAGES
    for line, src, marked in python_blocks(path)
}


def _run(name: str) -> subprocess.CompletedProcess:
    src, _ = BLOCKS[name]
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "block.py"
        script.write_text(src, encoding="utf-8")
        env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        try:
            return subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(exc.cmd, -1, "", f"timed out after {TIMEOUT_S} s")


@pytest.fixture(scope="module")
def outcomes(request) -> dict[str, subprocess.CompletedProcess]:
    """Run every selected, unmarked block at once (parallel processes) and keep the outcomes."""
    selected = [item.callspec.params["name"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_block_runs" and hasattr(item, "callspec")]
    names = [n for n in selected if not BLOCKS[n][1]]
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        return dict(zip(names, pool.map(_run, names)))


def test_blocks_are_found():
    assert len(BLOCKS) >= 20, list(BLOCKS)
    # an indented fence inside a list item is found too
    assert any(src.startswith("from ") and name.startswith("docs/report.md") for name, (src, _) in BLOCKS.items())


def test_at_most_one_block_in_five_is_marked_no_run():
    marked = [name for name, (_, m) in BLOCKS.items() if m]
    assert 5 * len(marked) <= len(BLOCKS), f"{len(marked)} of {len(BLOCKS)} blocks marked no-run: {marked}"


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_compiles(name: str):
    code = compile(BLOCKS[name][0], name, "exec")
    assert code.co_filename == name


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, (_, marked) in BLOCKS.items() if not marked])
def test_block_runs(name: str, outcomes: dict[str, subprocess.CompletedProcess]):
    proc = outcomes[name]
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
