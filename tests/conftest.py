import os

import numpy as np
import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A private, seeded torch generator (tests never touch the global RNG)."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def nprng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(params=["native", "torch"])
def statistics_path(request):
    """Run a test with the compiled statistics kernels, then with the torch operations alone.

    A test of a torch-only code path overrides it:
    ``@pytest.mark.parametrize("statistics_path", ["torch"], indirect=True)``.
    """
    from lightning_dissect._utils import native
    from lightning_dissect._utils.native import native_library, use_native

    if request.param == "native" and native._compiler() is None:
        pytest.skip("needs a C compiler on PATH (the statistics' kernels are built with it)")
    if request.param == "native" and native_library() is None:
        pytest.fail("a C compiler is on PATH but the statistics' kernels could not be built with it")
    with use_native(request.param == "native"):
        yield request.param


# ------------------------------------------------------------------ required extras
# `scripts/dev.sh test` (CI) sets LIGHTNING_DISSECT_REQUIRE_EXTRAS=1: there a test that skips because
# one of these libraries is missing fails instead (only tests needing downloaded weights may skip).
REQUIRED_EXTRAS = ("transformers", "scipy", "torchvision", "PIL", "wandb", "mlflow", "matplotlib", "fastapi", "uvicorn",
                   "httpx", "playwright")


def _missing_required_extra(report) -> str | None:
    if os.environ.get("LIGHTNING_DISSECT_REQUIRE_EXTRAS", "") in ("", "0") or not report.skipped:
        return None
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    for extra in REQUIRED_EXTRAS:
        if f"could not import '{extra}" in reason:
            return reason
    return None


def _fail(report, reason: str) -> None:
    report.outcome = "failed"
    report.longrepr = f"LIGHTNING_DISSECT_REQUIRE_EXTRAS=1: a required test library is missing ({reason})"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    reason = _missing_required_extra(report)
    if reason is not None:
        _fail(report, reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    reason = _missing_required_extra(report)
    if reason is not None:
        _fail(report, reason)
