"""Compiled inner loops for the statistics, built on first use, with the torch code as fallback.

The statistics of a batch are chains of short torch operations over every upsampled value (a
shift, a subtraction, a clamp, an offset, a ``bincount``): each one a pass over memory, so that on
a machine whose cores share one memory bus a second thread adds little. The loops in
``native_kernels.c`` do each chain in one pass over the values, and ctypes releases the GIL while
they run, so the worker threads of :mod:`lightning_dissect._utils.parallel` run them in parallel.

They are plain C (no Python or torch headers): the first call compiles them with the system's C
compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) into a cache folder
(``$LIGHTNING_DISSECT_CACHE``, else ``$XDG_CACHE_HOME/lightning-dissect`` or
``~/.cache/lightning-dissect``), once per machine and source version. Where there is no compiler,
or ``LIGHTNING_DISSECT_NATIVE=0`` is set, the statistics run as torch operations. Both paths give
the same integers (the tests compare them on the same inputs).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["native_library", "native_enabled", "use_native", "SOURCE", "ENV_SWITCH"]

#: The C source of the kernels (shipped with the package).
SOURCE = Path(__file__).with_name("native_kernels.c")
#: Environment variable: ``0`` (or ``false``, ``no``, ``off``) keeps the statistics in torch.
ENV_SWITCH = "LIGHTNING_DISSECT_NATIVE"
_FLAGS = ["-O3", "-std=c99", "-shared", "-fPIC"]

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_loaded: list[ctypes.CDLL | None] = []  # [] until the first try, then [library or None]
_forced: list[bool | None] = [None]

_i64 = ctypes.c_int64
_ptr = ctypes.c_void_p
_SIGNATURES = {
    "ld_anchored_histogram_f32": [_ptr, _i64, _i64, _i64, _ptr, ctypes.c_int32, _i64, _ptr, _i64, _ptr],
    "ld_count_single_level_f32": [_ptr, _i64, _i64, _i64, _ptr, _ptr, _i64, _i64, _i64, _ptr, _ptr],
    "ld_count_single_level_f64": [_ptr, _i64, _i64, _i64, _ptr, _ptr, _i64, _i64, _i64, _ptr, _ptr],
    "ld_count_levels_f32": [_ptr, _i64, _i64, _i64, _ptr, _i64, _ptr, _i64, _i64, _i64, _ptr, _ptr, _ptr],
}


def _switched_off() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off")


def _cache_dir() -> Path:
    explicit = os.environ.get("LIGHTNING_DISSECT_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lightning-dissect"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build(compiler: str) -> Path:
    """The compiled library in the cache folder, compiled now if it is not there yet.

    A compiler that cannot build the AVX2 variants (see the source) builds the baseline alone.
    """
    error: subprocess.SubprocessError | None = None
    for extra in ([], ["-DLD_NO_DISPATCH"]):
        try:
            return _build_with(compiler, [*_FLAGS, *extra])
        except subprocess.CalledProcessError as exc:
            error = exc
    assert error is not None
    raise error


def _build_with(compiler: str, flags: list[str]) -> Path:
    source = SOURCE.read_bytes()
    tag = hashlib.sha256(
        b"\0".join([source, compiler.encode(), " ".join(flags).encode(), platform.machine().encode(),
                    sys.platform.encode()])
    ).hexdigest()[:16]
    folder = _cache_dir()
    target = folder / f"stats-{tag}.so"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    # several processes (DDP ranks) may build at once: each writes its own file, then renames it
    fd, partial = tempfile.mkstemp(suffix=".so", dir=folder)
    os.close(fd)
    try:
        subprocess.run([compiler, *flags, "-o", partial, str(SOURCE)], check=True, capture_output=True, timeout=120)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def _load() -> ctypes.CDLL | None:
    if not SOURCE.exists():
        return None
    compiler = _compiler()
    if compiler is None:
        _log.info("no C compiler found: the statistics run as torch operations")
        return None
    try:
        library = ctypes.CDLL(str(_build(compiler)))
        for name, argtypes in _SIGNATURES.items():
            function = getattr(library, name)
            function.argtypes = argtypes
            function.restype = None
    except (OSError, subprocess.SubprocessError, AttributeError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        _log.info("the statistics' kernels could not be built (%s%s): they run as torch operations",
                  exc, (": " + detail.decode(errors="replace")[:500]) if detail else "")
        return None
    return library


def native_library() -> ctypes.CDLL | None:
    """The compiled kernels, or ``None`` where they are switched off or cannot be built.

    Examples:
        >>> lib = native_library()
        >>> lib is None or callable(lib.ld_count_levels_f32)
        True
    """
    forced = _forced[0]
    if forced is False or (forced is None and _switched_off()):
        return None
    if not _loaded:
        with _lock:
            if not _loaded:
                _loaded.append(_load())
    return _loaded[0]


def native_enabled() -> bool:
    """Whether the statistics use the compiled kernels now.

    Examples:
        >>> with use_native(False):
        ...     native_enabled()
        False
    """
    return native_library() is not None


@contextmanager
def use_native(enabled: bool) -> Iterator[None]:
    """Use the compiled kernels (where they can be built) or the torch operations inside the block.

    For comparisons of the two paths; it applies to every thread.

    Examples:
        >>> with use_native(False):
        ...     native_library() is None
        True
    """
    before = _forced[0]
    _forced[0] = bool(enabled)
    try:
        yield
    finally:
        _forced[0] = before
