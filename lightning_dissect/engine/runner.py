"""Running a generator for dissection: one place for every rule about how a generator is called.

:class:`GeneratorRunner` owns the generator, its device, the ``generate`` call, the layer
selectors and the batch size. Everything that runs a generator — :func:`~lightning_dissect.dissect`,
every intervention, unit-strip rendering, the callback and the command line — goes through it, so
each rule below exists once:

* eval mode (every submodule's mode restored) and ``torch.inference_mode()`` (:meth:`session`);
* generator noise seeded per batch of the latent bank (:func:`noise_seed`): a batch of the same
  latents gets the same noise in every pass, and the caller's global RNG never moves;
* capture and edit hooks on named layers, removed on exit;
* checks of images, layer outputs and segmentations;
* agreement on failure across ranks (:meth:`collective`), so that no rank waits forever in a
  synchronisation another rank skipped;
* the single dry run that checks all of it on two latents before any long work (:meth:`dry_run`).

Like the reference's ``InstrumentedModel`` but per call: a runner holds no hooks between calls.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from lightning_dissect._utils.checks import check_int
from lightning_dissect._utils.distributed import agree_on_failure, seeded_rng, world
from lightning_dissect.engine.hooks import (
    LayerEdit,
    OutputSelector,
    capture_layers,
    edit_layers,
    resolve_layer,
    unwrap_model,
)
from lightning_dissect.engine.latents import LatentBank, LatentSampler, map_latents, shard_indices
from lightning_dissect.segmenters.base import Segmenter, check_segmenter, validate_images, validate_segmentation

__all__ = [
    "Generate",
    "GeneratorRunner",
    "GeneratedBatch",
    "LayerShapeError",
    "LayerCallError",
    "DryRunError",
    "SegmenterError",
    "eval_mode",
    "module_device",
    "module_dtype",
    "noise_seed",
    "check_segmenter",
]

Generate = Callable[[nn.Module, Any], Tensor]
"""``(generator, latents) -> images``; the default calls ``generator(latents)``."""


class LayerShapeError(ValueError):
    """A layer's output is not a ``(B, U, h, w)`` map of units (raised after a successful forward)."""


class LayerCallError(ValueError, RuntimeError):
    """A layer did not run exactly once in a forward pass that itself succeeded (not run, or shared)."""


class DryRunError(ValueError, RuntimeError):
    """The dry run failed.

    A ``ValueError`` (the inputs do not fit the generator) and, as before, a ``RuntimeError``, so
    code that caught either keeps working.

    When the generator's forward pass failed for every latent layout tried, the message lists
    each attempt. A problem found after a forward pass succeeded (a layer's output, the segmenter)
    is reported alone, with ``after_forward`` set: another latent layout would not fix it.
    """

    def __init__(self, message: str, *, after_forward: bool = False) -> None:
        super().__init__(message)
        self.after_forward = after_forward


