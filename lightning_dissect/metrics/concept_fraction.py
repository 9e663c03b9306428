"""``ConceptPixelFraction``: the fraction of pixels that carry each concept, ``E[s_c(x)]``.

This is the quantity the intervention experiments compare before and after editing a generator
(GAN Dissection's ablation check and average causal effect). The states are integer pixel counts
reduced by summation, so a run split over processes gives bit-identical fractions to one process.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from lightning_dissect._utils.checks import (
    check_ignore_index,
    check_int,
    check_mask,
    check_segmentation,
)
from lightning_dissect.functional.counts import concept_labels
from lightning_dissect.functional.upsample import resample_mask
from lightning_dissect.metrics._base import SumStateMetric

__all__ = ["ConceptPixelFraction", "concept_pixel_counts", "per_image_concept_fractions"]


def _region_mask(mask: Tensor, segmentation: Tensor) -> Tensor:
    """Resample a region mask at any size to a boolean ``(B, H, W)`` at the segmentation's size.

    ``mask`` is ``(H', W')``, ``(B, H', W')`` or ``(B, 1, H', W')`` with values in ``[0, 1]``
    (or bool). A coarser mask is nearest-upsampled, a finer one area-pooled; a pixel is inside
    where the resampled value is at least 0.5.
    """
    batch = segmentation.shape[0]
    size = tuple(segmentation.shape[-2:])
    m = resample_mask(mask.to(segmentation.device), size)
    if m.shape[0] not in (1, batch):
        raise ValueError(
            f"`mask` must be (H, W), (B, H, W) or (B, 1, H, W) with B={batch}, got shape {tuple(mask.shape)}"
        )
    return (m[:, 0] >= 0.5).expand(batch, *size)


def concept_pixel_counts(
    segmentation: Tensor,
    num_concepts: int,
    ignore_index: int | None = None,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-image pixel counts of every concept and per-image pixel totals.

    A concept repeated within one pixel (multi-label input) counts once; pixels labelled
    ``ignore_index`` carry no concept but count toward the total; with a region ``mask`` only the
    pixels inside the region count.

    Args:
        segmentation: ``(B, H, W)`` labels or ``(B, L, H, W)`` multi-labels (not validated here).
        num_concepts: Number of concepts ``C``.
        ignore_index: Label of pixels that carry no concept.
        mask: Optional region at any resolution (see :class:`ConceptPixelFraction`).

    Returns:
        ``(counts, totals)``: int64 ``(B, C)`` and ``(B,)``.

    Examples:
        >>> seg = torch.tensor([[[1, 1], [2, 0]]])
        >>> counts, totals = concept_pixel_counts(seg, 3, ignore_index=0)
        >>> counts.tolist(), totals.tolist()
        ([[0, 2, 1]], [4])

    """
    batch = segmentation.shape[0]
    pixels = int(segmentation.shape[-2]) * int(segmentation.shape[-1])
    labels = concept_labels(segmentation, num_concepts, ignore_index)  # (L, B*H*W), sink = C
    if mask is not None:
        inside = _region_mask(mask, segmentation).reshape(-1)
        labels = labels.masked_fill(~inside.unsqueeze(0), num_concepts)
        totals = inside.view(batch, pixels).sum(1, dtype=torch.int64)
    else:
        totals = torch.full((batch,), pixels, dtype=torch.int64, device=segmentation.device)
    width = num_concepts + 1
    image = torch.arange(batch, device=labels.device).repeat_interleave(pixels)
    keys = image.unsqueeze(0) * width + labels
    counts = torch.bincount(keys.reshape(-1), minlength=batch * width).view(batch, width)
    return counts[:, :num_concepts], totals


