"""The public surface: the top level holds nouns and whole-run verbs, every intervention lives in
``lightning_dissect.interventions``, no module lists another module's names in ``__all__``, and
``ConceptVocabulary`` behaves like the sequence of names it is."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import lightning_dissect
from lightning_dissect import ConceptVocabulary

ROOT = Path(lightning_dissect.__file__).parent

TOP_LEVEL = {
    "__version__",
    # nouns a user constructs
    "UnitConceptIoU", "UnitQuantiles", "ConceptPixelFraction",
    "DissectionConfig", "DissectionResult", "ConceptVocabulary",
    "LatentBank", "ImageSet", "ImageFolder", "BrodenDataset", "LayerLayout",
    "DissectionCallback", "ImageDissectionCallback", "AblationCheck", "CausalRounds",
    # verbs of a whole run
    "dissect", "dissect_images", "load_history", "dissect_checkpoints", "write_report",
}

INTERVENTIONS = [
    "intervene", "ablate", "insert", "unit_statistics", "random_units", "ablation_effect", "insertion_effect",
    "average_causal_effect", "ablation_curve", "ablation_check", "causal_units", "reader_ablation",
]

#: Names that left the top level in this release, and their home.
LEFT_THE_TOP_LEVEL = {
    "capture_layers": "lightning_dissect.engine.hooks",
    "edit_layers": "lightning_dissect.engine.hooks",
    "LayerEdit": "lightning_dissect.engine.hooks",
    **{name: "lightning_dissect.interventions" for name in [
        "intervene", "ablate", "insert", "ablation_effect", "insertion_effect", "average_causal_effect",
        "ablation_curve", "ablation_check",
    ]},
}


def test_the_top_level_is_nouns_and_whole_run_verbs():
    assert set(lightning_dissect.__all__) == TOP_LEVEL
    assert set(dir(lightning_dissect)) == TOP_LEVEL
    for name in TOP_LEVEL - {"__version__"}:
        obj = getattr(lightning_dissect, name)
        assert obj.__name__ == name


def test_every_intervention_is_importable_from_interventions():
    interventions = importlib.import_module("lightning_dissect.interventions")
    for name in INTERVENTIONS:
        assert name in interventions.__all__, name
        assert callable(getattr(interventions, name)), name


@pytest.mark.parametrize("name", sorted(LEFT_THE_TOP_LEVEL))
def test_names_that_left_the_top_level_still_resolve_with_a_warning(name):
    home = importlib.import_module(LEFT_THE_TOP_LEVEL[name])
    with pytest.warns(DeprecationWarning, match=f"{LEFT_THE_TOP_LEVEL[name]}.{name}"):
        obj = getattr(lightning_dissect, name)
    assert obj is getattr(home, name)


def test_vocabulary_from_segmenters_still_resolves_with_a_warning():
    import lightning_dissect.segmenters as segmenters

    assert "ConceptVocabulary" not in segmenters.__all__
    with pytest.warns(DeprecationWarning, match="lightning_dissect.vocabulary.ConceptVocabulary"):
        from lightning_dissect.segmenters import ConceptVocabulary as old
    assert old is ConceptVocabulary


def test_unknown_top_level_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        lightning_dissect.nothing_here  # noqa: B018


# ---------------------------------------------------------------- no foreign names in __all__
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _parse(module: str) -> tuple[ast.Module, bool] | None:
    base = ROOT.parent.joinpath(*module.split("."))
    for path, is_package in ((base / "__init__.py", True), (base.with_suffix(".py"), False)):
        if path.is_file():
            return ast.parse(path.read_text(encoding="utf-8")), is_package
    return None


def _origin(module: str, name: str, depth: int = 0) -> str:
    """The module that defines ``name`` as seen from ``module``, following ``from x import name``."""
    parsed = _parse(module)
    if parsed is None or depth > 20:
        return module
    tree, is_package = parsed
    package = module if is_package else module.rpartition(".")[0]
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) != name:
                    continue
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if _parse(f"{source}.{alias.name}") is not None:  # a submodule, not a name
                    return f"{source}.{alias.name}"
                return _origin(source, alias.name, depth + 1)
    return module


def _all_of(tree: ast.Module) -> list[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and node.value is not None:
            return [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
    return []


def test_origin_follows_imports_through_packages():
    assert _origin("lightning_dissect.interventions", "causal_units") == "lightning_dissect.interventions.causal"
    assert _origin("lightning_dissect.segmenters.base", "ConceptVocabulary") == "lightning_dissect.vocabulary"
    assert _origin("lightning_dissect.result", "DissectionResult") == "lightning_dissect.result"


def test_no_module_lists_another_modules_names_in_all():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        if module == "lightning_dissect":  # the public facade, loaded lazily by name
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        own = module + "." if path.name == "__init__.py" else None  # a package lists its own modules' names
        for name in _all_of(tree):
            origin = _origin(module, name)
            if origin != module and not (own and origin.startswith(own)):
                found.append(f"{module}: {name} (defined in {origin})")
    assert not found, "names listed in __all__ of a module that does not own them: " + "; ".join(found)


# ---------------------------------------------------------------- the vocabulary as a sequence
NAMES = ("unlabeled", "sky", "tree", "grass", "door")


@pytest.fixture
def vocab():
    return ConceptVocabulary(NAMES, ("none", "material", "object", "material", "part"))


def test_vocabulary_is_a_sequence_of_its_names(vocab):
    reference = list(NAMES)
    assert len(vocab) == len(reference)
    assert list(vocab) == reference
    assert list(reversed(vocab)) == reference[::-1]
    for i in range(-len(reference), len(reference)):
        assert vocab[i] == reference[i]
    assert vocab[1:3] == tuple(reference[1:3])
    assert [vocab.index(n) for n in reference] == [reference.index(n) for n in reference]
    with pytest.raises(IndexError):
        vocab[len(reference)]


def test_vocabulary_membership_is_by_name(vocab):
    for name in NAMES:
        assert name in vocab
    for other in ("trees", "", "Sky", 1, None, ("sky",)):
        assert other not in vocab
    assert bool(vocab)  # a vocabulary has at least one concept


def test_vocabulary_stays_hashable_and_comparable(vocab):
    same = ConceptVocabulary(NAMES, vocab.categories)
    assert same == vocab and hash(same) == hash(vocab)
    assert {vocab: 1}[same] == 1
