"""Argument validation shared by the functional API and the metrics.

Every error names the argument and says what was expected, so that a mistake is caught at the first
batch rather than after hours of training.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "check_activations",
    "check_segmentation",
    "check_thresholds",
    "check_finite",
]


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_finite(tensor: Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``tensor`` holds NaN or infinite values."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(
            f"`{name}` contains {bad} NaN or infinite value(s); activations must be finite "
            "(check the generator for diverged weights)"
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
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(activations).__name__}")
    ranks = (2, 4) if allow_flat else (4,)
    if activations.ndim not in ranks:
        expected = "4-D (B, U, h, w) or 2-D (N, U)" if allow_flat else "4-D (B, U, h, w)"
        raise ValueError(f"`{name}` must be {expected}, got shape {_shape(activations)}")
    if not activations.is_floating_point():
        raise TypeError(f"`{name}` must be a floating tensor, got dtype {activations.dtype}")
    if num_units is not None and activations.shape[1] != num_units:
        raise ValueError(
            f"`{name}` has {activations.shape[1]} units (dimension 1 of shape "
            f"{_shape(activations)}) but the metric was built with num_units={num_units}"
        )
    if check_values:
        check_finite(activations, name)


def check_segmentation(
    segmentation: Tensor,
    *,
    num_concepts: int,
    ignore_index: int | None = None,
    batch_size: int | None = None,
    name: str = "segmentation",
    check_values: bool = True,
) -> None:
    """Check integer concept labels ``(B, H, W)`` or multi-label ``(B, L, H, W)``.

    Args:
        segmentation: The label tensor.
        num_concepts: Labels must lie in ``[0, num_concepts)`` (or equal ``ignore_index``).
        ignore_index: A label value that marks pixels belonging to no concept.
        batch_size: Expected batch size (dimension 0), or ``None``.
        name: Argument name used in error messages.
        check_values: Also check the label range (costs one pass over the data).

    Examples:
        >>> check_segmentation(torch.zeros(2, 8, 8, dtype=torch.long), num_concepts=3)
        >>> check_segmentation(torch.full((2, 8, 8), 3), num_concepts=3)
        Traceback (most recent call last):
        ...
        ValueError: `segmentation` has labels outside [0, 3): found values in [3, 3]
    """
    if not isinstance(segmentation, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(segmentation).__name__}")
    if segmentation.is_floating_point() or segmentation.is_complex() or (
        segmentation.dtype == torch.bool
    ):
        raise TypeError(
            f"`{name}` must hold integer concept labels, got dtype {segmentation.dtype}"
        )
    if segmentation.ndim not in (3, 4):
        raise ValueError(
            f"`{name}` must be (B, H, W) labels or (B, L, H, W) multi-labels, "
            f"got shape {_shape(segmentation)}"
        )
    if batch_size is not None and segmentation.shape[0] != batch_size:
        raise ValueError(
            f"`{name}` has batch size {segmentation.shape[0]} but the activations have {batch_size}"
        )
    if check_values and segmentation.numel() > 0:
        values = segmentation
        if ignore_index is not None:
            values = segmentation[segmentation != ignore_index]
            if values.numel() == 0:
                return
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= num_concepts:
            extra = "" if ignore_index is None else f" or equal to ignore_index={ignore_index}"
            raise ValueError(
                f"`{name}` has labels outside [0, {num_concepts}){extra}: "
                f"found values in [{low}, {high}]"
            )


def check_thresholds(thresholds: Tensor, *, num_units: int, name: str = "thresholds") -> Tensor:
    """Check per-unit thresholds ``(U,)`` or ascending candidate levels ``(U, K)``.

    Returns:
        The thresholds as a floating tensor.

    Examples:
        >>> check_thresholds(torch.tensor([[0.0, 1.0], [2.0, 3.0]]), num_units=2).shape
        torch.Size([2, 2])
    """
    if not isinstance(thresholds, Tensor):
        thresholds = torch.as_tensor(thresholds, dtype=torch.float32)
    if thresholds.ndim not in (1, 2) or thresholds.shape[0] != num_units:
        raise ValueError(
            f"`{name}` must have shape ({num_units},) or ({num_units}, K) for num_units="
            f"{num_units}, got shape {_shape(thresholds)}"
        )
    if not thresholds.is_floating_point():
        thresholds = thresholds.to(torch.float32)
    if not bool(torch.isfinite(thresholds).all()):
        raise ValueError(f"`{name}` contains NaN or infinite values")
    if thresholds.ndim == 2 and thresholds.shape[1] > 1:
        if bool((thresholds[:, 1:] < thresholds[:, :-1]).any()):
            raise ValueError(f"`{name}` of shape (U, K) must be ascending along K for every unit")
    return thresholds
