r"""Interventions: switch units off (ablation) or on (insertion) and measure what the images lose.

Dissection finds *correlation* between units and concepts; interventions test *causation*. One
rule covers every edit of a layer output ``r`` (see :class:`~lightning_dissect.engine.hooks.LayerEdit`):

.. math:: r \leftarrow r\,(1 - \alpha m) + v\,\alpha m

with a per-unit strength ``α`` (1 for the units edited, 0 for the others), a value ``v`` and an
optional spatial mask ``m``.

* :func:`ablate` — ``v = 0`` (the paper's ablation) or ``v`` = the unit's mean activation
  (``mode="mean"``, which removes the unit's *information* but keeps its average contribution).
* :func:`insert` — ``v`` = a high per-unit value (by default the unit's 0.99 quantile, as in
  GANPaint) written into a region.
* :func:`intervene` — a context manager applying edits to several layers, always removed on exit.

Effects are measured as fractions of pixels carrying a concept (``E_z[s_c(G(z))]``), counted
exactly with :class:`~lightning_dissect.metrics.ConceptPixelFraction`:

* :func:`ablation_effect` — baseline, ablated and the drop, next to a *random-units control* of
  the same size (drawn from the layer's other units with a private, seeded generator);
* :func:`insertion_effect` — the concept created by inserting units, overall and in the region;
* :func:`average_causal_effect` — ``ACE = E[s_c(x_inserted)] − E[s_c(x_ablated)]``;
* :func:`ablation_curve` — the remaining fraction after zeroing the top-``n`` units by IoU,
  ``n = 0 … N`` (gandissect's curve), with the control curve;
* :func:`causal_units` — learn a coefficient α per unit that removes (ablation) and creates
  (insertion) a concept, with an L2 penalty (GAN Dissection's causal unit sets), and compare the
  top units by α with the top units by IoU and random units (:class:`CausalUnits`);
* :func:`ablation_check` — for every concept with interpretable units in a
  :class:`~lightning_dissect.result.LayerDissection`, switch off its units and report the drop;
  this is what :class:`~lightning_dissect.callbacks.generator.DissectionCallback` runs at every round;
* :func:`reader_ablation` — the same for a network that *reads* images (Network Dissection): a
  classifier's accuracy (over all images and those with the concept) or a discriminator's score,
  with the same units, random-units controls, measurement and record format
  (:class:`ReaderAblationEffect`);
* :func:`reader_curve` — a reading network's metric with the top-``n`` units by IoU switched off
  (``kind="ablation"``), or kept alone (``kind="insertion"``), ``n = 0 … N`` (:class:`ReaderCurve`).

Every random-units control follows one policy, described with the interventions' documentation
(a private generator seeded from ``control_seed``; sets shared by the concepts of a layer that
switch off as many units; for curves, one random order per concept).

Every function runs the generator through a :class:`~lightning_dissect.engine.generator.GeneratorRunner`:
under ``torch.inference_mode()`` with the generator in eval mode (restoring each submodule's
mode), hooks removed even when the generator raises, and generator noise seeded per batch: the
batch of latents ``i, i+1, …`` gets the seed ``noise_seed(bank.seed, i)`` (latents passed as a
tensor count as a bank with seed :data:`TENSOR_LATENTS_SEED`), so every edited variant of a batch
sees the same noise, a call is reproducible, and the caller's global RNG never moves. The keyword
options shared by all of them are :class:`RunOptions` (``batch_size``, ``generate``, ``selector``,
``distributed``) and, for the effects, :class:`InterventionOptions` (``control_seed``,
``num_controls``).

Under an initialised ``torch.distributed`` process group each rank passes *its own* latents (e.g.
``bank[shard_indices(len(bank), rank, world_size)]``) and every rank gets the same result: the
pixel counts are all-reduced, so the fractions equal those of one process over all latents bit for
bit (when each latent's image does not depend on its batch or noise). All ranks must call the
function with the same arguments apart from the latents; a failure on one rank raises on all.
``distributed=False`` runs on this process alone, even inside a process group: no collective, no
metric sync.
"""

from __future__ import annotations

from lightning_dissect.interventions._common import (
    TENSOR_LATENTS_SEED,
    InterventionOptions,
    Latents,
    RunOptions,
)
from lightning_dissect.interventions._reader import ReaderOptions
from lightning_dissect.interventions.causal import DEFAULT_SIZES, causal_units
from lightning_dissect.interventions.causal_result import CausalComparison, CausalUnits
from lightning_dissect.interventions.check import ablation_check
from lightning_dissect.interventions.curve import AblationCurve, ablation_curve
from lightning_dissect.interventions.edits import ablate, insert, intervene, random_units
from lightning_dissect.interventions.effects import ablation_effect, average_causal_effect
from lightning_dissect.interventions.insertion import insertion_effect
from lightning_dissect.interventions.reader_curves import ReaderCurve, reader_curve
from lightning_dissect.interventions.readers import reader_ablation
from lightning_dissect.interventions.records import (
    AblationEffect,
    CausalEffect,
    EffectRecord,
    InsertionEffect,
    ReaderAblationEffect,
)
from lightning_dissect.interventions.statistics import UnitStatistics, unit_statistics

__all__ = [
    "Latents",
    "RunOptions",
    "InterventionOptions",
    "ReaderOptions",
    "TENSOR_LATENTS_SEED",
    "UnitStatistics",
    "EffectRecord",
    "AblationEffect",
    "InsertionEffect",
    "CausalEffect",
    "AblationCurve",
    "CausalUnits",
    "CausalComparison",
    "DEFAULT_SIZES",
    "intervene",
    "ablate",
    "insert",
    "unit_statistics",
    "random_units",
    "ablation_effect",
    "insertion_effect",
    "average_causal_effect",
    "ablation_curve",
    "ablation_check",
    "causal_units",
    "ReaderAblationEffect",
    "reader_ablation",
    "ReaderCurve",
    "reader_curve",
]
