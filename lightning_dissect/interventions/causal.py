r"""Causal unit sets: learn which units *cause* a concept (GAN Dissection §3.2).

Dissection ranks units by how well they *match* a concept (IoU). :func:`causal_units` learns a
coefficient :math:`\alpha_u \in [0, 1]` per unit of one layer so that switching the units off in
proportion to α removes the concept where it is, and switching them on creates it where it is
not, with as little α as possible:

.. math::

    L(\alpha) = \frac{\sum_{z,p \in P} s_c(G_{\alpha}^{0}(z))_p}{|P|}
              - \frac{\sum_{z,p \notin P} s_c(G_{\alpha}^{v}(z))_p}{|\bar P|}
              + \lambda \lVert\alpha\rVert_2^2

where :math:`G_{\alpha}^{v}` is the generator with the layer edited as
:math:`r \leftarrow r\,(1-\alpha) + v\,\alpha` (every unit, every position), :math:`s_c` the
segmenter's soft, differentiable score of concept ``c`` (:func:`~lightning_dissect.segmenters.concept_scores_of`),
:math:`P` the pixels where the (hard) segmentation shows ``c`` in the unedited image and
:math:`v_u` each unit's mean activation where ``c`` is present. α is initialised from the IoU
ranking, optimised with Adam on the gradient over the *whole* sample set (one step per pass,
summed across ranks under DDP) and clamped to ``[0, 1]`` after each step. The generator is frozen:
gradients go only into α (its parameters' ``.grad`` stays ``None``), its weights and the global
RNG are not touched.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_dissect._utils.checks import check_int, check_real
from lightning_dissect.engine.hooks import LayerEdit
from lightning_dissect.engine.latents import map_latents, noise_seed
from lightning_dissect.engine.runner import eval_mode
from lightning_dissect.interventions._common import (
    _RUN_DEFAULTS,
    Latents,
    RunOptions,
    _concept_index,
    _control_rng,
    _sum_over_ranks,
)
from lightning_dissect.interventions._engine import _Variant
from lightning_dissect.interventions._prepare import Prepared, _prepare
from lightning_dissect.interventions.causal_result import CausalComparison, CausalUnits
from lightning_dissect.interventions.curve import _concept_iou
from lightning_dissect.result import LayerDissection
from lightning_dissect.segmenters.base import ConceptScores, Segmenter, concept_scores_of

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["DEFAULT_SIZES", "causal_units"]

DEFAULT_SIZES = (1, 2, 4, 8, 16, 32)
"""The ``n`` at which α-ranked, IoU-ranked and random units are compared (capped by the width)."""


def causal_units(
    generator: nn.Module,
    layer: str,
    concept: int | str,
    segmenter: Segmenter,
    latents: Latents,
    iou: Tensor | LayerDissection,
    *,
    steps: int = 8,
    lr: float = 0.1,
    l2: float = 0.005,
    sizes: Sequence[int] | None = None,
    seed: int = 0,
    num_examples: int = 4,
    **options: Unpack[RunOptions],
) -> CausalUnits:
    """Learn α per unit of ``layer`` for ``concept``; compare α-, IoU- and randomly chosen units.

    One pass over ``latents`` segments the unedited images (where the concept is present) and
    takes each unit's mean activation there (the insertion value ``v``). Then ``steps`` Adam steps
    on the objective of the module docs, each over the whole sample set (two generator
    forward+backward passes per image: ablated and inserted). Finally the top ``n`` units by α,
    the top ``n`` by IoU and ``n`` random units are ablated (``v = 0``) and inserted (``v``), for
    every ``n`` of ``sizes``, and the concept's pixel fraction is measured with the hard labels,
    as in :func:`~lightning_dissect.interventions.ablation_curve`.

    Args:
        generator: The generator (frozen: only α gets gradients).
        layer: Dotted name of the layer (its output must be editable: a tensor, or a selector).
        concept: Concept name or index.
        segmenter: Images → labels, with ``concept_scores`` (soft per-pixel scores).
        latents: This process's sample latents (the paper: ≈ 1,000 images).
        iou: ``(U,)`` or ``(U, C)`` IoU, or a :class:`~lightning_dissect.result.LayerDissection`:
            the initial α (``0.5 · IoU / max IoU``) and the IoU ranking compared against.
        steps: Adam steps (each a pass over all latents), at least 1.
        lr: Adam's learning rate, in ``(0, 1]``.
        l2: Weight ``λ ≥ 0`` of the penalty ``λ‖α‖²`` that keeps the set small.
        sizes: The ``n`` to compare at (default :data:`DEFAULT_SIZES` up to the layer width).
        seed: Seed of the random units' draw.
        num_examples: Sample images kept as pictures (those with the most of the concept): each
            unedited, with the top α units ablated and with them inserted (0: none).
        **options: :class:`RunOptions`: ``batch_size``, ``generate``, ``selector``, ``distributed``.

    Returns:
        A :class:`CausalUnits`: ``alpha`` per unit, ``ranking``, the ``comparison`` and settings.

    Raises:
        KeyError: ``concept`` is not in the vocabulary (the closest names are suggested).
        ValueError: A setting is out of range, the layer cannot be captured and edited, or the
            concept never appears in the sample images (found before optimising).
        TypeError: The segmenter has no soft concept scores.

    Examples:
        >>> from lightning_dissect.interventions._toy import sky_grass
        >>> gen, segmenter = sky_grass()  # unit 0 of layer "1" paints sky, unit 1 grass
        >>> z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.3], [0.2, 0.8]])
        >>> result = causal_units(gen, "1", "sky", segmenter, z, iou=torch.tensor([0.5, 0.5]))
        >>> result.top_units(1), len(result.alpha)
        ([0], 2)
        >>> result.baseline, result.comparison[0].ablated_alpha  # no sky left without unit 0
        (0.25, 0.0)
    """
    steps, lr, l2 = _check_settings(steps, lr, l2)
    scores = concept_scores_of(segmenter)
    index = _concept_index(concept, segmenter)
    iou = _concept_iou(iou, index).detach().float().cpu()
    p = _prepare(
        generator, layer, segmenter, latents, concept=index, num_units=int(iou.shape[0]), options=options,
        function="causal_units", defaults=_RUN_DEFAULTS,
    )  # fmt: skip
    points = _sizes(sizes, p.width)
    _dry_run(p)
    stats = _concept_statistics(p)
    _require_concept(p, stats)
    alpha0 = _initial_alpha(iou)
    alpha, gradient, history, passes = _optimise(p, scores, stats, alpha0, steps, lr, l2)
    ranking = _ranking(alpha, gradient)
    iou_ranking = torch.sort(-torch.nan_to_num(iou, nan=-1.0).double(), stable=True).indices
    order = torch.randperm(p.width, generator=_control_rng(seed, p.concept))
    baseline, comparison = _compare(p, stats.value, points, ranking, iou_ranking, order)
    shown = _shown_units(comparison, baseline)
    examples = _examples(p, stats, ranking[:shown], check_int(num_examples, "num_examples", minimum=0))
    return CausalUnits(
        layer=p.layer,
        concept=p.concept_name,
        concept_index=p.concept,
        alpha=alpha,
        ranking=ranking,
        iou=iou,
        gradient=gradient,
        insertion_value=stats.value.cpu(),
        baseline=baseline,
        comparison=comparison,
        loss=history,
        settings={
            "steps": steps, "lr": float(lr), "l2": float(l2), "init": "0.5 * iou / max(iou)",
            "batch_size": p.runner.batch_size, "sizes": points,
        },  # fmt: skip
        seed=int(seed),
        num_images=stats.num_images,
        num_images_with_concept=stats.images_with_concept,
        passes_per_image=passes,
        examples=examples,
        example_units=ranking[:shown].tolist() if examples else [],
    )


# ---------------------------------------------------------------------- checks
def _require_concept(p: Prepared, stats: _Statistics) -> None:
    """The concept must appear in the sample images: otherwise there is nothing to remove or to learn from."""
    if stats.present_pixels == 0:
        raise ValueError(
            f"concept {p.concept_name!r} does not appear in any of the {stats.num_images} sample images: there "
            "is nothing to remove or to learn from; choose a concept the generator draws, or more latents"
        )


def _check_settings(steps: Any, lr: Any, l2: Any) -> tuple[int, float, float]:
    """``steps`` in [1, 10000], ``lr`` in (0, 1], ``l2`` in [0, 1] (a wrong type is a ``TypeError``)."""
    steps = check_int(steps, "steps", minimum=1)
    if steps > 10_000:
        raise ValueError(f"`steps` must be in [1, 10000], got {steps!r}")
    lr = check_real(lr, "lr", low=0.0, high=1.0, low_open=True)
    l2 = check_real(l2, "l2", low=0.0, high=1.0)
    return steps, lr, l2  # type: ignore[return-value]


def _sizes(sizes: Sequence[int] | None, width: int) -> list[int]:
    if sizes is None:
        return [n for n in DEFAULT_SIZES if n <= width] or [width]
    points = sorted({int(n) for n in sizes})
    if not points or points[0] < 1 or points[-1] > width:
        raise ValueError(f"`sizes` must be ints in [1, {width}] (the layer width), got {list(sizes)}")
    return points


def _dry_run(p: Prepared) -> None:
    """Capture and edit the layer on two latents: a layer that cannot be edited fails here."""
    probe = {p.layer: LayerEdit(alpha=torch.zeros(p.width), value=0.0)}
    with p.runner.collective("causal units dry run"):
        if len(p.bank):
            p.runner.preflight(p.bank, [p.layer], p.segmenter, edits=probe, what="causal units (layer edit check)")


# ---------------------------------------------------------------------- pass 1
@dataclass
class _Statistics:
    present: list[Tensor]  # per batch, (B, H', W') bool: the concept's pixels in the unedited images
    value: Tensor  # (U,) mean activation where the concept is present
    present_pixels: int
    absent_pixels: int
    images_with_concept: int
    num_images: int


def _present(labels: Tensor, concept: int) -> Tensor:
    return labels == concept if labels.ndim == 3 else (labels == concept).any(1)


def _concept_statistics(p: Prepared) -> _Statistics:
    """Where the concept is, and each unit's mean activation there (one pass, synced)."""
    runner, width = p.runner, p.width
    present: list[Tensor] = []
    local = torch.zeros(width + 5, dtype=torch.float64)  # activation sums, weight, P, A, images with c, images
    with runner.session(), runner.collective("causal units statistics"):
        for batch in runner.batches(p.bank, torch.arange(len(p.bank)), layers=[p.layer], segmenter=p.segmenter):
            assert batch.labels is not None
            r = batch.activations[p.layer].float()
            if r.shape[1] != width:
                raise ValueError(f"`iou` has {width} units but layer {p.layer!r} has {r.shape[1]}")
            mask = _present(batch.labels, p.concept)
            weight = F.interpolate(mask[:, None].float(), size=tuple(r.shape[-2:]), mode="area")
            local[:width] += (r * weight).sum((0, 2, 3)).double().cpu()
            per_image = mask.flatten(1).sum(1)
            local[width:] += torch.tensor(
                [float(weight.sum()), float(per_image.sum()), float((~mask).sum()), float((per_image > 0).sum()),
                 float(mask.shape[0])], dtype=torch.float64,
            )  # fmt: skip
            present.append(mask.cpu().clone())
    total = _sum_over_ranks(local, runner)
    weight = float(total[width])
    value = (total[:width] / weight).float() if weight > 0 else torch.zeros(width)
    counts = [int(v) for v in total[width + 1 :]]
    return _Statistics(present, value.clone(), *counts)


