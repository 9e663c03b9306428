"""Small file-system helpers: atomic writes and up-front checks of output paths.

This module imports nothing from the rest of the package, so any module may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "check_writable_output", "json_text"]


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically: readers see the old file or the new one, never half.

    The text goes to a temporary file in the same folder, is flushed and ``fsync``-ed, then
    renamed over ``path`` with :func:`os.replace` (atomic on POSIX and Windows). Parent folders are
    created. On any error the temporary file is removed and ``path`` is left as it was. The file
    gets the permissions a plain ``open(path, "w")`` would give it: those of the file it replaces,
    else ``0o666`` less the process umask (``mkstemp`` alone would make it private, ``0o600``).

    Args:
        path: The file to write.
        text: Its new content.
        encoding: Text encoding.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Examples:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "sub" / "a.json"
        >>> atomic_write_text(target, '{"a": 1}').read_text()
        '{"a": 1}'
    """
    return _atomic_write(Path(path), text, "w", encoding)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, as :func:`atomic_write_text` writes text.

    Same guarantees: a temporary file in the same folder, ``fsync``-ed and renamed over ``path``;
    on any error ``path`` is left as it was; the permissions of a plain ``open(path, "wb")``.

    Examples:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "sub" / "a.png"
        >>> atomic_write_bytes(target, b"\\x89PNG").read_bytes()
        b'\\x89PNG'
    """
    return _atomic_write(Path(path), data, "wb", None)


def _atomic_write(target: Path, content: str | bytes, mode: str, encoding: str | None) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with contextlib.suppress(OSError):  # e.g. a file system without permissions
            os.chmod(tmp, _open_mode(target))
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        with contextlib.suppress(OSError):
            dir_fd = os.open(target.parent, os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    return target


def _umask() -> int:
    """The process umask, read without changing it where the system tells it (Linux)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def _open_mode(target: Path) -> int:
    """The permission bits ``open(target, "w")`` would leave: the old file's, else ``0o666 & ~umask``."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def json_text(data: Any, path: str | Path | None = None, *, indent: int | None = None) -> str:
    """``data`` as JSON text; also written to ``path`` when given (checked first, then atomically).

    The one ``to_json(path=None)`` of the package's results.

    Examples:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.json"
        >>> json_text({"a": 1}, target), target.read_text()
        ('{"a": 1}', '{"a": 1}')
    """
    text = json.dumps(data, indent=indent)
    if path is not None:
        check_writable_output(path, "path")
        atomic_write_text(path, text)
    return text


def check_writable_output(
    path: str | Path, argument: str, *, directory: bool = False, option: str | None = None
) -> Path:
    """Check, before any work, that ``path`` can be written; create its parent folders.

    Raises a one-line :class:`ValueError` naming ``argument`` when a parent of ``path`` is a file,
    when ``path`` is a directory where a file is expected (or a file where a directory is
    expected, with ``directory=True``), or when the folder that would hold it is not writable.

    Args:
        path: The output file (or, with ``directory=True``, the output folder).
        argument: The name of the argument or option ``path`` came from, used in the error.
        directory: ``path`` is a folder to write into (it is created) rather than a file.
        option: The command-line option ``path`` came from (``"--output"``); when given, the
            error names it as typed instead of quoting ``argument`` as code.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: If ``path`` cannot be written.

    Examples:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> check_writable_output(folder / "new" / "out.json", "output").parent.is_dir()
        True
        >>> check_writable_output(folder, "output")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: `output` ... is a directory, expected a file path
    """
    name = option if option is not None else f"`{argument}`"
    target = Path(path)
    # the first existing ancestor must be a directory
    for parent in [target, *target.parents] if directory else list(target.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(
                    f"{name} {str(target)!r} cannot be written: {str(parent)!r} is a file, "
                    "not a directory"
                )
            break
    if directory:
        folder = target
    else:
        if target.is_dir():
            raise ValueError(f"{name} {str(target)!r} is a directory, expected a file path")
        folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"{name} {str(target)!r} cannot be written: cannot create {str(folder)!r} "
            f"({err.strerror or err})"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {str(target)!r} cannot be written: no write permission on {str(folder)!r}")
    if not directory and target.exists() and not os.access(target, os.W_OK):
        raise ValueError(f"{name} {str(target)!r} cannot be written: the file is read-only")
    return target
