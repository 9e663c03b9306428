"""Every ``pip install 'lightning-dissect[...]'`` hint names an extra that pip accepts.

The extras are read from ``pyproject.toml``'s ``[project.optional-dependencies]``; the hints are
found by scanning the package, the docs, the README, the examples and the test configuration.
Hints built from a template (``missing_extra(..., extra)``) are checked at every call site.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HINT = re.compile(r"lightning-dissect\[([^\]]*)\]")
SCANNED = ["lightning_dissect", "docs", "examples", "benchmarks", "scripts", "README.md", "conftest.py", "mkdocs.yml"]


def extras() -> set[str]:
    """The names of ``[project.optional-dependencies]`` (read as text: tomllib is Python 3.11+)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return {_normalise(m.group(1)) for m in re.finditer(r"^([A-Za-z0-9][\w.-]*)\s*=\s*\[", section, re.M)}


def _normalise(name: str) -> str:  # PEP 685: extras compare normalised
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def scanned_files() -> list[Path]:
    files = []
    for entry in SCANNED:
        path = ROOT / entry
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in sorted(path.rglob("*")) if p.suffix in {".py", ".md", ".sh", ".toml", ".yml", ".txt"}]
    return files


def test_every_install_hint_names_an_existing_extra():
    known = extras()
    assert {"torchvision", "transformers", "plot"} <= known
    hints, wrong = 0, []
    for path in scanned_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in HINT.finditer(line):
                hints += 1
                for name in match.group(1).split(","):
                    if "{" in name:  # a template: its call sites are checked below
                        continue
                    if _normalise(name) not in known:
                        wrong.append(f"{path.relative_to(ROOT)}:{number}: [{match.group(1)}]")
    assert hints >= 5, "the scan found no install hints: is it looking in the right places?"
    assert not wrong, f"install hints naming extras that pyproject.toml does not define {sorted(known)}: {wrong}"


def test_templated_install_hints_name_existing_extras():
    known = extras()
    calls = 0
    for path in (ROOT / "lightning_dissect").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            name = getattr(node.func, "id", getattr(node.func, "attr", "")) if isinstance(node, ast.Call) else ""
            if name == "missing_extra":
                calls += 1
                keywords = {k.arg: k.value for k in node.keywords}
                extra = node.args[2] if len(node.args) > 2 else keywords["extra"]
                assert isinstance(extra, ast.Constant), f"{path}: missing_extra's extra must be a literal"
                assert _normalise(extra.value) in known, f"{path}:{node.lineno}: extra {extra.value!r} does not exist"
    assert calls >= 2


def test_the_adapter_message_names_the_extra():
    from lightning_dissect.segmenters._adapter import missing_extra

    message = str(missing_extra("TorchvisionSegmenter", "torchvision", "torchvision"))
    assert "lightning-dissect[torchvision]" in message


def test_the_image_folder_hint_installs_pillow():
    source = (ROOT / "lightning_dissect").rglob("image_folder.py")
    text = next(source).read_text(encoding="utf-8")
    assert "lightning-dissect[images]" not in text
    assert "pip install 'pillow" in text
