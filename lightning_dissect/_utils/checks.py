"""Argument validation shared by the functional API, the metrics and the segmenter validators.

Every error names the argument and says what was expected, so that a mistake is caught at the first
batch rather than after hours of training. One rule decides the exception type:

* ``TypeError``: the argument has the wrong Python type or the wrong tensor dtype (a list where a
  tensor is expected, ``True`` where a count is expected, float labels, integer activations).
* ``ValueError``: the type is right but the shape, size or values are not (wrong rank, a unit
  count that does not match, a size of 0, NaN, labels outside the vocabulary, levels outside
  ``[0, 1]``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal, Sequence, overload

import torch
from torch import Tensor

__all__ = [
    "argument_name",
    "ImageRangeError",
    "check_activations",
    "check_choice",
    "check_flag",
    "check_int",
    "check_real",
    "check_finite",
    "check_ignore_index",
    "check_images",
    "check_levels",
    "check_mask",
    "check_segmentation",
    "check_size",
    "check_thresholds",
]


class ImageRangeError(ValueError):
    """Images with values outside the declared ``value_range`` (the caller may add the fix)."""


def argument_name(name: str) -> str:
    """How a message names an argument: quoted as code, or as it is for a command-line option.

    Every check that names its argument takes the name as a parameter (``argument=``, ``name=``);
    the command line passes its option (``--layers``), which is shown as typed.

    Examples:
        >>> argument_name("layers"), argument_name("--layers")
        ('`layers`', '--layers')
    """
    return name if name.startswith("-") else f"`{name}`"


def _shape(t: Tensor | Sequence[int]) -> str:
    shape = t.shape if isinstance(t, Tensor) else t
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@overload
def check_int(value: Any, name: str, *, minimum: int | None = None, optional: Literal[False] = False) -> int: ...


@overload
def check_int(value: Any, name: str, *, minimum: int | None = None, optional: bool) -> int | None: ...


def check_int(value: Any, name: str, *, minimum: int | None = None, optional: bool = False) -> int | None:
    """Check an integer setting: an ``int`` (NumPy integers too, never a ``bool``) of at least ``minimum``.

    The one integer validator: counts (``minimum=1``, or 0 where none is allowed), sizes, seeds and
    schedules all use it. A wrong *type* (``"x"``,
    ``2.5``, ``True``) is a ``TypeError``, a value below ``minimum`` a ``ValueError``; both name
    the argument.

    Args:
        value: The value to check.
        name: The argument's name, used in the message.
        minimum: The smallest allowed value (``None``: any int).
        optional: Also accept ``None`` (returned as is).

    Returns:
        The value as a plain ``int`` (or ``None``).

    Examples:
        >>> import numpy as np
        >>> check_int(np.int64(3), "seed"), check_int(None, "top_k", optional=True)
        (3, None)
        >>> check_int(True, "num_units", minimum=1)
        Traceback (most recent call last):
        ...
        TypeError: `num_units` must be an int, got True (bool)
        >>> check_int(2.5, "ablation_samples", minimum=1)
        Traceback (most recent call last):
        ...
        TypeError: `ablation_samples` must be an int, got 2.5 (float)
    """
    if value is None and optional:
        return None
    if not _is_int(value):
        kind = "an int or None" if optional else "an int"
        raise TypeError(f"{argument_name(name)} must be {kind}, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{argument_name(name)} must be at least {minimum}, got {value!r}")
    return int(value)


def check_real(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> float | None:
    """Check a real-valued setting: a finite number (not a ``bool``) in ``[low, high]``.

    ``low_open``/``high_open`` exclude the bounds. A wrong type is a ``TypeError``, NaN, an
    infinity or a value outside the interval a ``ValueError``; both name the argument.

    Returns:
        The value as a plain ``float`` (or ``None`` when ``optional``).

    Examples:
        >>> check_real(0.99, "quantile", low=0, high=1, low_open=True, high_open=True)
        0.99
        >>> check_real(1.0, "quantile", low=0, high=1, low_open=True, high_open=True)
        Traceback (most recent call last):
        ...
        ValueError: `quantile` must be in (0, 1), got 1.0
    """
    if value is None and optional:
        return None
    if isinstance(value, Tensor) and value.ndim == 0 and not value.dtype == torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "a number or None" if optional else "a number"
        raise TypeError(f"{argument_name(name)} must be {kind}, got {value!r} ({type(value).__name__})")
    number = float(value)
    interval = (
        ("(" if low_open else "[") + ("-inf" if low is None else f"{low:g}") + ", "
        + ("inf" if high is None else f"{high:g}") + (")" if high_open else "]")
    )
    inside = math.isfinite(number)
    if low is not None:
        inside = inside and (number > low if low_open else number >= low)
    if high is not None:
        inside = inside and (number < high if high_open else number <= high)
    if not inside:
        raise ValueError(f"{argument_name(name)} must be in {interval}, got {value!r}")
    return number


def check_flag(value: Any, name: str) -> bool:
    """Check an on/off setting: a ``bool`` (NumPy's too), never ``0``/``1`` or a string.

    Examples:
        >>> check_flag(False, "progress")
        False
        >>> check_flag("no", "progress")
        Traceback (most recent call last):
        ...
        TypeError: `progress` must be True or False, got 'no' (str)
    """
    if isinstance(value, bool) or type(value).__name__ in ("bool_", "bool"):
        return bool(value)
    raise TypeError(f"{argument_name(name)} must be True or False, got {value!r} ({type(value).__name__})")


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """Check a setting that takes one of a few names.

    Examples:
        >>> check_choice("iqr", "threshold_mode", ("quantile", "iqr"))
        'iqr'
        >>> check_choice("max", "threshold_mode", ("quantile", "iqr"))
        Traceback (most recent call last):
        ...
        ValueError: `threshold_mode` must be one of 'quantile', 'iqr'; got 'max'
    """
    listed = ", ".join(repr(c) for c in choices)
    if not isinstance(value, str):
        raise TypeError(f"{argument_name(name)} must be one of {listed}; got {value!r} ({type(value).__name__})")
    if value not in choices:
        raise ValueError(f"{argument_name(name)} must be one of {listed}; got {value!r}")
    return value


def check_ignore_index(value: Any, name: str = "ignore_index") -> int | None:
    """Check an optional label index: ``None`` or an ``int`` (not a ``bool``).

    Examples:
        >>> check_ignore_index(255)
        255
        >>> check_ignore_index(True)
        Traceback (most recent call last):
        ...
        TypeError: `ignore_index` must be an int or None, got True (bool)
    """
    if value is None:
        return None
    if not _is_int(value):
        raise TypeError(f"{argument_name(name)} must be an int or None, got {value!r} ({type(value).__name__})")
    return int(value)


def check_levels(levels: Any, name: str = "quantiles") -> tuple[Tensor, bool]:
    """Check quantile levels: one number (or 0-d tensor) or a non-empty sequence, all in ``[0, 1]``.

    Returns:
        ``(levels, scalar)``: the levels as a float64 ``(Q,)`` tensor and whether one level was
        given as a scalar (a Python number or a 0-d tensor).

    Examples:
        >>> check_levels(torch.tensor(0.5))
        (tensor([0.5000], dtype=torch.float64), True)
        >>> check_levels([0.5, 0.99])[0].tolist()
        [0.5, 0.99]
    """
    if isinstance(levels, bool) or (isinstance(levels, Tensor) and levels.dtype == torch.bool):
        raise TypeError(f"{argument_name(name)} must be levels in [0, 1], got a bool: {levels!r}")
    if isinstance(levels, (str, bytes)):
        raise TypeError(f"{argument_name(name)} must be a number or a sequence of numbers, got {levels!r}")
    if isinstance(levels, numbers.Real):
        scalar, tensor = True, torch.tensor([float(levels)], dtype=torch.float64)
    elif isinstance(levels, Tensor):
        if levels.is_complex():
            raise TypeError(f"{argument_name(name)} must hold real levels in [0, 1], got dtype {levels.dtype}")
        if levels.ndim > 1:
            raise ValueError(f"{argument_name(name)} must be one level or a 1-D sequence, got shape {_shape(levels)}")
        scalar, tensor = levels.ndim == 0, levels.detach().to("cpu", torch.float64).reshape(-1)
    else:
        try:
            values = [float(v) for v in levels]
        except TypeError:
            raise TypeError(
                f"{argument_name(name)} must be a number or a sequence of numbers, got {type(levels).__name__}"
            ) from None
        if any(isinstance(v, bool) for v in levels):
            raise TypeError(f"{argument_name(name)} must be levels in [0, 1], got a bool in {levels!r}")
        scalar, tensor = False, torch.tensor(values, dtype=torch.float64)
    if tensor.numel() == 0:
        raise ValueError(f"{argument_name(name)} must hold at least one level in [0, 1], got an empty {levels!r}")
    if not bool(((tensor >= 0) & (tensor <= 1)).all()):  # also false for NaN
        raise ValueError(f"{argument_name(name)} must be levels in [0, 1], got {levels!r}")
    return tensor, scalar


def check_size(size: Any, name: str = "size") -> tuple[int, int]:
    """Check a target size: one positive ``int`` or a pair ``(H, W)`` of them.

    Examples:
        >>> check_size(8), check_size((4, torch.tensor(6)))
        ((8, 8), (4, 6))
        >>> check_size(0)
        Traceback (most recent call last):
        ...
        ValueError: `size` must be positive, got 0
    """
    if isinstance(size, Tensor) and size.ndim == 0:
        size = size.item()
    if isinstance(size, (bool, str, bytes)):
        raise TypeError(f"{argument_name(name)} must be an int or a pair (H, W) of ints, got {size!r}")
    if _is_int(size):
        pair: tuple[Any, ...] = (size, size)
    elif isinstance(size, (Sequence, torch.Size, Tensor)):
        pair = tuple(s.item() if isinstance(s, Tensor) and s.ndim == 0 else s for s in size)
        if len(pair) != 2:
            raise ValueError(f"{argument_name(name)} must be an int or a pair (H, W), got {tuple(pair)!r}")
        if not all(_is_int(s) for s in pair):
            raise TypeError(f"{argument_name(name)} must be an int or a pair (H, W) of ints, got {tuple(pair)!r}")
    else:
        raise TypeError(f"{argument_name(name)} must be an int or a pair (H, W) of ints, got {size!r}")
    if min(pair) < 1:
        raise ValueError(f"{argument_name(name)} must be positive, got {size!r}")
    return int(pair[0]), int(pair[1])


def check_finite(tensor: Tensor, name: str, hint: str = "") -> None:
    """Raise ``ValueError`` naming ``name`` if ``tensor`` holds NaN or infinite values.

    Args:
        tensor: The tensor to check (integer tensors always pass).
        name: Argument name used in the message.
        hint: Optional advice appended to the message.
    """
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    # one fast reduction first: a NaN or an infinity makes the sum NaN or infinite; only a sum
    # that overflows (or a real NaN / inf) needs the element-wise check
    if bool(torch.isfinite(tensor.sum())):
        return
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(
            f"{argument_name(name)} contains {bad} NaN or infinite value(s)" + (f"; {hint}" if hint else "")
        )


def check_activations(
    activations: Tensor,
    *,
    num_units: int | None,
    name: str = "activations",
    allow_flat: bool = False,
    check_values: bool = True,
) -> None:
    """Check a ``(B, U, h, w)`` (or, with ``allow_flat``, ``(N, U)``) activation tensor.

    Args:
        activations: The tensor to check.
        num_units: Expected number of units (dimension 1), or ``None`` for any.
        name: Argument name used in error messages.
        allow_flat: Also accept 2-D ``(N, U)`` tensors.
        check_values: Also check for NaN / Inf (costs one pass over the data).

    Examples:
        >>> check_activations(torch.zeros(2, 3, 4, 4), num_units=3)
        >>> check_activations(torch.zeros(2, 4, 4), num_units=3)
        Traceback (most recent call last):
        ...
        ValueError: `activations` must be 4-D (B, U, h, w), got shape (2, 4, 4)
    """
    if not isinstance(activations, Tensor):
        raise TypeError(f"{argument_name(name)} must be a torch.Tensor, got {type(activations).__name__}")
    ranks = (2, 4) if allow_flat else (4,)
    if activations.ndim not in ranks:
        expected = "4-D (B, U, h, w) or 2-D (N, U)" if allow_flat else "4-D (B, U, h, w)"
        raise ValueError(f"{argument_name(name)} must be {expected}, got shape {_shape(activations)}")
    if not activations.is_floating_point():
        raise TypeError(f"{argument_name(name)} must be a floating tensor, got dtype {activations.dtype}")
    if num_units is not None and activations.shape[1] != num_units:
        raise ValueError(
            f"{argument_name(name)} has {activations.shape[1]} units (dimension 1 of shape "
            f"{_shape(activations)}) but the metric was built with num_units={num_units}"
        )
    if check_values:
        check_finite(activations, name, "activations must be finite (check the generator for diverged weights)")


def check_segmentation(
    segmentation: Tensor,
    *,
    num_concepts: int,
    ignore_index: int | None = None,
    batch_size: int | None = None,
    name: str = "segmentation",
    check_values: bool = True,
    multilabel: bool | None = None,
    batch_source: str = "the activations",
    range_hint: str = "",
) -> None:
    """Check integer concept labels ``(B, H, W)`` or multi-label ``(B, L, H, W)``.

    Args:
        segmentation: The label tensor.
        num_concepts: Labels must lie in ``[0, num_concepts)`` (or equal ``ignore_index``).
        ignore_index: A label value that marks pixels belonging to no concept.
        batch_size: Expected batch size (dimension 0), or ``None``.
        name: Argument name used in error messages.
        check_values: Also check the label range (costs one pass over the data).
        multilabel: If given, require rank 4 (``True``) or rank 3 (``False``).
        batch_source: What ``batch_size`` is the batch size of (for the message).
        range_hint: Appended to the message on labels out of range.

    Examples:
        >>> check_segmentation(torch.zeros(2, 8, 8, dtype=torch.long), num_concepts=3)
        >>> check_segmentation(torch.full((2, 8, 8), 3), num_concepts=3)
        Traceback (most recent call last):
        ...
        ValueError: `segmentation` has labels outside [0, 3): found values in [3, 3]
    """
    if not isinstance(segmentation, Tensor):
        raise TypeError(
            f"{argument_name(name)} must be a torch.Tensor of integer labels, got {type(segmentation).__name__}"
        )
    if segmentation.is_floating_point() or segmentation.is_complex() or (
        segmentation.dtype == torch.bool
    ):
        raise TypeError(
            f"{argument_name(name)} must hold integer concept labels (e.g. logits.argmax(1)), got dtype "
            f"{segmentation.dtype}"
        )
    ignore_index = check_ignore_index(ignore_index)
    if segmentation.ndim not in (3, 4):
        raise ValueError(
            f"{argument_name(name)} must be (B, H, W) labels or (B, L, H, W) multi-labels, "
            f"got shape {_shape(segmentation)}"
        )
    if multilabel is True and segmentation.ndim != 4:
        raise ValueError(
            f"{argument_name(name)} must be (B, L, H, W) multi-labels (a multi-label segmenter), got shape "
            f"{_shape(segmentation)}"
        )
    if multilabel is False and segmentation.ndim != 3:
        raise ValueError(
            f"{argument_name(name)} must be (B, H, W) labels (a single-label segmenter), got shape "
            f"{_shape(segmentation)}"
        )
    if batch_size is not None and segmentation.shape[0] != batch_size:
        raise ValueError(
            f"{argument_name(name)} has batch size {segmentation.shape[0]} but {batch_source} have {batch_size} "
            f"(shape {_shape(segmentation)})"
        )
    if check_values and segmentation.numel() > 0:
        values = segmentation
        if ignore_index is not None:
            values = segmentation[segmentation != ignore_index]
            if values.numel() == 0:
                return
        stats = torch.stack([values.amin(), values.amax()]).cpu()
        low, high = int(stats[0]), int(stats[1])
        if low < 0 or high >= num_concepts:
            extra = "" if ignore_index is None else f" or equal to ignore_index={ignore_index}"
            raise ValueError(
                f"{argument_name(name)} has labels outside [0, {num_concepts}){extra}: "
                f"found values in [{low}, {high}]" + (f"; {range_hint}" if range_hint else "")
            )


def check_thresholds(thresholds: Tensor, *, num_units: int, name: str = "thresholds") -> Tensor:
    """Check per-unit thresholds ``(U,)`` or ascending candidate levels ``(U, K)`` with ``K >= 1``.

    Returns:
        The thresholds as a floating tensor.

    Examples:
        >>> check_thresholds(torch.tensor([[0.0, 1.0], [2.0, 3.0]]), num_units=2).shape
        torch.Size([2, 2])
    """
    if not isinstance(thresholds, Tensor):
        try:
            thresholds = torch.as_tensor(thresholds, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"{argument_name(name)} must be a tensor of numbers, got {type(thresholds).__name__}"
            ) from None
    if thresholds.is_complex() or thresholds.dtype == torch.bool:
        raise TypeError(f"{argument_name(name)} must hold real thresholds, got dtype {thresholds.dtype}")
    if thresholds.ndim not in (1, 2) or thresholds.shape[0] != num_units:
        raise ValueError(
            f"{argument_name(name)} must have shape ({num_units},) or ({num_units}, K) for num_units="
            f"{num_units}, got shape {_shape(thresholds)}"
        )
    if thresholds.ndim == 2 and thresholds.shape[1] == 0:
        raise ValueError(
            f"{argument_name(name)} of shape (U, K) needs at least one level per unit (K >= 1), got shape "
            f"{_shape(thresholds)}"
        )
    if not thresholds.is_floating_point():
        thresholds = thresholds.to(torch.float32)
    if not bool(torch.isfinite(thresholds).all()):
        raise ValueError(f"{argument_name(name)} contains NaN or infinite values")
    if thresholds.ndim == 2 and thresholds.shape[1] > 1:
        if bool((thresholds[:, 1:] < thresholds[:, :-1]).any()):
            raise ValueError(f"{argument_name(name)} of shape (U, K) must be ascending along K for every unit")
    return thresholds


def check_mask(mask: Tensor, name: str = "mask", *, check_values: bool = True) -> None:
    """Check a region mask: a bool, integer or floating tensor with values in ``[0, 1]``.

    Examples:
        >>> check_mask(torch.tensor([[1.0, 0.5]]))
        >>> check_mask(torch.tensor([[float("nan")]]))
        Traceback (most recent call last):
        ...
        ValueError: `mask` contains 1 NaN or infinite value(s); a region mask holds values in [0, 1]
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"{argument_name(name)} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.is_complex():
        raise TypeError(f"{argument_name(name)} must be a bool, integer or floating tensor, got dtype {mask.dtype}")
    if not check_values or mask.numel() == 0 or mask.dtype == torch.bool:
        return
    check_finite(mask, name, "a region mask holds values in [0, 1]")
    stats = torch.stack([mask.amin(), mask.amax()]).double().cpu()
    low, high = float(stats[0]), float(stats[1])
    if low < 0 or high > 1:
        raise ValueError(f"{argument_name(name)} must hold values in [0, 1], got values in [{_fmt(low)}, {_fmt(high)}]")


def check_images(
    images: Tensor,
    *,
    value_range: tuple[float, float] = (-1.0, 1.0),
    name: str = "images",
) -> None:
    """Check a float image batch ``(B, 3, H, W)`` inside ``value_range`` (``1e-3`` of its width slack).

    Examples:
        >>> check_images(torch.zeros(2, 3, 8, 8))
        >>> check_images(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
        Traceback (most recent call last):
        ...
        TypeError: `images` must be a floating-point tensor, got dtype torch.uint8 ...
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"{argument_name(name)} must be a torch.Tensor, got {type(images).__name__}")
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise TypeError(f"`value_range` must be a pair (low, high) of numbers, got {value_range!r}") from None
    if not high > low or not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"`value_range` must be (low, high) with low < high, got {value_range!r}")
    if images.ndim != 4:
        raise ValueError(
            f"{argument_name(name)} must be a 4-D batch (B, 3, H, W), got shape {_shape(images)}"
            + (" (add a batch dimension with images.unsqueeze(0))" if images.ndim == 3 else "")
        )
    if images.shape[1] != 3:
        raise ValueError(
            f"{argument_name(name)} must have 3 (RGB) channels in dimension 1 of (B, 3, H, W), got shape "
            f"{_shape(images)}"
            + (" (channels-last? use images.permute(0, 3, 1, 2))" if images.shape[-1] == 3 else "")
        )
    if images.shape[0] == 0:
        raise ValueError(f"{argument_name(name)} is an empty batch (B = 0), shape {_shape(images)}")
    if images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"{argument_name(name)} holds empty images, shape {_shape(images)}")
    if not images.is_floating_point():
        raise TypeError(
            f"{argument_name(name)} must be a floating-point tensor, got dtype {images.dtype} (convert with "
            f"images.float() and scale to the declared range [{_fmt(low)}, {_fmt(high)}])"
        )
    x = images.detach()
    stats = torch.stack([x.amin(), x.amax(), x.isfinite().all().to(x.dtype)])
    vmin, vmax, finite = (float(v) for v in stats.float().cpu())
    if not finite:
        raise ValueError(f"{argument_name(name)} contains NaN or Inf values")
    tol = 1e-3 * (high - low)
    if vmin < low - tol or vmax > high + tol:
        raise ImageRangeError(
            f"{argument_name(name)} has values in [{_fmt(vmin)}, {_fmt(vmax)}] given where "
            f"[{_fmt(low)}, {_fmt(high)}] is declared; rescale the images (or declare the "
            "segmenter's value_range to match the generator's output)"
        )