# ---------------------------------------------------------------------- optimisation
def _initial_alpha(iou: Tensor) -> Tensor:
    """``0.5 · IoU / max IoU`` (0 for a non-positive or NaN IoU; 0.5 everywhere if all are 0)."""
    clean = torch.nan_to_num(iou.float(), nan=0.0).clamp(min=0.0)
    top = float(clean.max()) if clean.numel() else 0.0
    return 0.5 * clean / top if top > 0 else torch.full_like(clean, 0.5)


@contextmanager
def _grad_session(model: nn.Module) -> Iterator[None]:
    """Gradients on (also inside an inference-mode caller), eval mode, parameters frozen."""
    frozen = [prm for prm in model.parameters() if prm.requires_grad]
    with torch.inference_mode(False), torch.enable_grad(), eval_mode(model):
        for prm in frozen:
            prm.requires_grad_(False)
        try:
            yield
        finally:
            for prm in frozen:
                prm.requires_grad_(True)


def _optimise(
    p: Prepared, scores: ConceptScores, stats: _Statistics, alpha0: Tensor, steps: int, lr: float, l2: float
) -> tuple[Tensor, Tensor, list[list[float]], int]:
    """Adam on α with full-sample-set gradients; returns α, the last gradient, losses, passes/image."""
    with torch.inference_mode(False):  # normal tensors also when the caller is in inference mode
        return _adam(p, scores, stats, alpha0, steps, lr, l2)


