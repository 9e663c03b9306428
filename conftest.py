"""Doctests of the package: a ``.plot()`` example skips where matplotlib (the ``plot`` extra) is missing.

As for the tests (``tests/conftest.py``), ``LIGHTNING_DISSECT_REQUIRE_EXTRAS=1`` (CI) turns that skip
into a failure: there the example runs and fails on the missing library.
"""

from __future__ import annotations

import os

import pytest
from _pytest.doctest import DoctestItem


def _plots(item: DoctestItem) -> bool:
    return any(".plot(" in example.source for example in item.dtest.examples)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a doctest that calls ``.plot(`` when matplotlib cannot be imported (not in CI)."""
    if not isinstance(item, DoctestItem) or item.dtest is None or not _plots(item):
        return
    if os.environ.get("LIGHTNING_DISSECT_REQUIRE_EXTRAS", "") not in ("", "0"):
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pytest.skip("could not import 'matplotlib' (pip install \"lightning-dissect[plot]\")")
