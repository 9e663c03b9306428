"""When a unit counts as *interpretable*: the one rule every count, badge and chart applies.

A unit's label is its best concept (highest IoU); whether that label is believed is a separate
question, decided here and nowhere else. Three named rules:

* ``"significant"`` (the default): the label IoU exceeds the cut-off, its *excess* over chance
  ``(IoU − chance) / (1 − chance)`` is at least ``min_excess`` (default 0.05), and the swap test
  against chance gives ``p_value <= max_p_value`` (default 0.001). The chance IoU is the IoU of
  the same masks against another image's segmentation; the excess scales the distance above it
  by what is still possible above it, so a perfect mask scores 1 for a concept of any size and a
  mask that knows nothing of its image (another image's mask, a fixed mask, noise) scores about
  0; the p-value (:func:`~lightning_dissect.functional.chance.swap_test_p_values`) says whether
  the excess could come from the luck of the sample. ``docs/reading-results.md`` gives the
  measurements behind the two numbers and the rule's false-positive rate.
* ``"paper"``: the fixed cut of the papers alone (label IoU > 0.04 in NetDissect and the PNAS
  code, 0.05 in GAN Dissection), to compare counts with published ones.
* ``"chance_ratio"``: the label IoU above the cut-off and at least ``chance_ratio`` × its chance
  IoU (an earlier default, kept so results computed with it read as they were). It cannot count
  a concept whose chance IoU is above ``1 / chance_ratio``, however perfect the unit.

All add gandissect's ``IQR > iqr_threshold`` condition in ``"iqr"`` threshold mode. A unit
without a measured chance IoU (``chance_baseline=False``, or a one-sample bank) is never
interpretable under ``"significant"`` or ``"chance_ratio"``: nothing shows that its IoU is above
chance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["INTERPRETABLE_RULES", "InterpretabilityRule", "SmallSampleWarning"]

INTERPRETABLE_RULES: dict[str, str] = {
    "significant": (
        "label IoU above the cut-off, excess over chance (IoU − chance) / (1 − chance) at least "
        "`min_excess`, and p-value against chance at most `max_p_value`"
    ),
    "paper": "label IoU above the cut-off alone (the papers' fixed cut)",
    "chance_ratio": "label IoU above the cut-off and at least `chance_ratio` × its chance IoU (earlier default)",
}
"""The named rules: ``name -> what it asks``."""


class SmallSampleWarning(UserWarning):
    """The sample set is too small for the swap test to reach the rule's ``max_p_value``.

    With ``k`` sample groups holding samples no p-value is below ``2^-k``; the ``"significant"``
    rule then counts the units at that floor, and this warning says so.
    """


@dataclass(frozen=True)
class InterpretabilityRule:
    """Decides which units are interpretable.

    Args:
        name: ``"significant"``, ``"paper"`` or ``"chance_ratio"`` (see :data:`INTERPRETABLE_RULES`).
        iou_threshold: The label IoU must exceed this.
        chance_ratio: ``"chance_ratio"``: the label IoU must be at least this many times the
            chance IoU.
        iqr_threshold: When given (``"iqr"`` threshold mode), the label IQR must exceed it too.
        min_excess: ``"significant"``: the excess ``(IoU − chance) / (1 − chance)`` must be at
            least this.
        max_p_value: ``"significant"``: the swap test's p-value must be at most this.

    Examples:
        >>> rule = InterpretabilityRule()
        >>> rule(1.0, 0.674, p_value=0.00024), rule(0.678, 0.668, p_value=0.2), rule(0.234, 0.234, p_value=0.6)
        (True, False, False)
        >>> rule(0.3, 0.1, p_value=0.2)  # far above chance, but not surely: a lucky sample?
        False
        >>> InterpretabilityRule("paper")(0.678, 0.668)
        True
        >>> rule.describe()
        'label IoU > 0.04, excess over chance ≥ 0.05 and p ≤ 0.001'
    """

    name: str = "significant"
    iou_threshold: float = 0.04
    chance_ratio: float = 2.0
    iqr_threshold: float | None = None
    min_excess: float = 0.05
    max_p_value: float = 0.001

    def __post_init__(self) -> None:
        if self.name not in INTERPRETABLE_RULES:
            raise ValueError(f"`interpretable` must be one of {sorted(INTERPRETABLE_RULES)}, got {self.name!r}")
        if not isinstance(self.chance_ratio, (int, float)) or isinstance(self.chance_ratio, bool) or not (
            math.isfinite(self.chance_ratio) and self.chance_ratio >= 1.0
        ):
            raise ValueError(f"`chance_ratio` must be a finite number >= 1, got {self.chance_ratio!r}")
        for name, value in (("min_excess", self.min_excess), ("max_p_value", self.max_p_value)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}")

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> InterpretabilityRule:
        """The rule a result was computed with, from its ``settings`` (or a config's fields).

        Results written before the rule was a setting carry no ``"interpretable"`` entry; they
        were badged by the fixed cut, so they read as ``"paper"``. Results written with the
        ratio rule record ``"chance_ratio"`` and read with it.

        Examples:
            >>> InterpretabilityRule.from_settings({"iou_threshold": 0.05}).name
            'paper'
            >>> InterpretabilityRule.from_settings({"interpretable": "chance_ratio", "chance_ratio": 3}).chance_ratio
            3.0
        """
        iqr = settings.get("iqr_threshold") if settings.get("threshold_mode") == "iqr" else None
        return cls(
            name=str(settings.get("interpretable", "paper")),
            iou_threshold=float(settings.get("iou_threshold", 0.04)),
            chance_ratio=float(settings.get("chance_ratio", 2.0)),
            iqr_threshold=None if iqr is None else float(iqr),
            min_excess=float(settings.get("min_excess", 0.05)),
            max_p_value=float(settings.get("max_p_value", 0.001)),
        )

    def __call__(
        self, iou: float, chance_iou: float | None, iqr: float | None = None, p_value: float | None = None
    ) -> bool:
        """Whether one unit counts: label IoU ``iou``, chance IoU ``chance_iou``, IQR ``iqr``, p-value ``p_value``."""
        as_tensor = lambda v: None if v is None else torch.tensor([float(v)], dtype=torch.float64)  # noqa: E731
        return bool(self.mask(as_tensor(iou), as_tensor(chance_iou), as_tensor(iqr), as_tensor(p_value))[0])  # type: ignore[arg-type]

    def mask(
        self,
        iou: Tensor,
        chance_iou: Tensor | None,
        iqr: Tensor | None = None,
        p_value: Tensor | None = None,
        *,
        p_floor: float | None = None,
    ) -> Tensor:
        """The rule over many units at once: a ``bool`` tensor the shape of ``iou``.

        Missing values (``None`` tensors, NaN entries) never pass a condition that needs them.
        ``p_floor`` is the smallest p-value the sample can give (``2^-k`` with ``k`` sample groups
        that hold samples); when it is above ``max_p_value``, a unit at that floor (it beats every
        swap of the pairings) passes the significance condition, so a perfect detector still counts
        on a set too small for the stated level (:func:`smallest_p_value` says when).

        Examples:
            >>> InterpretabilityRule().mask(torch.tensor([1.0, 0.678, 0.03]), torch.tensor([0.674, 0.668, 0.0]),
            ...                             p_value=torch.tensor([0.0002, 0.3, 0.0002]))
            tensor([ True, False, False])
        """
        iou = iou.to(torch.float64)
        out = torch.isfinite(iou) & (iou > self.iou_threshold)
        if self.iqr_threshold is not None:
            out &= (iqr > self.iqr_threshold) if iqr is not None else torch.zeros_like(out)
        if self.name == "paper":
            return out
        if chance_iou is None:
            return torch.zeros_like(out)
        chance_iou = chance_iou.to(torch.float64)
        if self.name == "chance_ratio":
            return out & (iou >= self.chance_ratio * chance_iou)
        if p_value is None:
            return torch.zeros_like(out)
        room = 1.0 - chance_iou  # the excess over chance, as functional.chance.chance_excess computes it
        excess = torch.where(room > 0, (iou - chance_iou) / room.clamp(min=1e-300), torch.zeros_like(room))
        limit = self.max_p_value if p_floor is None else max(self.max_p_value, p_floor * (1 + 1e-9))
        return out & (excess >= self.min_excess) & (p_value.to(torch.float64) <= limit)

    def describe(self) -> str:
        """The rule in words, for reports and tables."""
        text = f"label IoU > {self.iou_threshold:g}"
        if self.name == "chance_ratio":
            text += f" and ≥ {self.chance_ratio:g}× its chance IoU"
        if self.name == "significant":
            text += f", excess over chance ≥ {self.min_excess:g} and p ≤ {self.max_p_value:g}"
        if self.iqr_threshold is not None:
            text += f" and IQR > {self.iqr_threshold:g}"
        return text
