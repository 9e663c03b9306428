"""The records the interventions return: ablation (of generators and readers), insertion and average causal effects."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor

from lightning_dissect.interventions._common import _NAN, _mean
from lightning_dissect.interventions._engine import _Measured
from lightning_dissect.interventions._prepare import Prepared, _ablated


def _relative(drop: float, baseline: float) -> float:
    """``drop / |baseline|``: the share of the baseline lost (0 for a zero baseline, NaN for a NaN drop).

    Dividing by the magnitude keeps the sign of the drop for any baseline: a discriminator whose
    (negative) mean score falls from -2 to -3 has lost half of its baseline's magnitude, 0.5.
    """
    return drop / abs(baseline) if baseline != 0 else 0.0


@dataclass
class EffectRecord:
    """What every effect record holds (JSON-ready with :meth:`to_dict`).

    Attributes:
        layer: The layer edited.
        concept: The concept's name.
        concept_index: Its index in the segmenter's vocabulary.
        units: The units edited.
        baseline: Fraction of pixels carrying the concept, unedited.
    """

    layer: str
    concept: str
    concept_index: int
    units: list[int]
    baseline: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (JSON-ready)."""
        return asdict(self)


@dataclass
class AblationEffect(EffectRecord):
    """How much of a concept disappears when units are switched off, next to a random control.

    Fractions are of all pixels of all images (``E_z[s_c(x)]``). ``drop = baseline − ablated``
    and ``relative_drop = drop / |baseline|`` (0 when the baseline is 0); the ``control_*`` fields
    are the same for random units of the same number drawn from the layer's other units
    (averaged over the controls; NaN when the layer has too few other units).

    Attributes:
        ablated: The fraction with ``units`` switched off (see :class:`EffectRecord` for the rest).
        drop: ``baseline − ablated``.
        relative_drop: ``drop / |baseline|`` (0 for a zero baseline).
        control_ablated: The fraction with the random units switched off.
        control_drop: ``baseline − control_ablated``.
        control_relative_drop: ``control_drop / |baseline|`` (NaN without a control).
        control_units: The random unit sets (one per control).
        mode: ``"zero"`` or ``"mean"``.
        num_images: Images per variant, over all processes.

    """

    ablated: float
    drop: float
    relative_drop: float
    control_ablated: float
    control_drop: float
    control_relative_drop: float
    control_units: list[list[int]] = field(default_factory=list)
    mode: str = "zero"
    num_images: int = 0

    @property
    def excess_drop(self) -> float:
        """``drop − control_drop``: the part of the drop that generic damage does not explain."""
        return self.drop - self.control_drop


def _ablation_numbers(
    value: Callable[[Hashable], float], layer: str, units: Tensor, controls: Sequence[Tensor]
) -> dict[str, float]:
    """The measured fields of an :class:`AblationEffect`: ``value(key)`` is a variant's measure."""
    base = value("baseline")
    abl = value(_ablated(layer, units))
    ctrl = _mean([value(_ablated(layer, u)) for u in controls])
    return {
        "baseline": base,
        "ablated": abl,
        "drop": base - abl,
        "relative_drop": _relative(base - abl, base),
        "control_ablated": ctrl,
        "control_drop": base - ctrl,
        "control_relative_drop": _relative(base - ctrl, base) if math.isfinite(base - ctrl) else _NAN,
    }


def _ablation_record(
    prepared: Prepared, measured: _Measured, units: Tensor, controls: Sequence[Tensor], mode: str
) -> AblationEffect:
    """The :class:`AblationEffect` of ``units`` (and ``controls``) from the measured variants."""
    c, layer = prepared.concept, prepared.layer
    return AblationEffect(
        layer=layer,
        concept=prepared.concept_name,
        concept_index=c,
        units=units.tolist(),
        **_ablation_numbers(lambda key: float(measured.fractions[key][c]), layer, units, controls),
        control_units=[u.tolist() for u in controls],
        mode=mode,
        num_images=measured.num_images,
    )


@dataclass
class InsertionEffect(EffectRecord):
    """How much of a concept appears when units are switched on (in a region), with a control.

    ``effect = inserted − baseline`` over all pixels; the ``*_in_region`` fields count only the
    pixels of the region (``None`` without a region). The ``control_*`` fields insert random
    units of the same number (NaN when the layer has too few other units).

    Attributes:
        inserted: The fraction after switching ``units`` on (see :class:`EffectRecord` for the rest).
        effect: ``inserted − baseline``.
        control_inserted: The fraction after inserting the random units.
        control_effect: ``control_inserted − baseline``.
        region_fraction: Share of the image's pixels inside the region (``None``: no region).
        baseline_in_region: Concept fraction within the region, unedited.
        inserted_in_region: Within the region, after the insertion.
        effect_in_region: ``inserted_in_region − baseline_in_region``.
        control_inserted_in_region: Within the region, after inserting the random units.
        control_effect_in_region: ``control_inserted_in_region − baseline_in_region``.
        control_units: The random unit sets.
        num_images: Images per variant, over all processes.

    """

    inserted: float
    effect: float
    control_inserted: float
    control_effect: float
    region_fraction: float | None = None
    baseline_in_region: float | None = None
    inserted_in_region: float | None = None
    effect_in_region: float | None = None
    control_inserted_in_region: float | None = None
    control_effect_in_region: float | None = None
    control_units: list[list[int]] = field(default_factory=list)
    num_images: int = 0


@dataclass
class CausalEffect(EffectRecord):
    """Average causal effect ``ACE = E[s_c(x_inserted)] − E[s_c(x_ablated)]``, with a control.

    Fractions are over all pixels, or within the region when one was given (both edits are then
    confined to it).

    Attributes:
        inserted: Concept fraction with the units switched on (see :class:`EffectRecord` for the rest).
        ablated: Concept fraction with the units switched off.
        ace: ``inserted − ablated``.
        control_inserted: Same for random units of the same number.
        control_ablated: Same for random units.
        control_ace: ``control_inserted − control_ablated``.
        control_units: The random unit sets.
        mode: The ablation mode.
        num_images: Images per variant, over all processes.

    """

    inserted: float
    ablated: float
    ace: float
    control_inserted: float
    control_ablated: float
    control_ace: float
    control_units: list[list[int]] = field(default_factory=list)
    mode: str = "zero"
    num_images: int = 0


@dataclass
class ReaderAblationEffect(AblationEffect):
    """What a reading network loses when a concept's units are switched off, next to a random control.

    ``baseline``, ``ablated``, ``drop`` and the ``control_*`` fields are those of
    :class:`~lightning_dissect.interventions.AblationEffect` with the ``metric`` (accuracy or mean
    score over all images) in place of the concept's pixel fraction. The ``present_*`` fields are the
    same over the images where the concept is present (``num_present`` of them; NaN when none).

    Attributes:
        metric: ``"accuracy"`` or ``"score"``.
        present_baseline: The metric on the concept-present images, unedited.
        present_ablated: ... with ``units`` switched off.
        present_drop: ``present_baseline − present_ablated``.
        present_control_drop: The same drop for the random units (averaged over the controls).
        num_present: Images where the concept is present (all processes).
    """

    metric: str = "accuracy"
    present_baseline: float = _NAN
    present_ablated: float = _NAN
    present_drop: float = _NAN
    present_control_drop: float = _NAN
    num_present: int = 0