def _adam(
    p: Prepared, scores: ConceptScores, stats: _Statistics, alpha0: Tensor, steps: int, lr: float, l2: float
) -> tuple[Tensor, Tensor, list[list[float]], int]:
    runner, width, c = p.runner, p.width, p.concept
    device = runner.device
    alpha = nn.Parameter(alpha0.clone())
    optimiser = torch.optim.Adam([alpha], lr=lr)
    batches = runner.split(torch.arange(len(p.bank)))
    value = stats.value
    history: list[list[float]] = []
    gradient = torch.zeros(width)
    passes = 0.0
    for _ in range(steps):
        local = torch.zeros(width + 3, dtype=torch.float64)  # gradient, ablation, insertion, image passes
        with runner.collective("causal units optimisation"), _grad_session(runner.model):
            v = value.to(device).clone()
            for idx, mask in zip(batches, stats.present):
                z = map_latents(lambda t: t.clone(), p.bank[idx])
                seed = noise_seed(p.bank.seed, int(idx[0]))
                present = mask.to(device).clone()
                terms = [("ablation", 0.0, present, stats.present_pixels, 1.0)]
                if stats.absent_pixels:
                    terms.append(("insertion", v, ~present, stats.absent_pixels, -1.0))
                for k, (_, written, where, count, sign) in enumerate(terms):
                    if not bool(where.any()):
                        continue
                    a = alpha.detach().to(device).clone().requires_grad_(True)
                    images, _ = runner.forward(z, (), edits={p.layer: LayerEdit(alpha=a, value=written)}, seed=seed)
                    s = scores(images)
                    if s.ndim != 4 or tuple(s.shape[-2:]) != tuple(where.shape[-2:]) or s.shape[1] <= c:
                        raise ValueError(
                            f"the segmenter's concept_scores have shape {tuple(s.shape)}; expected (B, C, H', W') "
                            f"at the size of its labels {tuple(where.shape[-2:])}"
                        )
                    loss = sign * (s[:, c] * where).sum() / count
                    (grad,) = torch.autograd.grad(loss, a)
                    local[:width] += grad.double().cpu()
                    local[width + k] += float(loss.detach())
                    local[width + 2] += len(idx)
        total = _sum_over_ranks(local, runner)
        gradient = total[:width].float()
        penalty = l2 * float((alpha.detach() ** 2).sum())
        history.append([float(total[width]), float(total[width + 1]), penalty])
        passes += float(total[width + 2])
        alpha.grad = gradient + 2.0 * l2 * alpha.detach()
        optimiser.step()
        with torch.no_grad():
            alpha.clamp_(0.0, 1.0)
    per_image = round(passes / stats.num_images) if stats.num_images else 0
    return alpha.detach().clone(), gradient, history, per_image


