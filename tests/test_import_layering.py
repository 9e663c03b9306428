"""The package's imports point one way: no import cycles, including function-level imports.

Every module of ``lightning_dissect`` is parsed with ``ast``; every ``import lightning_dissect...``
and ``from lightning_dissect... import ...`` anywhere in it (module level, in functions, in
methods; relative imports resolved) becomes an edge of the module graph. Imports inside
``if TYPE_CHECKING:`` blocks are skipped: they never run. Imports written inside docstrings
(doctests) are not code and are not seen.

Edges are taken as written: ``from lightning_dissect.segmenters.base import X`` is an edge to
``lightning_dissect.segmenters.base`` only, not also to the parent package ``__init__`` that
Python runs first. Counting those implicit parent edges would turn every package ``__init__``
that re-exports its submodules (``segmenters/__init__`` -> ``segmenters.base``) into a cycle with
each submodule, although the re-export is harmless (the submodule never needs the ``__init__``'s
names). A package ``__init__`` importing its submodules *is* an edge, as are imports of the
package root (``from lightning_dissect import __version__``); the root ``__init__`` only loads
its re-exports lazily by name (``importlib``), which ``ast`` does not see, so it has no edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lightning_dissect

PACKAGE = "lightning_dissect"
ROOT = Path(lightning_dissect.__file__).parent

#: The layer of every folder of the package, lowest first: a module may import only modules of its
#: own layer or below (cycles are refused separately). The longest matching prefix decides, so a new
#: module inside a folder gets its folder's layer; a new top-level module must be placed here. The
#: same table, in words, is the docs page "Map of the package" (docs/architecture.md).
LAYERS: dict[str, int] = {
    # 0: no imports from the package above this line (the root loads its re-exports lazily, by name)
    "lightning_dissect": 0,
    "lightning_dissect._utils": 0,
    "lightning_dissect.vocabulary": 0,
    "lightning_dissect.interpretability": 0,
    # 1: pure tensor math, settings, the result types
    "lightning_dissect.functional": 1,
    "lightning_dissect.config": 1,
    "lightning_dissect.result": 1,
    # 2: concept sources, pictures
    "lightning_dissect.segmenters": 2,
    "lightning_dissect.visual": 2,
    # 3: metrics; how a network is run and fed
    "lightning_dissect.metrics": 3,
    "lightning_dissect.engine": 3,
    # 4: what runs networks: dissection passes and strips, interventions
    "lightning_dissect.dissection": 4,
    "lightning_dissect.interventions": 4,
    # 5: the static report (reads results; never the training side) and the paint app (runs edits)
    "lightning_dissect.report": 5,
    "lightning_dissect.app": 5,
    # 6: round content and the logger writers
    "lightning_dissect.loggers": 6,
    # 7: the training side: callbacks, their history, the replay of a run's checkpoints
    "lightning_dissect.callbacks": 7,
    # round files are read without the training side (the folder writer names them as history does)
    "lightning_dissect.callbacks.history": 1,
    # 8: the command line
    "lightning_dissect.cli": 8,
    "lightning_dissect.__main__": 8,
}

#: Known upward edges in a module being restructured elsewhere; each one is to be deleted from
#: this list when the module that holds the import is reworked. Nothing in ``result``,
#: ``callbacks.history``, ``_utils.io`` or ``report/__init__`` may appear here.
KNOWN_UPWARD_EDGES: set[tuple[str, str]] = set()


def layer_of(module: str) -> int:
    """The layer of ``module``: that of the longest prefix in :data:`LAYERS`."""
    if module == PACKAGE:
        return LAYERS[PACKAGE]
    parts = module.split(".")
    for end in range(len(parts), 1, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise KeyError(module)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """Every ``lightning_dissect`` import target in ``tree``, skipping TYPE_CHECKING blocks."""
    found: list[str] = []
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.extend(f"{target}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return [name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")]


def module_graph() -> dict[str, set[str]]:
    """``module -> modules it imports`` over the whole package."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for target in _imports(tree, name, path.name == "__init__.py"):
            while target not in modules:  # `from pkg import name`: a submodule or an attribute
                target = target.rpartition(".")[0]
            if target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for w in graph[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_the_parser_sees_function_level_relative_and_type_checking_imports():
    source = (
        "from typing import TYPE_CHECKING\n"
        "from lightning_dissect import result\n"
        "from .c import x\n"
        "if TYPE_CHECKING:\n    from lightning_dissect.cli import main\n"
        "else:\n    import lightning_dissect.engine.hooks\n"
        "def f():\n    from ..latents import LatentBank\n    import lightning_dissect.visual.visualize as v\n"
        "class K:\n    def m(self):\n        from lightning_dissect.report._svg import iou_heatmap\n"
    )
    found = _imports(ast.parse(source), "lightning_dissect.pkg.mod", is_package=False)
    assert sorted(found) == sorted([
        "lightning_dissect.result",
        "lightning_dissect.pkg.c.x",
        "lightning_dissect.engine.hooks",
        "lightning_dissect.latents.LatentBank",
        "lightning_dissect.visual.visualize",
        "lightning_dissect.report._svg.iou_heatmap",
    ])
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = module_graph()
    found = cycles(graph)
    assert not found, "import cycles (function-level imports included): " + "; ".join(
        " <-> ".join(c) for c in found
    )


def test_result_depends_on_nothing_above_it():
    graph = module_graph()
    assert closure(graph, "lightning_dissect.result") <= {
        "lightning_dissect._utils.io",
        "lightning_dissect.interpretability",
        "lightning_dissect.vocabulary",
    }
    assert graph["lightning_dissect.vocabulary"] == set()
    assert graph["lightning_dissect.interpretability"] == set()  # the one rule sits at the bottom
    assert graph["lightning_dissect.segmenters.base"] <= {
        "lightning_dissect._utils.checks",
        "lightning_dissect.vocabulary",
    }
    assert graph["lightning_dissect._utils.checks"] == set()
    assert graph["lightning_dissect._utils.io"] == set()
    assert closure(graph, "lightning_dissect.callbacks.history") <= {
        "lightning_dissect.result",
        "lightning_dissect._utils.text",  # wording only; imports nothing of the package
        *closure(graph, "lightning_dissect.result"),
    }


def test_report_does_not_import_the_training_side():
    graph = module_graph()
    above = {"lightning_dissect.callbacks.generator", "lightning_dissect.loggers.rounds", "lightning_dissect.cli",
             "lightning_dissect.callbacks.replay"}
    reports = [m for m in graph if m == "lightning_dissect.report" or m.startswith("lightning_dissect.report.")]
    assert len(reports) > 1  # every module of the package, not only its __init__
    for module in reports:
        allowed = {target for source, target in KNOWN_UPWARD_EDGES if source == module}
        reached = closure({k: v - {t for s, t in KNOWN_UPWARD_EDGES if s == k} for k, v in graph.items()}, module)
        assert not reached & above, (module, reached & above)
        assert allowed <= graph[module], f"{module} no longer imports {allowed}: delete it from KNOWN_UPWARD_EDGES"
    assert "lightning_dissect.report" not in closure(graph, "lightning_dissect.result")


def test_drawing_and_logger_writers_sit_below_the_round_content():
    graph = module_graph()
    assert graph["lightning_dissect.visual.colours"] == set()  # the colour scale's stops live here only
    drawing = closure(graph, "lightning_dissect.visual.round_pictures")
    assert not drawing & {"lightning_dissect.loggers.rounds", "lightning_dissect.callbacks.generator",
                          "lightning_dissect.loggers", "lightning_dissect.report"}
    content = {"lightning_dissect.loggers.rounds", "lightning_dissect.loggers.causal"}  # built here, written below
    writers = [m for m in graph if (m == "lightning_dissect.loggers" or m.startswith("lightning_dissect.loggers."))
               and m not in content]
    assert len(writers) >= 3
    for module in writers:  # writers get the built content: they never reach up into the callback
        assert not closure(graph, module) & {*content, "lightning_dissect.callbacks.generator",
                                             "lightning_dissect.visual.round_pictures"}, module
    # the report takes concept colours from the shared module, not from the logging side
    assert not closure(graph, "lightning_dissect.report.emergence") & {
        "lightning_dissect.visual.round_pictures", "lightning_dissect.loggers.rounds", "lightning_dissect.loggers"}


def test_every_module_has_a_layer_and_imports_point_down():
    graph = module_graph()
    unplaced = []
    for module in graph:
        try:
            layer_of(module)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, f"place these modules in LAYERS: {unplaced}"
    upward = sorted(
        (source, target)
        for source, targets in graph.items()
        for target in targets
        if layer_of(target) > layer_of(source) and (source, target) not in KNOWN_UPWARD_EDGES
    )
    assert not upward, "imports that point up: " + "; ".join(
        f"{s} (layer {layer_of(s)}) -> {t} (layer {layer_of(t)})" for s, t in upward
    )
    stale = [edge for edge in KNOWN_UPWARD_EDGES if edge[1] not in graph.get(edge[0], set())]
    assert not stale, f"these known edges are gone: delete them from KNOWN_UPWARD_EDGES: {stale}"


def test_no_decision_is_made_on_an_error_message():
    """Code decides by exception type; only ``_torch_messages`` reads torch's text."""
    import re

    pattern = re.compile(
        r"""["'][^"'\n]*["']\s+(not\s+)?in\s+str\((err|error|exc|e)\)"""
        r"""|str\((err|error|exc|e)\)\.startswith"""
    )
    found = []
    for name, path in _modules().items():
        if name == "lightning_dissect._utils.torch_messages":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.name}:{number}: {line.strip()}")
    assert not found, "decisions on an error's text: " + "; ".join(found)
