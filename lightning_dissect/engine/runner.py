"""What every runner shares: a network, its device, the one hooked call and the batch loop over samples.

Dissection meets two things: a :class:`SampleSource` (samples addressable by index: a latent bank
for a generator, an image set for a network that reads images) and a :class:`ModuleRunner` that
runs a network on them. :class:`~lightning_dissect.engine.generator.GeneratorRunner` and
:class:`~lightning_dissect.engine.reader.ImageRunner` are its two children; they differ only in how
a batch of samples becomes ``(images, activations)`` and how its labels are found. Everything
else is here, once:

* eval mode (every submodule's mode restored) and ``torch.inference_mode()`` (:meth:`ModuleRunner.session`);
* capture and edit hooks on named layers, removed on exit (the one hooked call of every runner);
* checks of layer names, layer outputs and segmentations;
* agreement on failure across ranks (:meth:`ModuleRunner.collective`), so that no rank waits
  forever in a synchronisation another rank skipped;
* the shard of each rank and its batches (:meth:`ModuleRunner.shard`, :meth:`ModuleRunner.split`):
  the same batches whatever the number of ranks, so a result does not depend on it;
* the batch loop of every pass and the re-run of the batches that held the top images.

Like the reference's ``InstrumentedModel`` but per call: a runner holds no hooks between calls.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor, nn

from lightning_dissect._utils.checks import argument_name, check_int
from lightning_dissect._utils.distributed import agree_on_failure, seeded_rng, world
from lightning_dissect.engine.hooks import (
    LayerEdit,
    OutputSelector,
    capture_layers,
    edit_layers,
    resolve_layer,
    unwrap_model,
)
from lightning_dissect.engine.latents import batch_shard
from lightning_dissect.engine.layouts import LayerLayout, LayerShapeError, LayoutReading
from lightning_dissect.segmenters.base import Segmenter, validate_images, validate_segmentation

__all__ = [
    "Batch",
    "DryRunError",
    "LayerCallError",
    "ModuleRunner",
    "SampleSource",
    "SegmenterError",
    "describe_images",
    "eval_mode",
    "module_device",
    "module_dtype",
]


class LayerCallError(ValueError, RuntimeError):
    """A layer did not run exactly once in a forward pass that itself succeeded (not run, or shared)."""


class DryRunError(ValueError, RuntimeError):
    """A generator's pre-flight check (:meth:`GeneratorRunner.preflight`) failed.

    A ``ValueError`` (the inputs do not fit the generator) and a ``RuntimeError``.

    When the generator's forward pass failed for every latent layout tried, the message lists
    each attempt. A problem found after a forward pass succeeded (a layer's output, the segmenter)
    is reported alone, with ``after_forward`` set: another latent layout would not fix it.
    """

    def __init__(self, message: str, *, after_forward: bool = False) -> None:
        super().__init__(message)
        self.after_forward = after_forward


class SegmenterError(RuntimeError):
    """The segmenter raised on a batch of images; the message gives their size and range."""


@runtime_checkable
class SampleSource(Protocol):
    """What the passes of a dissection need from its samples: a fixed, indexable set.

    :class:`~lightning_dissect.engine.latents.LatentBank` (a generator's latents) and
    :class:`~lightning_dissect.engine.images.ImageSet` (a reader's images) are the two sources.
    The passes only count them and hand them to their runner, which reads ``source[indices]``
    in the form it takes.
    """

    def __len__(self) -> int:
        """The number of samples."""

    def __getitem__(self, indices: Tensor) -> Any:
        """The samples at ``indices``, in the form their runner takes (latents; images and labels)."""

    def noise_seed(self, first_index: int) -> int | None:
        """Seed of the network's own noise for the batch that starts at ``first_index`` (``None``: none)."""


SourceT = TypeVar("SourceT", bound=SampleSource)


@dataclass
class Batch:
    """One batch of a pass: which samples, their images, the captured layers and the labels.

    Attributes:
        indices: Indices of the samples in their source (``(B,)``).
        images: The images of the batch ``(B, C, H, W)``: a generator's output, or the images a
            reader read.
        activations: ``layer -> (B, U, h, w)`` captured outputs (empty when none were asked).
        labels: Segmentation of ``images`` (``None`` without a segmenter).
        given_labels: The segmentation that came with the samples (a dataset's ground truth), not
            yet checked; ``None`` when the samples have none.
        output: What the network returned: a generator's images, a reader's logits or scores
            (``None`` where a pass reused maps computed earlier).
    """

    indices: Tensor
    images: Tensor
    activations: dict[str, Tensor] = field(default_factory=dict)
    labels: Tensor | None = None
    given_labels: Tensor | None = None
    output: Any = None


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


class ModuleRunner(LayoutReading, abc.ABC, Generic[SourceT]):
    """Runs a network on the samples of a :class:`SampleSource` with hooks and checks (see the module docs).

    Subclasses say how a batch of samples becomes images and activations (:meth:`read`) and how
    its labels are found (:meth:`label`), and check a run before any long work
    (:meth:`preflight`).

    Args:
        network: The module run (``torch.compile``d and DDP-wrapped modules are looked through for
            hooks; calls go to the module as given).
        selector: Picks the tensor of tuple/dict layer outputs (one for all layers, or a mapping
            ``layer -> selector``); a :class:`~lightning_dissect.engine.layouts.LayerLayout`
            declares where a layer's units are (tokens, channels-last). Undeclared layouts are
            resolved from each layer's first output and kept in :attr:`layouts`.
        batch_size: Samples per call.
        device: Where to run; ``None``: the network's device.
        distributed: ``False`` runs on this process only even inside an initialised process
            group (no collective is called).
    """

    #: What the network is called in messages (``"generator"``, ``"network"``).
    kind: str = "network"

    def __init__(
        self,
        network: nn.Module,
        *,
        selector: OutputSelector | Mapping[str, OutputSelector] = None,
        batch_size: int = 32,
        device: torch.device | str | None = None,
        distributed: bool = True,
    ) -> None:
        if not isinstance(network, nn.Module):
            raise TypeError(f"`{self.kind}` must be a torch.nn.Module, got {type(network).__name__}")
        self.network = network
        self.model = unwrap_model(network)
        self.selector = selector
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.device = _resolve_device(device) if device is not None else module_device(self.model)
        self.dtype = module_dtype(self.model)
        self.distributed = distributed
        #: The resolved layout of every layer seen so far (the same for every call of the runner).
        self.layouts: dict[str, LayerLayout] = {}
        #: Why a layer's layout could not be resolved (reported when maps are required).
        self.layout_problems: dict[str, str] = {}
        self._patch_size: int | None | bool = False
        self._image_size: tuple[int, int] | None = None
        self._sessions = 0

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
    def session(self) -> Iterator[ModuleRunner[SourceT]]:
        """Inference mode and eval mode (every submodule's mode restored) for the block.

        Sessions nest; what a runner keeps for a later pass of the same session (batches, maps)
        is dropped when the outermost one ends (:meth:`_end_session`): the network may change
        between sessions (training).
        """
        self._sessions += 1
        try:
            with torch.inference_mode(), eval_mode(self.model):
                yield self
        finally:
            self._sessions -= 1
            if not self._sessions:
                self._end_session()

    def _end_session(self) -> None:
        """Forget what was kept for the session that ended (runners that keep something override it)."""

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
        """Resolve layer names on the network; raise naming ``argument`` (with suggestions)."""
        if isinstance(layers, str):
            layers = [layers]
        names = list(layers)
        if not names:
            raise ValueError(f"`{argument}` must name at least one layer")
        for name in names:
            resolve_layer(self.model, name, argument=argument)
        return names

    # ------------------------------------------------------------------ one call
    def _hooked(
        self,
        call: Callable[[], Any],
        layers: Sequence[str],
        *,
        edits: Mapping[str, LayerEdit] | None = None,
        seed: int | None = None,
        require_maps: bool = True,
        check_output: Callable[[Any], Any] = lambda output: output,
        image_size: Sequence[int] | None = None,
    ) -> tuple[Any, dict[str, Tensor]]:
        """Run ``call()`` with ``edits`` and capture hooks on ``layers``: the one hooked call of every runner.

        ``seed`` seeds the network's noise (the global RNG is restored afterwards);
        ``check_output`` checks the call's output before the layers are. Captured outputs become
        ``(B, U, h, w)`` maps in their layer's layout (:meth:`layout_of`), resolved on first sight
        with ``image_size`` (default: the size of the images the call returns). An edited layer
        whose layout is not known yet is resolved in its edit hook, with the image size of an
        earlier call; before any call, by one unedited call with the same seed.
        """
        known_size = image_size if image_size is not None else self._image_size
        pending = [name for name in (edits or {}) if name not in self.layouts]
        if pending and known_size is None:
            self._resolve_layouts(call, pending, seed=seed, check_output=check_output, image_size=image_size)
        with _maybe_seeded(seed, self.device):
            with edit_layers(self.model, edits or {}, self.selector, layouts=self.layouts, image_size=known_size):
                with capture_layers(self.model, list(layers), self.selector) as captured:
                    output = call()
        output = check_output(output)
        size = image_size if image_size is not None else _image_size(output)
        if size is not None:
            self._image_size = (int(size[0]), int(size[1]))
        missing = [n for n in layers if n not in captured]
        if missing:
            raise LayerCallError(f"layers {missing} did not run during the {self.kind}'s forward pass")
        repeated = {n: c for n, c in captured.calls.items() if c > 1}
        if repeated:
            raise LayerCallError(
                f"layers {sorted(repeated)} ran {sorted(set(repeated.values()))} times in one forward pass (a module "
                "shared between blocks, e.g. one activation reused): a hook sees only its last call, so its units "
                "are ambiguous; dissect a module that runs once per forward (give each use its own module)"
            )
        activations = {n: self._as_maps(n, captured[n], size, strict=require_maps) for n in layers}
        if require_maps:
            _check_maps(activations, self.layout_problems)
        return output, activations

    def _layer(self, name: str) -> nn.Module:
        return resolve_layer(self.model, name)

    def _resolve_layouts(
        self,
        call: Callable[[], Any],
        layers: Sequence[str],
        *,
        seed: int | None,
        check_output: Callable[[Any], Any],
        image_size: Sequence[int] | None,
    ) -> None:
        """Resolve the layouts of ``layers`` from one unedited, unrecorded call (the caller's RNG untouched)."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices), _maybe_seeded(seed, self.device):
            with capture_layers(self.model, list(layers), self.selector) as captured:
                output = call()
        size = image_size if image_size is not None else _image_size(check_output(output))
        if size is not None:
            self._image_size = (int(size[0]), int(size[1]))
        for name in layers:
            if name in captured:
                self._as_maps(name, captured[name], size, strict=True)

    def _move(self, tensor: Tensor) -> Tensor:
        """Inputs follow the network: its device, and its dtype for floating-point inputs."""
        if tensor.is_floating_point() and self.dtype is not None:
            return tensor.to(device=self.device, dtype=self.dtype)
        return tensor.to(self.device)

    def segment(
        self, images: Tensor, segmenter: Segmenter, *, check_images: bool, refuse_unit_range: bool = False
    ) -> Tensor:
        """Segment ``images``; check their range (when asked) and always the labels' range.

        ``refuse_unit_range``: also refuse ``[0, 1]`` images for a ``[-1, 1]`` segmenter (see
        :func:`_refuse_unit_range`). Set where a run starts (the pre-flight check, the first batch
        of a dissection that did not check the segmenter), never for edited images: an edit may
        legitimately paint a whole image in one bright colour.
        """
        if check_images:
            validate_images(
                images, segmenter.value_range, name=f"{self.kind} output", channels=getattr(segmenter, "channels", 3)
            )
        if refuse_unit_range:
            _refuse_unit_range(images, segmenter)
        given = images.float() if images.dtype in (torch.float16, torch.bfloat16) else images
        try:
            labels = segmenter(given)
        except Exception as err:
            raise SegmenterError(
                f"the segmenter ({type(segmenter).__name__}) failed on the {self.kind}'s images: "
                f"{describe_images(given)}, segmenter value_range {tuple(segmenter.value_range)}: "
                f"{type(err).__name__}: {err}"
            ) from err
        # every batch: a label outside the vocabulary would corrupt the counts (cheap min/max)
        validate_segmentation(labels, segmenter.vocabulary, batch_size=images.shape[0])
        return labels

    # ------------------------------------------------------------------ what a kind of network defines
    @abc.abstractmethod
    def read(
        self,
        source: SourceT,
        indices: Tensor,
        layers: Sequence[str] = (),
        *,
        edits: Mapping[str, LayerEdit] | None = None,
        require_maps: bool = True,
        first: bool = False,
    ) -> Batch:
        """Run the network on ``source[indices]``: the batch's images and activations (no labels yet).

        ``first``: the first batch of a loop (checked more closely).
        """

    @abc.abstractmethod
    def label(
        self, source: SourceT, batch: Batch, segmenter: Segmenter, *, first: bool, refuse_unit_range: bool = False
    ) -> Tensor:
        """The concept labels of ``batch`` (checked)."""

    @abc.abstractmethod
    def preflight(
        self,
        sources: SourceT | Sequence[SourceT],
        layers: Sequence[str],
        segmenter: Segmenter | None = None,
        *,
        require_maps: bool = True,
        edits: Mapping[str, LayerEdit] | None = None,
        what: str = "pre-flight check",
    ) -> SourceT:
        """Run two samples of each source in turn before any long work; return the first that works.

        Checks the call, every layer's output (and, with ``edits``, that they can be written back)
        and the labels, and raises naming the argument at fault.
        """

    # ------------------------------------------------------------------ passes
    def shard(self, source: SourceT) -> Tensor:
        """Indices of ``source`` this rank works on: a contiguous run of whole batches (see :meth:`split`)."""
        rank, size = self.rank_world
        return batch_shard(len(source), rank, size, self.batch_size)

    def split(self, indices: Tensor) -> list[Tensor]:
        """``indices`` in batches of ``batch_size`` (the same split in every pass)."""
        return list(torch.split(indices, self.batch_size))

    def batches(
        self,
        source: SourceT,
        indices: Tensor | None = None,
        *,
        layers: Sequence[str] = (),
        segmenter: Segmenter | None = None,
        edits: Mapping[str, LayerEdit] | None = None,
        require_maps: bool = True,
        on_batch: Callable[[int], None] | None = None,
        refuse_unit_range: bool = False,
    ) -> Iterator[Batch]:
        """Run ``source[indices]`` batch by batch (default: this rank's shard).

        The first batch is checked more closely (the images' range; with ``refuse_unit_range``,
        see :meth:`segment`); labels are checked on every batch. ``on_batch(n)`` is called after
        each batch (progress bars).
        """
        if indices is None:
            indices = self.shard(source)
        for i, idx in enumerate(self.split(indices)):
            batch = self.read(source, idx, layers, edits=edits, require_maps=require_maps, first=i == 0)
            if segmenter is not None:
                batch.labels = self.label(
                    source, batch, segmenter, first=i == 0, refuse_unit_range=refuse_unit_range and i == 0
                )
            yield batch
            if on_batch is not None:
                on_batch(len(idx))

    def labels_at(self, source: SourceT, indices: Tensor, segmenter: Segmenter) -> Tensor:
        """The labels of ``source[indices]``, read again (checked)."""
        return self.label(source, self.read(source, indices), segmenter, first=False)

    def regenerate(
        self, source: SourceT, wanted: Sequence[int], *, layers: Sequence[str] = (), world_size: int = 1
    ) -> Iterator[Batch]:
        """Run the samples ``wanted`` again, in the batches that held them in a pass over ``world_size`` ranks.

        Whole batches are run again with their own noise seed, so a network that draws noise in
        ``forward`` gives exactly what the pass saw.
        """
        for idx in self.batches_holding(len(source), wanted, world_size):
            yield self.read(source, idx, layers)

    def batches_holding(self, num_samples: int, wanted: Sequence[int], world_size: int) -> Iterator[Tensor]:
        """The batches of a pass over ``world_size`` ranks that held any of the samples ``wanted``."""
        wanted_set = {int(i) for i in wanted}
        for rank in range(world_size):
            for idx in self.split(batch_shard(num_samples, rank, world_size, self.batch_size)):
                if wanted_set.intersection(idx.tolist()):
                    yield idx


# ---------------------------------------------------------------------- helpers
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


def _image_size(output: Any) -> tuple[int, int] | None:
    """``(H, W)`` of the images a call returned (``None`` when it returned no images)."""
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    if isinstance(output, Tensor) and output.ndim == 4:
        return int(output.shape[-2]), int(output.shape[-1])
    return None


def _check_maps(
    captured: Mapping[str, Tensor], problems: Mapping[str, str] | None = None, selector: str = "selector"
) -> None:
    """Every captured output is a ``(B, U, h, w)`` map of units; raise :class:`LayerShapeError` otherwise.

    ``problems``: why a layer's layout could not be resolved, reported first. ``selector``: how the
    hint names the selector argument (``"--selector"`` on the command line).
    """
    for name, value in captured.items():
        if value.ndim != 4:
            if problems and name in problems:
                raise LayerShapeError(problems[name])
            raise LayerShapeError(
                f"layer {name!r} output has shape {tuple(value.shape)}; dissection needs (B, U, h, w) feature maps, "
                "(B, H, W, C) channels-last maps, (B, T, D) tokens or (B, U) unit vectors (pass a "
                f"{argument_name(selector)} for "
                "tuple/dict outputs, or a LayerLayout to declare where the units are)"
            )


#: Names this module held in the previous release, and where they live now.
_MOVED = {
    "GeneratorRunner": ("lightning_dissect.engine.generator", "GeneratorRunner"),
    "Generate": ("lightning_dissect.engine.generator", "Generate"),
    "GeneratedBatch": ("lightning_dissect.engine.runner", "Batch"),
    "noise_seed": ("lightning_dissect.engine.latents", "noise_seed"),
    "check_segmenter": ("lightning_dissect.segmenters.base", "check_segmenter"),
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:  # `from lightning_dissect.runner import GeneratorRunner` keeps working for one release
        from lightning_dissect._utils.deprecation import moved_attribute

        module, new = _MOVED[name]
        return moved_attribute(f"{__name__}.{name}", module, new)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