def _ranking(alpha: Tensor, gradient: Tensor) -> Tensor:
    """Units by decreasing α; ties by the more negative (more causal) gradient, then the lower unit."""
    order = sorted(range(alpha.numel()), key=lambda u: (-float(alpha[u]), float(gradient[u]), u))
    return torch.tensor(order, dtype=torch.long)


# ---------------------------------------------------------------------- evaluation
def _shown_units(comparison: list[CausalComparison], baseline: float) -> int:
    """The ``n`` pictured: the smallest whose α-ablation leaves at most 10 % of the concept.

    Else the ``n`` that leaves the least.
    """
    for c in comparison:
        if c.ablated_alpha <= 0.1 * baseline:
            return c.n
    return min(comparison, key=lambda c: (c.ablated_alpha, c.n)).n


def _examples(p: Prepared, stats: _Statistics, units: Tensor, count: int) -> dict[str, Tensor]:
    """``{"before", "ablated", "inserted"}`` → ``(k, C, H, W)`` images of the samples richest in the concept.

    Only this process's latents are looked at (pictures, not statistics: no collective).
    """
    if not count:
        return {}
    pixels = torch.cat([m.flatten(1).sum(1) for m in stats.present]) if stats.present else torch.zeros(0)
    if not len(pixels) or int(pixels.max()) == 0:
        return {}
    chosen = torch.sort(-pixels.double(), stable=True).indices[: min(count, int((pixels > 0).sum()))]
    strength = torch.zeros(p.width)
    strength[units] = 1.0
    edits = {
        "before": None,
        "ablated": {p.layer: LayerEdit(alpha=strength, value=0.0)},
        "inserted": {p.layer: LayerEdit(alpha=strength, value=stats.value)},
    }
    out: dict[str, list[Tensor]] = {name: [] for name in edits}
    with p.runner.session():
        for index in chosen.tolist():
            first = index - index % p.runner.batch_size  # its batch: the same generator noise
            batch = torch.arange(first, min(first + p.runner.batch_size, len(p.bank)))
            for name, edit in edits.items():
                images, _ = p.runner.forward(p.bank[batch], (), edits=edit, seed=noise_seed(p.bank.seed, first))
                out[name].append(images[index - first].detach().float().cpu().clone())
    return {name: torch.stack(images) for name, images in out.items()}


