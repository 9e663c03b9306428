"""Old import paths that keep working for one release, each with a ``DeprecationWarning``.

A module that moved is not left behind as a file: :class:`MovedModuleFinder` (installed by the
package's ``__init__``) answers ``import lightning_dissect.<old>`` with the module at its new path,
imported only then, and warns with the new path. Names that left the top level are served by
:func:`moved_attribute` from the package's ``__getattr__``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any

#: Old module path -> new module path (both absolute). Kept for one release.
MOVED_MODULES: dict[str, str] = {
    "lightning_dissect.callback": "lightning_dissect.callbacks.generator",
    "lightning_dissect.colours": "lightning_dissect.visual.colours",
    "lightning_dissect.discovery": "lightning_dissect.engine.discovery",
    "lightning_dissect.emergence": "lightning_dissect.callbacks.replay",
    "lightning_dissect.history": "lightning_dissect.callbacks.history",
    "lightning_dissect.hooks": "lightning_dissect.engine.hooks",
    "lightning_dissect.image_callback": "lightning_dissect.callbacks.reader",
    "lightning_dissect.image_folder": "lightning_dissect.engine.image_folder",
    "lightning_dissect.images": "lightning_dissect.engine.images",
    "lightning_dissect.latents": "lightning_dissect.engine.latents",
    "lightning_dissect.round_causal": "lightning_dissect.loggers.causal",
    "lightning_dissect.round_logging": "lightning_dissect.loggers.rounds",
    "lightning_dissect.round_pictures": "lightning_dissect.visual.round_pictures",
    "lightning_dissect.runner": "lightning_dissect.engine.runner",
    "lightning_dissect.strips": "lightning_dissect.dissection.strips",
    "lightning_dissect.visualize": "lightning_dissect.visual.visualize",
}


def _warn(message: str, stacklevel: int) -> None:
    # the warnings module skips the import machinery's frames, so this points at the user's line
    warnings.warn(message, DeprecationWarning, stacklevel=stacklevel + 1)


class _MovedModuleLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        _warn(
            f"`{module.__name__}` moved to `{self.new}`; the old path will be removed in the next release",
            stacklevel=2,
        )
        # the import system returns whatever stands in sys.modules after this call: the new module
        sys.modules[module.__name__] = importlib.import_module(self.new)


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds each old path of :data:`MOVED_MODULES` and loads the module at its new path."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        new = MOVED_MODULES.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedModuleLoader(new))


def install() -> None:
    """Put one :class:`MovedModuleFinder` on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())  # before any finder that could find a stale copy


def moved_module(old: str) -> ModuleType:
    """The module that ``old`` (a key of :data:`MOVED_MODULES`) moved to, with a warning.

    For ``lightning_dissect.<old>`` read as an attribute (no import statement): called from the
    package's ``__getattr__``, the warning points at the caller of that.
    """
    new = MOVED_MODULES[old]
    _warn(f"`{old}` moved to `{new}`; the old path will be removed in the next release", 3)
    module = importlib.import_module(new)
    sys.modules.setdefault(old, module)
    return module


def moved_attribute(old: str, new_module: str, name: str) -> Any:
    """``name`` from ``new_module``, with a warning that ``old`` is deprecated.

    Called from a module's ``__getattr__``; the warning points at the caller of that.
    """
    _warn(f"`{old}` moved to `{new_module}.{name}`; the old path will be removed in the next release", 3)
    return getattr(importlib.import_module(new_module), name)