class SegmenterError(RuntimeError):
    """The segmenter raised on the generator's images; the message gives their size and range."""


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode, restoring every submodule's previous mode on exit.

    Examples:
        >>> net = nn.Sequential(nn.Dropout(), nn.Linear(2, 2)).train()
        >>> with eval_mode(net):
        ...     net.training
        False
        >>> net.training
        True
    """
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes.items():
            m.training = mode


def module_device(module: nn.Module) -> torch.device:
    """Device of the first parameter or buffer of ``module`` (CPU when it has none).

    Examples:
        >>> module_device(nn.Linear(2, 2))
        device(type='cpu')
    """
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


def module_dtype(module: nn.Module) -> torch.dtype | None:
    """Floating-point dtype of the first floating parameter or buffer (``None`` when it has none).

    Examples:
        >>> module_dtype(nn.Linear(2, 2).to(torch.bfloat16))
        torch.bfloat16
    """
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def noise_seed(bank_seed: int, first_index: int) -> int:
    """Seed of the generator noise of the batch of a bank whose first latent is ``first_index``.

    Every pass splits a rank's shard into the same batches, so the same latents always get the
    same noise (and the strips show exactly the images that were ranked).

    Examples:
        >>> noise_seed(1, 0), noise_seed(1, 32)
        (1000003, 1000035)
    """
    return int(bank_seed) * 1_000_003 + int(first_index)


def _default_generate(generator: nn.Module, latents: Any) -> Tensor:
    return generator(latents)


@dataclass
class GeneratedBatch:
    """One batch of a pass: which latents, their images, captured layers and segmentation.

    Attributes:
        indices: Indices of the latents in their bank (``(B,)``).
        images: Generator output ``(B, C, H, W)``.
        activations: ``layer -> (B, U, h, w)`` captured outputs (empty when none were asked).
        labels: Segmentation of ``images`` (``None`` without a segmenter).
    """

    indices: Tensor
    images: Tensor
    activations: dict[str, Tensor] = field(default_factory=dict)
    labels: Tensor | None = None


class GeneratorRunner:
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
        if not isinstance(generator, nn.Module):
            raise TypeError(f"`generator` must be a torch.nn.Module, got {type(generator).__name__}")
        batch_size = check_int(batch_size, "batch_size", minimum=1)
        if generate is not None and not callable(generate):
            raise TypeError(f"`generate` must be a callable (generator, latents) -> images, got {generate!r}")
        self.generator = generator
        self.model = unwrap_model(generator)
        self.generate = generate or _default_generate
        self.selector = selector
        self.batch_size = batch_size
        self.device = _resolve_device(device) if device is not None else module_device(self.model)
        self.dtype = module_dtype(self.model)
        self.distributed = distributed

    # ------------------------------------------------------------------ context
    @property
    def rank_world(self) -> tuple[int, int]:
        """``(rank, world_size)`` this runner works in (``(0, 1)`` when not distributed)."""
        return world(self.distributed)

    @property
    def metric_options(self) -> dict[str, Any]:
        """Keyword arguments for the metrics of a pass: no synchronisation when not distributed."""
        return {} if self.distributed else {"distributed_available_fn": _never}

    @contextmanager
    def session(self) -> Iterator[GeneratorRunner]:
        """Inference mode and eval mode (every submodule's mode restored) for the block."""
        with torch.inference_mode(), eval_mode(self.model):
            yield self

    @contextmanager
    def collective(self, what: str) -> Iterator[None]:
        """Run a local loop; at its end every rank learns whether any rank failed and all raise.

        Wrap every loop that is followed by a synchronisation (metric ``compute()``, gathers).
        """
        error: BaseException | None = None
        try:
            yield
        except Exception as err:  # noqa: BLE001 - re-raised below on every rank together
            error = err
        agree_on_failure(error, self.device, what, distributed=self.distributed)

    def check_layers(self, layers: Sequence[str] | str, argument: str = "layers") -> list[str]:
        """Resolve layer names on the generator; raise naming ``argument`` (with suggestions)."""
        if isinstance(layers, str):
            layers = [layers]
        names = list(layers)
        if not names:
            raise ValueError(f"`{argument}` must name at least one layer")
        for name in names:
            resolve_layer(self.model, name, argument=argument)
        return names

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
            lambda: self.generate(self.generator, z), layers, edits=edits, seed=seed, require_maps=require_maps,
            check_output=_check_images_shape,
        )
        return images, activations

    def _hooked(
        self,
        call: Callable[[], Any],
        layers: Sequence[str],
        *,
        edits: Mapping[str, LayerEdit] | None,
        seed: int | None,
        require_maps: bool,
        check_output: Callable[[Any], Any] = lambda output: output,
        network: str = "generator",
    ) -> tuple[Any, dict[str, Tensor]]:
        """Run ``call()`` with ``edits`` and capture hooks on ``layers``: the one hooked call of every runner.

        ``check_output`` checks the call's output before the layers are; ``network`` names the
        module in error messages.
        """
        with _maybe_seeded(seed, self.device):
            with edit_layers(self.model, edits or {}, self.selector):
                with capture_layers(self.model, list(layers), self.selector) as captured:
                    output = call()
        output = check_output(output)
        missing = [n for n in layers if n not in captured]
        if missing:
            raise LayerCallError(f"layers {missing} did not run during the {network}'s forward pass")
        repeated = {n: c for n, c in captured.calls.items() if c > 1}
        if repeated:
            raise LayerCallError(
                f"layers {sorted(repeated)} ran {sorted(set(repeated.values()))} times in one forward pass (a module "
                "shared between blocks, e.g. one activation reused): a hook sees only its last call, so its units "
                "are ambiguous; dissect a module that runs once per forward (give each use its own module)"
            )
        activations = {n: _as_units(captured[n]) for n in layers}
        if require_maps:
            _check_maps(activations)
        return output, activations

    def _move(self, tensor: Tensor) -> Tensor:
        """Latents follow the generator: its device, and its dtype for floating-point latents."""
        if tensor.is_floating_point() and self.dtype is not None:
            return tensor.to(device=self.device, dtype=self.dtype)
        return tensor.to(self.device)

    @staticmethod
    def segment(
        images: Tensor, segmenter: Segmenter, *, check_images: bool, refuse_unit_range: bool = False
    ) -> Tensor:
        """Segment ``images``; check their range (when asked) and always the labels' range.

        ``refuse_unit_range``: also refuse ``[0, 1]`` images for a ``[-1, 1]`` segmenter (see
        :func:`_refuse_unit_range`). Set where a run starts (the dry run, the first batch of a
        dissection that did not dry-run the segmenter), never for edited images: an edit may
        legitimately paint a whole image in one bright colour.
        """
        if check_images:
            validate_images(
                images, segmenter.value_range, name="generator output", channels=getattr(segmenter, "channels", 3)
            )
        if refuse_unit_range:
            _refuse_unit_range(images, segmenter)
        given = images.float() if images.dtype in (torch.float16, torch.bfloat16) else images
        try:
            labels = segmenter(given)
        except Exception as err:
            raise SegmenterError(
                f"the segmenter ({type(segmenter).__name__}) failed on the generator's images: "
                f"{describe_images(given)}, segmenter value_range {tuple(segmenter.value_range)}: "
                f"{type(err).__name__}: {err}"
            ) from err
        # every batch: a label outside the vocabulary would corrupt the counts (cheap min/max)
        validate_segmentation(labels, segmenter.vocabulary, batch_size=images.shape[0])
        return labels

    # ------------------------------------------------------------------ passes
    def shard(self, bank: LatentBank) -> Tensor:
        """Indices of ``bank`` this rank works on (a contiguous share)."""
        rank, size = self.rank_world
        return shard_indices(len(bank), rank, size)

    def split(self, indices: Tensor) -> list[Tensor]:
        """``indices`` in batches of ``batch_size`` (the same split in every pass)."""
        return list(torch.split(indices, self.batch_size))

    def batches(
        self,
        bank: LatentBank,
        indices: Tensor | None = None,
        *,
        layers: Sequence[str] = (),
        segmenter: Segmenter | None = None,
        edits: Mapping[str, LayerEdit] | None = None,
        require_maps: bool = True,
        on_batch: Callable[[int], None] | None = None,
        refuse_unit_range: bool = False,
    ) -> Iterator[GeneratedBatch]:
        """Generate ``bank[indices]`` batch by batch (default: this rank's shard).

        Noise is seeded by :func:`noise_seed` of each batch's first index, so iterating the same
        indices again gives the same images. Images are range-checked on the first batch (with
        ``refuse_unit_range``, see :meth:`segment`), labels on every batch. ``on_batch(n)`` is
        called after each batch (progress bars).
        """
        if indices is None:
            indices = self.shard(bank)
        for i, idx in enumerate(self.split(indices)):
            images, acts = self.forward(
                bank[idx],
                layers,
                edits=edits,
                seed=noise_seed(bank.seed, int(idx[0])),
                require_maps=require_maps,
            )
            labels = None if segmenter is None else self.segment(
                images, segmenter, check_images=i == 0, refuse_unit_range=refuse_unit_range and i == 0
            )
            yield GeneratedBatch(idx, images, acts, labels)
            if on_batch is not None:
                on_batch(len(idx))

    def regenerate(
        self,
        bank: LatentBank,
        wanted: Sequence[int],
        *,
        layers: Sequence[str] = (),
        world_size: int = 1,
    ) -> Iterator[GeneratedBatch]:
        """Regenerate the batches that held ``wanted`` latents in a pass over ``world_size`` ranks.

        Whole batches are regenerated with their own noise seed, so a generator that draws noise
        in ``forward`` gives exactly the images the pass saw.
        """
        wanted_set = {int(i) for i in wanted}
        for rank in range(world_size):
            for idx in self.split(shard_indices(len(bank), rank, world_size)):
                if wanted_set.intersection(idx.tolist()):
                    images, acts = self.forward(
                        bank[idx], layers, seed=noise_seed(bank.seed, int(idx[0]))
                    )
                    yield GeneratedBatch(idx, images, acts)

    # ------------------------------------------------------------------ dry run
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
        """Run two latents of each bank in turn and return the first bank that works.

        Checks the call, the images, every layer's output (and, with ``edits``, that they can be
        written back) and the segmentation. The global RNG is not moved.

        Raises:
            DryRunError: Every attempt failed. The message lists every attempt; when a forward
                pass succeeded, its (layer-shape) problem leads, since changing the latent layout
                will not fix it (so does a layer that ran twice or not at all).
        """
        if not banks:
            raise ValueError("dry_run needs at least one latent bank to try")
        attempts: list[tuple[LatentBank, BaseException, bool]] = []
        for bank in banks:
            forward_ok = False
            try:
                with self.session():
                    idx = torch.arange(min(2, len(bank)))
                    seed = noise_seed(bank.seed, 0)
                    images, captured = self.forward(bank[idx], layers, seed=seed, require_maps=False)
                    forward_ok = True
                    if require_maps:
                        _check_maps(captured)
                    if edits:
                        self.forward(bank[idx], (), edits=edits, seed=noise_seed(bank.seed, 0))
                    if segmenter is not None:
                        self.segment(images, segmenter, check_images=True, refuse_unit_range=True)
                _warn_margins(self.model, layers, self.selector)
                return bank
            except Exception as err:  # noqa: BLE001 - every attempt is reported below
                # a layer that ran twice (or not at all) is found after a successful forward too
                if forward_ok or isinstance(err, (LayerCallError, SegmenterError)):
                    # the generator ran with this latent layout: another layout will not fix what
                    # failed after it (a layer's output, the segmenter), so no other is tried
                    text = str(err) if isinstance(err, SegmenterError) else f"{type(err).__name__}: {err}"
                    raise DryRunError(f"{what} failed: {text}", after_forward=True) from err
                attempts.append((bank, err, False))
        lead = attempts[-1]
        lines = [f"{what} failed: {type(lead[1]).__name__}: {lead[1]}"]
        if len(attempts) > 1:
            lines.append("attempts:")
            lines += [f"  {describe(b)}: {type(e).__name__}: {e}" for b, e, _ in attempts]
        if not lead[2]:
            hint = self._structured_latents_hint(lead[0])
            if hint:
                lines.append(hint)
        raise DryRunError("\n".join(lines)) from lead[1]

    def _structured_latents_hint(self, bank: LatentBank) -> str:
        """For tuple/dict latents the default call ``generator(latents)`` failed on: the call that works."""
        latents = bank.latents
        if self.generate is not _default_generate or not isinstance(latents, (tuple, list, Mapping)):
            return ""
        spread = "generator(**latents)" if isinstance(latents, Mapping) else "generator(*latents)"
        try:
            with self.session(), _maybe_seeded(noise_seed(bank.seed, 0), self.device):
                part = bank[torch.arange(min(2, len(bank)))]
                moved = map_latents(self._move, part)
                out = self.generator(**moved) if isinstance(moved, Mapping) else self.generator(*moved)
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
        """The one way a latent layout is chosen: dry-run each candidate and return the first that works.

        Args:
            layers: Layers to capture in the dry run.
            segmenter: Checked on the dry run's images (``None``: no segmentation).
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

        chosen = self.dry_run(layers, banks, segmenter, describe=describe, edits=edits)
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
    bare = [name for name in layers if (selector.get(name) if isinstance(selector, Mapping) else selector) is None]
    if bare:
        import warnings

        warnings.warn(
            f"the generator keeps a margin around its maps (margin_size={margin}): layers {bare} are dissected "
            "whole, stretched over the image, so their masks are shifted; give them a cropping "
            "Selector(select, replace) that takes the centre that becomes the image (see docs/real-models.md, "
            "'Layers with margins')",
            UserWarning,
            stacklevel=3,
        )


def describe_images(images: Tensor) -> str:
    """Shape, dtype and value range of a batch of images, for error messages.

    Examples:
        >>> describe_images(torch.tensor([[[[-0.5, 1.0]]]]))
        'images of shape (1, 1, 1, 2) = (N, C, H, W), size 1x2 pixels, float32, values in [-0.5, 1]'
    """
    text = f"images of shape {tuple(images.shape)}"
    if images.ndim == 4:
        text += f" = (N, C, H, W), size {images.shape[-2]}x{images.shape[-1]} pixels"
    text += f", {str(images.dtype).replace('torch.', '')}"
    if images.numel() and (images.is_floating_point() or not images.is_complex()):
        low, high = images.min().item(), images.max().item()
        text += f", values in [{low:.3g}, {high:.3g}]"
    return text


def _never() -> bool:
    return False


def _resolve_device(device: torch.device | str) -> torch.device:
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"`device`: {err}") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device`={str(device)!r}: CUDA is not available on this machine")
    return resolved


@contextmanager
def _maybe_seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    if seed is None:
        yield
    else:
        with seeded_rng(seed, device):
            yield


def _refuse_unit_range(images: Tensor, segmenter: Segmenter) -> None:
    """Refuse ``[0, 1]`` images for a ``[-1, 1]`` segmenter: in range, but almost surely wrong.

    "``[0, 1]`` images" means every value in ``[0, 1]`` and a mean of at least 0.25: a freshly
    initialised ``[-1, 1]`` generator (values near 0, e.g. ``tanh`` of a small positive bias) is
    not refused. A generator whose images really lie in ``[-1, 1]`` and happened to be
    non-negative on these latents (a bright scene) says so with ``adapt_input(segmenter,
    value_range=(-1, 1))``: a segmenter wrapped by ``adapt_input`` has its input range declared
    and is trusted.
    """
    from lightning_dissect.segmenters.combine import AdaptedSegmenter

    if isinstance(segmenter, AdaptedSegmenter):
        return
    low, high = (float(v) for v in segmenter.value_range)
    if low >= 0.0 or images.numel() <= 64:
        return
    values = images.detach().float()
    if float(values.min()) >= 0.0 and float(values.max()) <= 1.0 and float(values.mean()) >= 0.25:
        raise ValueError(
            f"the generator's images lie in [0, 1] but the segmenter expects [{low:g}, {high:g}]: if the generator "
            "outputs [0, 1], pass `generate=lambda g, z: g(z) * 2 - 1` or wrap the segmenter as "
            "adapt_input(segmenter, value_range=(0, 1)) (lightning_dissect.segmenters); if the images really "
            f"are in [{low:g}, {high:g}] and were only non-negative here, declare it with "
            f"adapt_input(segmenter, value_range=({low:g}, {high:g}))"
        )


def _as_units(value: Tensor) -> Tensor:
    """``(B, U)`` outputs (Linear layers) are ``(B, U, 1, 1)`` maps: each unit on or off for the whole image."""
    return value[:, :, None, None] if value.ndim == 2 else value


def _check_maps(captured: Mapping[str, Tensor]) -> None:
    for name, value in captured.items():
        if value.ndim != 4:
            raise LayerShapeError(
                f"layer {name!r} output has shape {tuple(value.shape)}; dissection needs (B, U, h, w) feature maps "
                "or (B, U) unit vectors (pass a `selector` for tuple/dict outputs)"
            )


def _check_images_shape(images: Any) -> Tensor:
    if isinstance(images, (tuple, list)):
        images = images[0]
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(
            f"the generator must return images (B, 3, H, W); got {shape} — pass `generate=` to "
            "say how to call it"
        )
    return images