def _compare(
    p: Prepared, value: Tensor, points: list[int], ranking: Tensor, iou_ranking: Tensor, order: Tensor
) -> tuple[float, list[CausalComparison]]:
    """Ablate and insert the top-``n`` by α, by IoU and ``n`` random units; measure the concept."""
    sets = {n: {"alpha": ranking[:n], "iou": iou_ranking[:n], "random": order[:n]} for n in points}
    variants: dict[Hashable, _Variant] = {"baseline": _Variant(None)}

    def key(kind: str, units: Tensor) -> Hashable:
        return (kind, tuple(sorted(units.tolist())))

    for chosen in sets.values():
        for units in chosen.values():
            strength = torch.zeros(p.width)
            strength[units] = 1.0
            variants[key("ablated", units)] = _Variant({p.layer: LayerEdit(alpha=strength, value=0.0)})
            variants[key("inserted", units)] = _Variant({p.layer: LayerEdit(alpha=strength, value=value)})
    fractions = p.measure(variants).fractions
    c = p.concept

    def fraction(kind: str, units: Tensor) -> float:
        return float(fractions[key(kind, units)][c])

    comparison = [
        CausalComparison(
            n=n,
            units_alpha=chosen["alpha"].tolist(),
            units_iou=chosen["iou"].tolist(),
            units_random=chosen["random"].tolist(),
            **{f"{kind}_{name}": fraction(kind, chosen[name]) for kind in ("ablated", "inserted") for name in chosen},
        )
        for n, chosen in sets.items()
    ]
    return float(fractions["baseline"][c]), comparison
