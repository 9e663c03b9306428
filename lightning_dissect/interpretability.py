"""When a unit counts as *interpretable*: the one rule every count, badge and chart applies.

A unit's label is its best concept (highest IoU); whether that label is believed is a separate
question, decided here and nowhere else. Two named rules:

* ``"chance_ratio"`` (the default): the label IoU exceeds the cut-off **and** is at least
  ``chance_ratio`` times (default 2×) the unit's chance IoU — the IoU the same mask gets against
  another image's segmentation. A unit that only knows where a concept *usually* is (sky at the
  top of the frame) gets nearly the same IoU against any image and is not counted.
  ``docs/reading-results.md`` gives the measurements behind the factor 2.
* ``"paper"``: the fixed cut of the papers alone (label IoU > 0.04 in NetDissect and the PNAS
  code, 0.05 in GAN Dissection), to compare counts with published ones.

Both add gandissect's ``IQR > iqr_threshold`` condition in ``"iqr"`` threshold mode. A unit whose
chance IoU was not measured (``chance_baseline=False``, or a one-sample bank) is never
interpretable under ``"chance_ratio"``: nothing shows that its IoU is above chance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["INTERPRETABLE_RULES", "InterpretabilityRule"]

INTERPRETABLE_RULES: dict[str, str] = {
    "chance_ratio": "label IoU above the cut-off and at least `chance_ratio` × its chance IoU",
    "paper": "label IoU above the cut-off alone (the papers' fixed cut)",
}
"""The named rules: ``name -> what it asks``."""


@dataclass(frozen=True)
class InterpretabilityRule:
    """Decides which units are interpretable.

    Args:
        name: ``"chance_ratio"`` or ``"paper"`` (see :data:`INTERPRETABLE_RULES`).
        iou_threshold: The label IoU must exceed this.
        chance_ratio: ``"chance_ratio"``: the label IoU must be at least this many times the
            chance IoU.
        iqr_threshold: When given (``"iqr"`` threshold mode), the label IQR must exceed it too.

    Examples:
        >>> rule = InterpretabilityRule()
        >>> rule(0.118, 0.114), rule(0.118, 0.05), rule(0.03, 0.0)
        (False, True, False)
        >>> InterpretabilityRule("paper")(0.118, 0.114)
        True
        >>> rule.describe()
        'label IoU > 0.04 and ≥ 2× its chance IoU'
    """

    name: str = "chance_ratio"
    iou_threshold: float = 0.04
    chance_ratio: float = 2.0
    iqr_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.name not in INTERPRETABLE_RULES:
            raise ValueError(f"`interpretable` must be one of {sorted(INTERPRETABLE_RULES)}, got {self.name!r}")
        if not isinstance(self.chance_ratio, (int, float)) or isinstance(self.chance_ratio, bool) or not (
            math.isfinite(self.chance_ratio) and self.chance_ratio >= 1.0
        ):
            raise ValueError(f"`chance_ratio` must be a finite number >= 1, got {self.chance_ratio!r}")

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> InterpretabilityRule:
        """The rule a result was computed with, from its ``settings`` (or a config's fields).

        Results written before the rule was a setting carry no ``"interpretable"`` entry; they
        were badged by the fixed cut, so they read as ``"paper"``.

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
        )

    def __call__(self, iou: float, chance_iou: float | None, iqr: float | None = None) -> bool:
        """Whether one unit with label IoU ``iou`` (chance IoU ``chance_iou``, IQR ``iqr``) counts."""
        if not math.isfinite(iou) or not iou > self.iou_threshold:
            return False
        if self.iqr_threshold is not None and (iqr is None or not iqr > self.iqr_threshold):
            return False
        if self.name == "paper":
            return True
        return chance_iou is not None and iou >= self.chance_ratio * chance_iou

    def mask(self, iou: Tensor, chance_iou: Tensor | None, iqr: Tensor | None = None) -> Tensor:
        """The rule over many units at once: a ``bool`` tensor the shape of ``iou``.

        Examples:
            >>> InterpretabilityRule().mask(torch.tensor([0.118, 0.118, 0.03]), torch.tensor([0.114, 0.05, 0.0]))
            tensor([False,  True, False])
        """
        out = torch.isfinite(iou) & (iou > self.iou_threshold)
        if self.iqr_threshold is not None:
            out &= (iqr > self.iqr_threshold) if iqr is not None else torch.zeros_like(out)
        if self.name == "paper":
            return out
        if chance_iou is None:
            return torch.zeros_like(out)
        return out & (iou >= self.chance_ratio * chance_iou)

    def describe(self) -> str:
        """The rule in words, for reports and tables."""
        text = f"label IoU > {self.iou_threshold:g}"
        if self.name == "chance_ratio":
            text += f" and ≥ {self.chance_ratio:g}× its chance IoU"
        if self.iqr_threshold is not None:
            text += f" and IQR > {self.iqr_threshold:g}"
        return text
