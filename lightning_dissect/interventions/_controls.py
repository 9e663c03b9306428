"""The random-units control of every intervention: one policy, written once.

An effect of a concept's units is read next to what the same edit of *other* units of the same
layer does. Every control draw uses a private ``torch.Generator`` seeded from ``control_seed`` and
a salt (:func:`~lightning_dissect.interventions._common._control_rng`), so the caller's global RNG
never moves and the draw is the same on every process and at every dissection round:

* **one unit set** (``ablation_effect``, ``insertion_effect``, ``average_causal_effect``):
  ``num_controls`` sets of as many units, drawn uniformly from the units outside it, seeded from
  the concept (:func:`draw_controls`);
* **every concept of a layer** (``ablation_check``, ``reader_ablation``): concepts that switch off
  the same number of units share their control sets, drawn from the units of none of them and
  seeded from that number; only when too few such units remain does each concept draw its own sets
  outside its units, seeded from the concept (:func:`shared_controls`);
* **a curve over n** (``ablation_curve``, ``reader_curve``): for each ``n``, the first ``n`` units
  of one random order of the layer's units (seeded from the concept) that are not among the top
  ``n`` (:func:`curve_controls`).

A control that cannot be drawn (the layer has too few other units) is left out; with none left,
the control fields of a record are NaN.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from lightning_dissect.interventions._common import _control_rng
from lightning_dissect.interventions.edits import random_units


def draw_controls(width: int, units: Tensor, num_controls: int, seed: int, salt: int) -> list[Tensor]:
    """``num_controls`` random sets of ``len(units)`` units outside ``units`` (fewer if none fit)."""
    rng = _control_rng(seed, salt)
    drawn = (random_units(width, units.numel(), units, generator=rng) for _ in range(num_controls))
    return [d for d in drawn if d is not None]


def shared_controls(width: int, chosen: dict[int, Tensor], num_controls: int, seed: int) -> dict[int, list[Tensor]]:
    """Control sets per concept of ``chosen`` (``concept -> units``), shared by equal numbers of units."""
    groups: dict[int, list[int]] = {}
    for c, units in chosen.items():
        groups.setdefault(units.numel(), []).append(c)
    controls: dict[int, list[Tensor]] = {}
    for size, group in groups.items():
        union = torch.cat([chosen[c] for c in group])
        rng = _control_rng(seed, -size)
        drawn = [random_units(width, size, union, generator=rng) for _ in range(num_controls)]
        for c in group:
            if all(d is not None for d in drawn):
                controls[c] = [d for d in drawn if d is not None]
            else:  # too few units outside the whole group: each concept draws outside its own units
                controls[c] = draw_controls(width, chosen[c], num_controls, seed, c)
    return controls


def curve_controls(width: int, ranking: Tensor, points: Iterable[int], seed: int, salt: int) -> dict[int, Tensor]:
    """``n -> n`` random units outside ``ranking[:n]``, for each ``n > 0`` of ``points`` that fits."""
    order = torch.randperm(width, generator=_control_rng(seed, salt))
    controls = {}
    for n in points:
        outside = order[~torch.isin(order, ranking[:n])]
        if n and outside.numel() >= n:
            controls[n] = outside[:n].sort().values
    return controls
