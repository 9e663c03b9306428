"""Edits of a layer output: build them (:func:`ablate`, :func:`insert`), apply them (:func:`intervene`).

Also :func:`random_units`, the draw of the random-units control.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lightning_dissect._utils.checks import check_int
from lightning_dissect.engine.hooks import LayerEdit, OutputSelector, edit_layers, unwrap_model
from lightning_dissect.interventions._common import Units
from lightning_dissect.interventions.statistics import UnitStatistics


def _unit_index(units: Units, num_units: int, name: str = "units") -> Tensor:
    """Sorted, unique long indices of ``units`` (indices or a boolean mask), range-checked."""
    num_units = check_int(num_units, "num_units", minimum=1)
    t = torch.as_tensor(units)
    if t.dtype == torch.bool:
        if t.shape != (num_units,):
            raise ValueError(
                f"boolean `{name}` must have shape ({num_units},), got {tuple(t.shape)}"
            )
        return t.nonzero().flatten().cpu()
    t = t.reshape(-1)
    if t.numel() and (t.is_floating_point() or t.is_complex()):
        raise TypeError(f"`{name}` must hold integer unit indices, got dtype {t.dtype}")
    t = t.to(torch.long).cpu()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_units):
        raise ValueError(
            f"`{name}` must lie in [0, {num_units}), got values in [{int(t.min())}, {int(t.max())}]"
        )
    return torch.unique(t)


def _per_unit_values(
    value: float | Tensor | UnitStatistics, num_units: int, name: str, attribute: str
) -> float | Tensor:
    if isinstance(value, UnitStatistics):
        value = getattr(value, attribute)
    if isinstance(value, (int, float)):
        return float(value)
    t = torch.as_tensor(value)
    if t.ndim == 0:
        return float(t)
    if t.ndim != 1 or t.shape[0] != num_units:
        raise ValueError(f"`{name}` must be a scalar or ({num_units},), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t.float()).all()):
        raise ValueError(f"`{name}` contains NaN or infinite values")
    return t.detach().float()


def ablate(
    units: Units,
    num_units: int,
    mode: str = "zero",
    mean: Tensor | UnitStatistics | None = None,
    mask: Tensor | None = None,
) -> LayerEdit:
    """Build an edit that switches ``units`` off (``α = 1`` for them, 0 for others), everywhere or in ``mask``.

    Args:
        units: The units to ablate (indices or a ``(U,)`` boolean mask).
        num_units: Width ``U`` of the layer.
        mode: ``"zero"`` writes 0 (the paper); ``"mean"`` writes each unit's mean activation
            (``mean``), keeping its average contribution but removing its variation.
        mean: ``(U,)`` mean activations (or :class:`UnitStatistics`), for ``mode="mean"``.
        mask: Optional region in ``[0, 1]`` at any resolution (as for :func:`insert`): the units
            are switched off only there (GANPaint's erase). ``None``: everywhere.

    Returns:
        A :class:`~lightning_dissect.engine.hooks.LayerEdit` for :func:`intervene`.

    Examples:
        >>> edit = ablate([1, 2], num_units=4)
        >>> edit.alpha.tolist(), edit.value
        ([0.0, 1.0, 1.0, 0.0], 0.0)
        >>> ablate([0], 2, mode="mean", mean=torch.tensor([0.5, 2.0])).value.tolist()
        [0.5, 2.0]
        >>> from lightning_dissect.hooks import apply_edit
        >>> left = torch.zeros(4, 4)
        >>> left[:, :2] = 1  # switch unit 0 off in the left half only
        >>> apply_edit(torch.ones(1, 2, 2, 2), ablate([0], 2, mask=left))[0, 0].tolist()
        [[0.0, 1.0], [0.0, 1.0]]

    """
    index = _unit_index(units, num_units)
    alpha = torch.zeros(num_units)
    alpha[index] = 1.0
    if mask is not None and not isinstance(mask, Tensor):
        raise TypeError(f"`mask` must be a tensor or None, got {type(mask).__name__}")
    if mode == "zero":
        return LayerEdit(alpha=alpha, value=0.0, mask=mask)
    if mode == "mean":
        if mean is None:
            raise ValueError(
                "mode='mean' needs the units' mean activations: pass `mean=` (see "
                "unit_statistics())"
            )
        return LayerEdit(alpha=alpha, value=_per_unit_values(mean, num_units, "mean", "mean"), mask=mask)
    raise ValueError(f"`mode` must be 'zero' or 'mean', got {mode!r}")


def insert(
    units: Units,
    num_units: int,
    value: float | Tensor | UnitStatistics,
    mask: Tensor | None = None,
    *,
    alpha: float = 1.0,
) -> LayerEdit:
    """Build an edit that writes a high value into ``units`` (inside ``mask`` when given).

    Args:
        units: The units to switch on (indices or a ``(U,)`` boolean mask).
        num_units: Width ``U`` of the layer.
        value: The value written: a scalar, a ``(U,)`` tensor (only the entries of ``units``
            matter) or :class:`UnitStatistics` (its ``high`` quantile, GANPaint's choice).
        mask: Optional region in ``[0, 1]`` at any resolution, ``(H, W)``, ``(B, H, W)`` or
            ``(B, 1, H, W)``; it is area-pooled (or nearest-upsampled) to the layer's size.
        alpha: Strength in ``[0, 1]`` (1 replaces the activation, 0.5 blends half-way).

    Examples:
        >>> edit = insert([0], 2, torch.tensor([3.0, 9.0]), mask=torch.ones(8, 8))
        >>> r = torch.zeros(1, 2, 2, 2)
        >>> from lightning_dissect.engine.hooks import apply_edit
        >>> apply_edit(r, edit)[0, :, 0, 0].tolist()
        [3.0, 0.0]

    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha}")
    index = _unit_index(units, num_units)
    strength = torch.zeros(num_units)
    strength[index] = float(alpha)
    if mask is not None and not isinstance(mask, Tensor):
        raise TypeError(f"`mask` must be a tensor or None, got {type(mask).__name__}")
    return LayerEdit(
        alpha=strength, value=_per_unit_values(value, num_units, "value", "high"), mask=mask
    )


@contextmanager
def intervene(
    generator: nn.Module,
    edits: Mapping[str, LayerEdit],
    selector: OutputSelector | Mapping[str, OutputSelector] = None,
) -> Iterator[nn.Module]:
    """Apply ``{layer: LayerEdit}`` to the generator's forward passes inside the block.

    A thin, validating wrapper over :func:`~lightning_dissect.engine.hooks.edit_layers`: several layers
    at once, hooks removed on exit (also when the block raises).

    Args:
        generator: The generator (compiled / DDP-wrapped modules are unwrapped).
        edits: Layer name → edit (see :func:`ablate`, :func:`insert`).
        selector: An int/str picking the tensor of tuple/dict layer outputs (one for all layers,
            or a mapping layer → selector).

    Yields:
        The generator, for convenience.

    Examples:
        >>> net = nn.Sequential(nn.Conv2d(1, 3, 1), nn.ReLU(), nn.Conv2d(3, 1, 1))
        >>> with intervene(net, {"1": ablate([0, 1, 2], num_units=3)}):
        ...     out = net(torch.randn(2, 1, 4, 4))
        >>> torch.allclose(out, net[2].bias.view(1, 1, 1, 1).expand_as(out))  # only the bias left
        True

    """
    if not isinstance(edits, Mapping):
        raise TypeError(f"`edits` must map layer names to LayerEdit, got {type(edits).__name__}")
    for name, edit in edits.items():
        if not isinstance(edit, LayerEdit):
            raise TypeError(
                f"edit of layer {name!r} must be a LayerEdit, got {type(edit).__name__}"
            )
        alpha = torch.as_tensor(edit.alpha, dtype=torch.float32)
        if not bool(((alpha >= 0) & (alpha <= 1)).all()):
            raise ValueError(f"edit of layer {name!r}: `alpha` must lie in [0, 1]")
    with edit_layers(unwrap_model(generator), edits, selector):
        yield generator


def random_units(
    num_units: int, size: int, exclude: Units = (), *, generator: torch.Generator
) -> Tensor | None:
    """``size`` distinct units drawn uniformly from those not in ``exclude`` (sorted), or ``None``.

    ``None`` when fewer than ``size`` units remain. Uses only the given private generator.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> units = random_units(10, 3, exclude=[0, 1], generator=g)
        >>> len(units), bool((units >= 2).all())
        (3, True)
        >>> random_units(4, 3, exclude=[0, 1], generator=g) is None
        True

    """
    excluded = torch.zeros(num_units, dtype=torch.bool)
    excluded[_unit_index(exclude, num_units, "exclude")] = True
    pool = (~excluded).nonzero().flatten()
    if size > pool.numel():
        return None
    order = torch.randperm(pool.numel(), generator=generator)[:size]
    return pool[order].sort().values
