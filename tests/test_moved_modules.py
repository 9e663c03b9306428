"""Module paths that moved keep working for one release, with a DeprecationWarning naming the new path."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

import lightning_dissect
from lightning_dissect._utils.deprecation import MOVED_MODULES

_ROOT = Path(lightning_dissect.__file__).parent

# paths users wrote in the docs, README and examples of the previous release
DOCUMENTED = [
    "lightning_dissect.visualize",
    "lightning_dissect.latents",
    "lightning_dissect.hooks",
    "lightning_dissect.strips",
    "lightning_dissect.round_pictures",
    "lightning_dissect.round_logging",
    "lightning_dissect.emergence",
    "lightning_dissect.callback",
    "lightning_dissect.image_callback",
    "lightning_dissect.images",
    "lightning_dissect.history",
    "lightning_dissect.runner",
]


def test_every_documented_old_path_is_served():
    assert set(DOCUMENTED) <= set(MOVED_MODULES)
    for old, new in MOVED_MODULES.items():
        assert importlib.util.find_spec(new) is not None, new
        assert old.rpartition(".")[2] not in {p.stem for p in _ROOT.glob("*.py")}, f"{old} is a file again"


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_old_path_imports_the_new_module_and_warns(old):
    new = importlib.import_module(MOVED_MODULES[old])
    sys.modules.pop(old, None)  # the warning is given on the first import of the old path
    with pytest.warns(DeprecationWarning, match=f"`{old}` moved to `{MOVED_MODULES[old]}`"):
        module = importlib.import_module(old)
    assert module is new
    assert sys.modules[old] is new


def test_old_path_is_the_same_module_and_its_names_import():
    with pytest.warns(DeprecationWarning, match="lightning_dissect.visual.visualize"):
        sys.modules.pop("lightning_dissect.visualize", None)
        from lightning_dissect.visualize import image_strip
    import lightning_dissect.visual.visualize as new

    assert sys.modules["lightning_dissect.visualize"] is new
    assert image_strip is new.image_strip


def test_old_path_read_as_an_attribute_warns(monkeypatch):
    sys.modules.pop("lightning_dissect.history", None)
    monkeypatch.delattr(lightning_dissect, "history", raising=False)  # set by an earlier import
    with pytest.warns(DeprecationWarning, match="lightning_dissect.callbacks.history"):
        module = lightning_dissect.history
    assert module.load_history is importlib.import_module("lightning_dissect.callbacks.history").load_history
