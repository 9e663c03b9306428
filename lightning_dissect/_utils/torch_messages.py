"""The one place that reads the text of torch's errors.

Everywhere else decides by exception *type*. Some of torch's failures come only as a message (a
checkpoint that ``torch.load`` cannot memory-map, a pickle that weights-only loading refuses, a
truncated zip archive); these helpers read that text, so a change of wording in torch is fixed here.
"""

from __future__ import annotations

import pickle

__all__ = ["cannot_mmap", "checkpoint_reason", "is_truncated_checkpoint", "refused_global"]


def cannot_mmap(err: BaseException) -> bool:
    """``torch.load(..., mmap=True)`` refused the file's (legacy, non-zip) format.

    Examples:
        >>> cannot_mmap(RuntimeError("mmap can only be used with files saved with ..."))
        True
    """
    return isinstance(err, RuntimeError) and "mmap" in str(err)


def refused_global(err: BaseException) -> bool:
    """Weights-only loading refused a pickled global (custom objects: a real pickle, no safe load).

    Examples:
        >>> import pickle
        >>> refused_global(pickle.UnpicklingError("Weights only load failed ... Unsupported global: GLOBAL x.Y"))
        True
    """
    return isinstance(err, pickle.UnpicklingError) and "Unsupported global" in str(err)


def is_truncated_checkpoint(err: BaseException) -> bool:
    """The file is truncated or not a torch checkpoint at all (torch's zip reader failed on it).

    Examples:
        >>> is_truncated_checkpoint(RuntimeError("PytorchStreamReader failed reading zip archive"))
        True
    """
    if isinstance(err, EOFError):
        return True
    text = str(err)
    return isinstance(err, (OSError, RuntimeError)) and any(
        marker in text for marker in ("Invalid argument", "PytorchStreamReader", "zip archive", "central directory")
    )


def checkpoint_reason(err: BaseException, limit: int = 200) -> str:
    """A short one-line reason for a checkpoint that failed to load (torch's weights-only errors are paragraphs).

    Examples:
        >>> checkpoint_reason(ValueError("bad   value\\n here"))
        'bad value here'
    """
    text = " ".join(str(err).split())
    if "WeightsUnpickler error:" in text:
        head = text.split("Weights only load failed")[0]
        reason = text.split("WeightsUnpickler error:", 1)[1].split(" Check the documentation")[0].strip()
        text = f"{head}not a torch checkpoint that loads safely ({reason})"
    return text if len(text) <= limit else text[: limit - 3] + "..."