def per_image_concept_fractions(
    segmentation: Tensor,
    num_concepts: int,
    ignore_index: int | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Fraction of each image's pixels (or region pixels) carrying each concept, ``(B, C)`` float64.

    Useful for the spread of a concept's fraction across images (0 where a region is empty).

    Examples:
        >>> seg = torch.tensor([[[1, 1], [2, 2]], [[1, 1], [1, 1]]])
        >>> per_image_concept_fractions(seg, 3).tolist()
        [[0.0, 0.5, 0.5], [0.0, 1.0, 0.0]]

    """
    check_segmentation(segmentation, num_concepts=num_concepts, ignore_index=ignore_index)
    if mask is not None:
        check_mask(mask)
    counts, totals = concept_pixel_counts(segmentation, num_concepts, ignore_index, mask)
    totals = totals.to(torch.float64).unsqueeze(1)
    return torch.where(totals > 0, counts.to(torch.float64) / totals.clamp(min=1), 0.0)


class ConceptPixelFraction(SumStateMetric):
    r"""Fraction of all pixels seen that carry each concept.

    .. math:: f_c = \frac{\#\{(x, p) : c \in s(x)_p\}}{\#\{(x, p)\}}

    over every pixel ``p`` of every image ``x``: the pixel-weighted mean of ``s_c(x)``, which is
    ``E_x[s_c(x)]`` when all segmentations have the same size. Pixels labelled ``ignore_index``
    carry no concept but count toward the total. With a region ``mask`` passed to :meth:`update`
    only the pixels inside the region count (the fraction *within* the region).

    States (all int64 sums, all-reduced under DDP): ``concept_pixels (C,)``, ``total_pixels ()``,
    and, for :meth:`standard_error`, ``num_images ()`` and ``concept_pixels_sq (C,)`` (the sum
    over images of the squared per-image count).

    Args:
        num_concepts: Number of concepts ``C``; labels lie in ``[0, C)``.
        ignore_index: A label that marks pixels carrying no concept (inside ``[0, C)``, e.g. 0 =
            "unlabeled", whose fraction is then 0, or outside it, e.g. 255).
        validate_args: Check dtype, shape and label range of every batch (and that a region
            ``mask`` is finite and inside ``[0, 1]``).
        kwargs: Passed to :class:`torchmetrics.Metric`; ``dist_sync_fn`` defaults to
            :func:`~lightning_dissect.metrics.all_reduce_sum`.

    Examples:
        >>> metric = ConceptPixelFraction(num_concepts=3, ignore_index=0)
        >>> metric.update(torch.tensor([[[1, 1], [2, 0]]]))
        >>> metric.update(torch.tensor([[[1, 1], [1, 1]]]))
        >>> metric.compute()
        tensor([0.0000, 0.7500, 0.1250], dtype=torch.float64)
        >>> metric.update(torch.tensor([[[2, 2], [2, 2]]]), mask=torch.tensor([[1, 0], [0, 0]]))
        >>> metric.compute()  # the third image contributes only its top-left pixel
        tensor([0.0000, 0.6667, 0.2222], dtype=torch.float64)

    """

    higher_is_better: bool | None = None

    concept_pixels: Tensor
    total_pixels: Tensor
    num_images: Tensor
    concept_pixels_sq: Tensor

    def __init__(
        self,
        num_concepts: int,
        ignore_index: int | None = None,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_concepts = check_int(num_concepts, "num_concepts", minimum=1)
        self.ignore_index = check_ignore_index(ignore_index)
        self.validate_args = validate_args
        self._add_sum_state("concept_pixels", (self.num_concepts,))
        self._add_sum_state("total_pixels", ())
        self._add_sum_state("num_images", ())
        self._add_sum_state("concept_pixels_sq", (self.num_concepts,))

    def _settings_text(self) -> str:
        return f"num_concepts={self.num_concepts}"

    def _state_axes(self) -> dict[str, tuple[tuple[str, int], ...]]:
        concepts = (("num_concepts", self.num_concepts),)
        return {
            "concept_pixels": concepts,
            "total_pixels": (),
            "num_images": (),
            "concept_pixels_sq": concepts,
        }

    def update(self, segmentation: Tensor, mask: Tensor | None = None) -> None:
        """Add a batch of segmentations.

        Args:
            segmentation: ``(B, H, W)`` integer labels or ``(B, L, H, W)`` multi-labels; a concept
                repeated within one pixel counts once.
            mask: Optional region ``(H', W')``, ``(B, H', W')`` or ``(B, 1, H', W')`` in
                ``[0, 1]`` at any resolution: resampled to ``(H, W)`` (area-pooled when finer,
                nearest when coarser); pixels where it is ``>= 0.5`` count, the others are
                skipped.

        """
        check_segmentation(
            segmentation,
            num_concepts=self.num_concepts,
            ignore_index=self.ignore_index,
            check_values=self.validate_args,
        )
        if mask is not None:
            check_mask(mask, check_values=self.validate_args)
        counts, totals = concept_pixel_counts(
            segmentation.to(self.concept_pixels.device),
            self.num_concepts,
            self.ignore_index,
            mask,
        )
        self.concept_pixels += counts.sum(0)
        self.concept_pixels_sq += (counts * counts).sum(0)
        self.total_pixels += totals.sum()
        self.num_images += segmentation.shape[0]

    def compute(self) -> Tensor:
        """Return the ``(C,)`` float64 fraction of pixels carrying each concept (0 if none seen)."""
        total = int(self.total_pixels)
        if total == 0:
            return torch.zeros(self.num_concepts, dtype=torch.float64, device=self.device)
        return self.concept_pixels.to(torch.float64) / total

    def standard_error(self) -> Tensor:
        """Return the standard error ``(C,)`` of the mean per-image fraction (float64, synced).

        Exact when every image contributes the same number of pixels (a fixed segmentation size
        and no region mask), else an approximation using the mean pixel count per image. NaN
        with fewer than two images. Synchronises like ``compute``: under DDP call it on every
        rank.
        """
        with self.synced_states():
            n = int(self.num_images)
            total = int(self.total_pixels)
            s1 = self.concept_pixels.to(torch.float64)
            s2 = self.concept_pixels_sq.to(torch.float64)
        if n < 2 or total == 0:
            return torch.full((self.num_concepts,), math.nan, dtype=torch.float64, device=s1.device)
        pixels = total / n
        variance = ((s2 - s1 * s1 / n) / (n - 1)).clamp(min=0.0) / (pixels * pixels)
        return (variance / n).sqrt()

    def plot(
        self,
        val: Tensor | None = None,
        ax: Any = None,
        *,
        concept_names: Sequence[str] | None = None,
        max_concepts: int = 20,
        error_bars: bool = True,
    ) -> tuple[Any, Any]:
        """The fraction of pixels of each concept, largest first, as bars (TorchMetrics' ``plot``).

        Concepts with a zero fraction are left out; at most ``max_concepts`` bars. Error bars are
        :meth:`standard_error` when ``val`` is not given and at least two images were seen.

        Args:
            val: Fractions ``(C,)`` (default: :meth:`compute`).
            ax: Axes to draw into (default: a new figure).
            concept_names: Bar labels (default: concept indices).
            max_concepts: Bars shown.
            error_bars: Draw the standard errors (with ``val`` not given).

        Returns:
            ``(fig, ax)``. Needs matplotlib.

        Examples:
            >>> metric = ConceptPixelFraction(num_concepts=3, ignore_index=0)
            >>> metric.update(torch.tensor([[[1, 1], [2, 0]]]))
            >>> fig, ax = metric.plot(concept_names=["none", "sky", "tree"])
            >>> [t.get_text() for t in ax.get_yticklabels()], [float(p.get_width()) for p in ax.patches]
            (['sky', 'tree'], [0.5, 0.25])
        """
        from lightning_dissect.metrics._plot import figure_and_axes

        fractions = (self.compute() if val is None else val).detach().double().cpu()
        if fractions.ndim != 1:
            raise ValueError(f"`val` must be (C,) fractions, got shape {tuple(fractions.shape)}")
        names = list(concept_names) if concept_names is not None else [str(c) for c in range(len(fractions))]
        if len(names) != len(fractions):
            raise ValueError(f"`concept_names` has {len(names)} names for {len(fractions)} concepts")
        errors = self.standard_error().cpu() if val is None and error_bars else None
        if errors is not None and bool(errors.isnan().all()):
            errors = None
        shown = [c for c in sorted(range(len(fractions)), key=lambda c: (-float(fractions[c]), c))
                 if float(fractions[c]) > 0][: max(1, max_concepts)]
        fig, ax = figure_and_axes(ax, (6.0, 0.9 + 0.3 * max(len(shown), 1)))
        rows = list(range(len(shown)))
        xerr = None if errors is None else [float(errors[c]) for c in shown]
        ax.barh(rows, [float(fractions[c]) for c in shown], xerr=xerr, color="#4c6ef5", capsize=2)
        ax.set_yticks(rows, [names[c] for c in shown])
        ax.invert_yaxis()  # largest on top
        ax.set_xlabel("fraction of pixels")
        ax.set_title("Pixels carrying each concept")
        return fig, ax
