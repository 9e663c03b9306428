"""Running a generator for dissection: latents in, images and activations out.

:class:`GeneratorRunner` is the :class:`~lightning_dissect.engine.runner.ModuleRunner` of a
generator. Everything that runs a generator — :func:`~lightning_dissect.dissect`, every
intervention, unit-strip rendering, the callback and the command line — goes through it. On top of
what every runner does, it owns:

* the ``generate`` call (``generator(latents)`` by default) and the check that it returns images;
* generator noise seeded per batch of the latent bank
  (:meth:`~lightning_dissect.engine.latents.LatentBank.noise_seed`): a batch of the same latents
  gets the same noise in every pass, and the caller's global RNG never moves;
* the pre-flight check on two latents before any long work (:meth:`GeneratorRunner.preflight`),
  and the choice of a latent layout by it (:meth:`GeneratorRunner.choose_latents`);
* within one :meth:`~GeneratorRunner.session`, the batches it generated (images and captured
  maps, up to :data:`BATCH_CACHE_BYTES`): a second pass over the same latents (the counting pass
  of a dissection) takes them instead of running the generator again.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch
from torch import Tensor, nn

from lightning_dissect.engine.hooks import LayerEdit, OutputSelector
from lightning_dissect.engine.latents import LatentBank, LatentSampler, map_latents
from lightning_dissect.engine.layouts import LayerLayout, channels_last_images_hint
from lightning_dissect.engine.runner import (
    Batch,
    DryRunError,
    LayerCallError,
    ModuleRunner,
    SegmenterError,
    _check_maps,
    _maybe_seeded,
)
from lightning_dissect.segmenters.base import Segmenter

__all__ = ["BATCH_CACHE_BYTES", "Generate", "GeneratorRunner"]

#: Bytes of generated batches (images and maps) a :class:`GeneratorRunner` keeps within a session.
BATCH_CACHE_BYTES = 64 << 20

Generate = Callable[[nn.Module, Any], Tensor]
"""``(generator, latents) -> images``; the default calls ``generator(latents)``."""


def _default_generate(generator: nn.Module, latents: Any) -> Tensor:
    return generator(latents)


class GeneratorRunner(ModuleRunner[LatentBank]):
    """Calls a generator on latents with hooks, seeded noise and checks (see the module docs).

    Args:
        generator: The generator (``torch.compile``d and DDP-wrapped modules are looked through
            for hooks; calls go to the module as given).
        generate: Custom ``(generator, latents) -> images`` call; the default is
            ``generator(latents)``.
        selector: Picks the tensor of tuple/dict layer outputs (one for all layers, or a mapping
            ``layer -> selector``).
        batch_size: Latents per generator call.
        device: Where to run; ``None``: the generator's device.
        distributed: ``False`` runs on this process only even inside an initialised process
            group (no collective is called).

    Examples:
        >>> gen = nn.Sequential(nn.Linear(4, 2 * 2 * 2), nn.Unflatten(1, (2, 2, 2)),
        ...                     nn.Conv2d(2, 3, 1), nn.Tanh())
        >>> runner = GeneratorRunner(gen, batch_size=3)
        >>> bank = LatentBank(5, (4,), seed=1)
        >>> with runner.session():
        ...     shapes = [tuple(b.activations["1"].shape) for b in runner.batches(bank, layers=["1"])]
        >>> shapes
        [(3, 2, 2, 2), (2, 2, 2, 2)]
    """

    kind = "generator"

    def __init__(
        self,
        generator: nn.Module,
        *,
        generate: Generate | None = None,
        selector: OutputSelector | Mapping[str, OutputSelector] = None,
        batch_size: int = 32,
        device: torch.device | str | None = None,
        distributed: bool = True,
    ) -> None:
        super().__init__(generator, selector=selector, batch_size=batch_size, device=device, distributed=distributed)
        if generate is not None and not callable(generate):
            raise TypeError(f"`generate` must be a callable (generator, latents) -> images, got {generate!r}")
        self.generate = generate or _default_generate
        #: The batch a pre-flight check read with ``keep=True``, for the next :meth:`read` of it.
        self._kept: tuple[LatentBank, tuple[str, ...], Batch] | None = None
        #: Bytes of generated batches kept for a later pass of the same session; 0 keeps none.
        self.cache_bytes = BATCH_CACHE_BYTES
        self._batches: dict[tuple[Any, ...], tuple[LatentBank, Batch]] = {}
        self._cached_bytes = 0

    def _end_session(self) -> None:
        self._batches.clear()
        self._cached_bytes = 0

    @property
    def generator(self) -> nn.Module:
        """The generator, as given (the runner's :attr:`network`)."""
        return self.network

    # ------------------------------------------------------------------ one call
    def forward(
        self,
        latents: Any,
        layers: Sequence[str] = (),
        *,
        edits: Mapping[str, LayerEdit] | None = None,
        seed: int | None = None,
        require_maps: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Generate images from ``latents``, capturing ``layers`` and applying ``edits``.

        Args:
            latents: A batch of latents (moved to the runner's device).
            layers: Layers whose outputs to capture.
            edits: ``layer -> LayerEdit`` applied during the call.
            seed: Seed of the generator noise (the global RNG is restored afterwards).
            require_maps: Captured outputs must be ``(B, U, h, w)`` maps.

        Returns:
            ``(images, activations)``.
        """
        z = map_latents(self._move, latents)
        images, activations = self._hooked(
            lambda: self.generate(self.network, z), layers, edits=edits, seed=seed, require_maps=require_maps,
            check_output=_check_images_shape,
        )
        return images, activations

    def read(
        self,
        source: LatentBank,
        indices: Tensor,
        layers: Sequence[str] = (),
        *,
        edits: Mapping[str, LayerEdit] | None = None,
        require_maps: bool = True,
        first: bool = False,
    ) -> Batch:
        """Generate the images of ``source[indices]``, with the batch's own noise seed.

        The batch a pre-flight check kept (``keep=True``) is returned as it is when it is the one
        asked for (same bank, samples and layers, no edits); it is dropped at the first read either way.
        """
        kept, self._kept = self._kept, None
        # within a session the generator is fixed: an unedited batch read before is the same batch
        key = None
        if edits is None and layers and self._sessions:
            key = (id(source), tuple(int(i) for i in indices.tolist()), tuple(layers), require_maps)
            if key in self._batches:
                return _copy(self._batches[key][1])
        batch = None
        if kept is not None and edits is None and require_maps:
            bank, kept_layers, kept_batch = kept
            if bank is source and kept_layers == tuple(layers) and torch.equal(kept_batch.indices, indices.cpu()):
                batch = kept_batch
        if batch is None:
            images, acts = self.forward(
                source[indices], layers, edits=edits, seed=source.noise_seed(int(indices[0])),
                require_maps=require_maps,
            )
            batch = Batch(indices, images, acts, output=images)
        if key is not None:
            size = _nbytes(batch.images) + sum(_nbytes(a) for a in batch.activations.values())
            if self._cached_bytes + size <= self.cache_bytes:
                self._batches[key] = (source, _copy(batch))  # the bank is held: its id stays its own
                self._cached_bytes += size
        return batch

    def label(
        self, source: LatentBank, batch: Batch, segmenter: Segmenter, *, first: bool, refuse_unit_range: bool = False
    ) -> Tensor:
        """The segmenter's labels of the generated images (their range checked on the first batch)."""
        return self.segment(batch.images, segmenter, check_images=first, refuse_unit_range=refuse_unit_range)

    # ------------------------------------------------------------------ pre-flight
    def preflight(
        self,
        sources: LatentBank | Sequence[LatentBank],
        layers: Sequence[str],
        segmenter: Segmenter | None = None,
        *,
        require_maps: bool = True,
        edits: Mapping[str, LayerEdit] | None = None,
        what: str = "dry run",
        describe: Callable[[LatentBank], str] = lambda b: "latents",
        indices: Tensor | None = None,
        keep: bool = False,
    ) -> LatentBank:
        """Run two latents of each bank in turn and return the first bank that works.

        Checks the call, the images, every layer's output (and, with ``edits``, that they can be
        written back) and the segmentation. The global RNG is not moved.

        Args:
            sources: A latent bank, or several to try in turn (latent layouts).
            layers: The layers to capture.
            segmenter: Checked on the images (``None``: no segmentation).
            require_maps: Every layer must give ``(B, U, h, w)`` maps.
            edits: Also check that the layers take these edits.
            what: How the check is named in messages.
            describe: How a bank is named in the list of failed attempts.
            indices: The latents to run (default: the first two), e.g. the first batch of a pass.
            keep: Keep the batch of ``indices`` read from the bank that works for the next
                :meth:`read` of it (the first batch of pass 1 then costs no second forward pass);
                with ``require_maps`` and no ``edits`` only.

        Raises:
            DryRunError: Every attempt failed. The message lists every attempt; when a forward
                pass succeeded, its (layer-shape) problem leads, since changing the latent layout
                will not fix it (so does a layer that ran twice or not at all).
        """
        banks = [sources] if isinstance(sources, LatentBank) else list(sources)
        if not banks:
            raise ValueError("preflight needs at least one latent bank to try")
        attempts: list[tuple[LatentBank, BaseException]] = []
        for bank in banks:
            forward_ok = False
            try:
                with self.session():
                    idx = torch.arange(min(2, len(bank))) if indices is None else indices.cpu()
                    seed = bank.noise_seed(int(idx[0]))
                    images, captured = self.forward(bank[idx], layers, seed=seed, require_maps=False)
                    forward_ok = True
                    if require_maps:
                        _check_maps(captured, self.layout_problems)
                    if edits:
                        self.forward(bank[idx], (), edits=edits, seed=seed)
                    if segmenter is not None:
                        self.segment(images, segmenter, check_images=True, refuse_unit_range=True)
                _warn_margins(self.model, layers, self.selector)
                if keep and require_maps and not edits:
                    # the same call as `read` makes: maps checked above are those it would return
                    self._kept = (bank, tuple(layers), Batch(idx, images, captured, output=images))
                return bank
            except Exception as err:  # noqa: BLE001 - every attempt is reported below
                # a layer that ran twice (or not at all) is found after a successful forward too
                if forward_ok or isinstance(err, (LayerCallError, SegmenterError)):
                    # the generator ran with this latent layout: another layout will not fix what
                    # failed after it (a layer's output, the segmenter), so no other is tried
                    text = str(err) if isinstance(err, SegmenterError) else f"{type(err).__name__}: {err}"
                    raise DryRunError(f"{what} failed: {text}", after_forward=True) from err
                attempts.append((bank, err))
        lead_bank, lead_error = attempts[-1]
        lines = [f"{what} failed: {type(lead_error).__name__}: {lead_error}"]
        if len(attempts) > 1:
            lines.append("attempts:")
            lines += [f"  {describe(b)}: {type(e).__name__}: {e}" for b, e in attempts]
        hint = self._structured_latents_hint(lead_bank)
        if hint:
            lines.append(hint)
        raise DryRunError("\n".join(lines)) from lead_error

    def dry_run(
        self,
        layers: Sequence[str],
        banks: Sequence[LatentBank],
        segmenter: Segmenter | None = None,
        *,
        require_maps: bool = True,
        edits: Mapping[str, LayerEdit] | None = None,
        describe: Callable[[LatentBank], str] = lambda b: "latents",
        what: str = "dry run",
    ) -> LatentBank:
        """Deprecated: :meth:`preflight` with the banks first (``preflight(banks, layers, segmenter)``)."""
        warnings.warn(
            "GeneratorRunner.dry_run(layers, banks, ...) is deprecated and will be removed in the next release; use "
            "preflight(banks, layers, ...)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.preflight(
            banks, layers, segmenter, require_maps=require_maps, edits=edits, describe=describe, what=what
        )

    def _structured_latents_hint(self, bank: LatentBank) -> str:
        """For tuple/dict latents the default call ``generator(latents)`` failed on: the call that works."""
        latents = bank.latents
        if self.generate is not _default_generate or not isinstance(latents, (tuple, list, Mapping)):
            return ""
        spread = "generator(**latents)" if isinstance(latents, Mapping) else "generator(*latents)"
        try:
            with self.session(), _maybe_seeded(bank.noise_seed(0), self.device):
                part = bank[torch.arange(min(2, len(bank)))]
                moved = map_latents(self._move, part)
                out = self.network(**moved) if isinstance(moved, Mapping) else self.network(*moved)
            works = isinstance(out, Tensor)
        except Exception:  # noqa: BLE001 - only a hint: the original error is what is reported
            works = False
        kind = "dict" if isinstance(latents, Mapping) else "tuple"
        if works:
            return (
                f"hint: the latents are a {kind} and the generator takes them as separate arguments; "
                f"pass generate=lambda generator, latents: {spread} (that call works on these latents)"
            )
        return (
            f"hint: the latents are a {kind}, and the default call is generator(latents) with the whole "
            f"{kind} as one argument; pass a generate=lambda generator, latents: ... that calls the generator "
            f"as it expects, e.g. {spread}"
        )

    def choose_latents(
        self,
        layers: Sequence[str],
        segmenter: Segmenter | None,
        shapes: Sequence[tuple[int, ...]],
        *,
        seed: int,
        sampler: LatentSampler | None = None,
        edits: Mapping[str, LayerEdit] | None = None,
        sampler_name: str = "latent_sampler",
    ) -> tuple[int, ...] | None:
        """Choose a latent layout: pre-flight each candidate and return the first that works.

        Args:
            layers: Layers to capture in the pre-flight check.
            segmenter: Checked on the check's images (``None``: no segmentation).
            shapes: Candidate shapes of one latent, tried in order (ignored with ``sampler``).
            seed: Seed of the latent bank.
            sampler: A custom latent sampler: the only candidate (returns ``None``).
            edits: Also check that the layers take these edits.
            sampler_name: How the sampler is named in messages (``"--latent-sampler"`` on the CLI).

        Returns:
            The chosen shape, or ``None`` for the sampler.

        Raises:
            ValueError: No candidate (no sampler and no shape).
            DryRunError: Every candidate failed (each attempt listed).

        Examples:
            >>> runner = GeneratorRunner(nn.Sequential(nn.Linear(4, 12), nn.Unflatten(1, (3, 2, 2)), nn.Tanh()))
            >>> runner.choose_latents(["0"], None, [(4, 1, 1), (4,)], seed=1, )
            (4,)
        """
        candidates: list[tuple[int, ...] | None] = [None] if sampler is not None else [tuple(s) for s in shapes]
        if not candidates:
            raise ValueError("no latent layout to try: give a latent shape, a latent size or a latent sampler")
        banks = [LatentBank(2, shape, seed=seed, sampler=sampler) for shape in candidates]

        def index(bank: LatentBank) -> int:
            return next(i for i, b in enumerate(banks) if b is bank)

        def describe(bank: LatentBank) -> str:
            shape = candidates[index(bank)]
            return sampler_name if shape is None else f"latent shape {shape}"

        chosen = self.preflight(banks, layers, segmenter, describe=describe, edits=edits)
        return candidates[index(chosen)]


# ---------------------------------------------------------------------- helpers
def _warn_margins(model: nn.Module, layers: Sequence[str], selector: Any) -> None:
    """Say so when the generator keeps margins around its maps (StyleGAN3's ``margin_size``).

    Such maps are larger than the region that becomes the image; dissected whole they are stretched
    over the image and the masks are misaligned. A layer with a selector is taken as handled.
    """
    margin = next(
        (m.margin_size for m in model.modules() if isinstance(getattr(m, "margin_size", None), (int, float))),
        None,
    )
    if not margin:
        return
    chosen = {name: selector.get(name) if isinstance(selector, Mapping) else selector for name in layers}
    # a layout says where the units are, not which part of the map becomes the image: no crop
    bare = [name for name, sel in chosen.items() if sel is None or isinstance(sel, LayerLayout)]
    if bare:
        warnings.warn(
            f"the generator keeps a margin around its maps (margin_size={margin}): layers {bare} are dissected "
            "whole, stretched over the image, so their masks are shifted; give them a cropping "
            "Selector(select, replace) that takes the centre that becomes the image (see docs/real-models.md, "
            "'Layers with margins')",
            UserWarning,
            stacklevel=3,
        )


def _check_images_shape(images: Any) -> Tensor:
    if isinstance(images, (tuple, list)):
        images = images[0]
    hint = channels_last_images_hint(images.shape, "the generator's images") if isinstance(images, Tensor) else None
    if hint is not None and images.ndim == 4:
        raise ValueError(f"{hint} (e.g. generate=lambda g, z: g(z).permute(0, 3, 1, 2))")
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(
            f"the generator must return images (B, 3, H, W); got {shape} — pass `generate=` to "
            "say how to call it"
        )
    return images


def _copy(batch: Batch) -> Batch:
    """A new :class:`Batch` of the same tensors (a caller may set its labels or replace its maps)."""
    return Batch(batch.indices, batch.images, dict(batch.activations), output=batch.output)


def _nbytes(value: Any) -> int:
    return value.numel() * value.element_size() if isinstance(value, Tensor) else 0
