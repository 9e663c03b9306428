"""Running a network that reads images: images in, the network's activations out.

:class:`ImageRunner` is the :class:`~lightning_dissect.engine.runner.ModuleRunner` of Network
Dissection: its source is an :class:`~lightning_dissect.engine.images.ImageSet` and the images of a
batch are the set's own, fed to the reading network (a classifier, an encoder, a GAN's
discriminator) after its ``transform``. The passes, the metrics, the synchronisation and the report
are those of a generator.

Shards are contiguous index ranges of the dataset (never a ``DistributedSampler``, whose padding
repeats images): under DDP every image is counted exactly once.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_dissect._utils.checks import ImageRangeError, argument_name
from lightning_dissect.engine.hooks import LayerEdit, OutputSelector
from lightning_dissect.engine.images import GroundTruth, ImageSet, Labeller, Transform
from lightning_dissect.engine.runner import Batch, LayerCallError, ModuleRunner, _check_maps
from lightning_dissect.segmenters.base import map_range, validate_images, validate_segmentation

__all__ = ["IMAGE_CACHE_BYTES", "ImageRunner"]

#: An :class:`ImageRunner` keeps the batches it read, for the next pass, up to this many bytes
#: (and, within one session, the maps the network gave for them, under the same budget).
IMAGE_CACHE_BYTES = 64 << 20


class ImageRunner(ModuleRunner[ImageSet]):
    """Feeds the images of an :class:`~lightning_dissect.engine.images.ImageSet` to a reading network.

    The sibling of :class:`~lightning_dissect.engine.generator.GeneratorRunner` for Network
    Dissection: its source is an image set instead of a latent bank, and the images of a batch are
    the set's own, not the network's output. The passes of a dissection call both the same way.

    Args:
        network: The network that reads images (``torch.compile``d and DDP-wrapped modules are
            looked through for hooks; calls go to the module as given).
        transform: The network's own preprocessing, applied to the images before the network
            (e.g. ImageNet normalisation); the segmenter and the unit strips see the raw images.
        selector: Picks the tensor of tuple/dict layer outputs.
        batch_size: Images per network call.
        device: Where to run; ``None``: the network's device.
        distributed: ``False`` runs on this process only even inside an initialised process group.

    Examples:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> runner = ImageRunner(net, batch_size=3)
        >>> with runner.session():
        ...     shapes = [tuple(b.activations["1"].shape) for b in runner.batches(ImageSet(torch.rand(5, 3, 8, 8)),
        ...                                                                    layers=["1"])]
        >>> shapes
        [(3, 4, 8, 8), (2, 4, 8, 8)]
    """

    kind = "network"

    def __init__(
        self,
        network: nn.Module,
        *,
        transform: Transform | None = None,
        selector: OutputSelector | Mapping[str, OutputSelector] = None,
        batch_size: int = 32,
        device: torch.device | str | None = None,
        distributed: bool = True,
    ) -> None:
        if transform is not None and not callable(transform):
            raise TypeError(f"`transform` must be a callable images -> network input, got {transform!r}")
        super().__init__(network, selector=selector, batch_size=batch_size, device=device, distributed=distributed)
        self.transform = transform
        #: Bytes of read batches kept for a second pass (see :meth:`load`); 0 reads every time.
        self.cache_bytes = IMAGE_CACHE_BYTES
        self._cache: dict[tuple[int, tuple[int, ...]], tuple[Tensor, Tensor | None]] = {}
        self._cached_bytes = 0
        #: Captured maps of unedited batches, kept for the next pass of the same session.
        self._maps: dict[tuple[Any, ...], dict[str, Tensor]] = {}
        self._maps_bytes = 0

    def _end_session(self) -> None:
        """The maps are never reused across sessions (the network may change); the images are."""
        self._maps.clear()
        self._cached_bytes -= self._maps_bytes
        self._maps_bytes = 0

    def forward(
        self,
        images: Tensor,
        layers: Sequence[str] = (),
        *,
        edits: Mapping[str, LayerEdit] | None = None,
        seed: int | None = None,
        require_maps: bool = True,
    ) -> tuple[Any, dict[str, Tensor]]:
        """Run the network on ``images`` (after ``transform``), capturing ``layers``, applying ``edits``.

        Returns:
            ``(network output, activations)``.
        """
        x = self._move(images)
        if self.transform is not None:
            x = self.transform(x)
        network = self.network
        return self._hooked(
            lambda: network(x), layers, edits=edits, seed=seed, require_maps=require_maps,
            image_size=tuple(x.shape[-2:]) if isinstance(x, Tensor) and x.ndim == 4 else None,
        )

    def load(self, source: ImageSet, indices: Tensor, *, keep: bool = True) -> tuple[Tensor, Tensor | None]:
        """Images (float, on the runner's device) and dataset segmentations at ``indices``.

        Batches read once are kept (on the CPU, the images as read, the segmentations in the
        smallest integer dtype that holds them) while they fit in ``cache_bytes`` together, so the
        second pass of a dissection does not decode or render them again; beyond the budget they
        are read again, and memory stays bounded whatever the number of images. ``keep=False``
        reads without keeping (a check on a few images that no pass reads in the same batch).
        """
        key = (id(source), tuple(int(i) for i in indices.tolist()))
        cached = self._cache.get(key)
        if cached is None:
            cached = source[indices]
            if cached[1] is not None:  # labels kept in the smallest integer dtype that holds them exactly
                cached = (cached[0], _compact_labels(cached[1]))
            size = sum(t.numel() * t.element_size() for t in cached if t is not None)
            if keep and self._cached_bytes + size <= self.cache_bytes:
                self._cache[key] = cached
                self._cached_bytes += size
        images, segmentation = cached
        if not images.is_floating_point():
            raise TypeError(
                f"{source.argument} yields images of dtype {images.dtype}; images must be floating point in "
                f"{list(source.value_range)} (e.g. torchvision's ToTensor() gives float images in [0, 1])"
            )
        images = images.to(self.device)
        if segmentation is not None:
            segmentation = segmentation.to(self.device, torch.int64)
        return images, segmentation

    def labels(
        self, source: ImageSet, images: Tensor, segmentation: Tensor | None, segmenter: Labeller, *, first: bool
    ) -> Tensor:
        """The concept labels of a batch: the dataset's segmentation, or the segmenter's (checked)."""
        if segmentation is not None:
            count = segmenter.vocabulary.num_concepts
            where = getattr(segmenter, "source", None) or f"the `vocabulary` given with {source.argument}"
            validate_segmentation(
                segmentation, segmenter.vocabulary, batch_size=images.shape[0], name=f"{source.argument} segmentation",
                range_hint=(
                    f"the ground-truth segmentations hold labels that {where} does not name "
                    f"({count} concepts, labels 0..{count - 1})"
                ),
            )
            return segmentation
        if isinstance(segmenter, GroundTruth):
            raise ValueError(f"{source.argument} has no segmentations: pass a `segmenter` to label its images")
        if first:  # the range was checked on loading: the channel count for the segmenter here
            validate_images(
                map_range(images, source.value_range, segmenter.value_range), segmenter.value_range, name=source.name,
                channels=getattr(segmenter, "channels", 3),
            )
        return self.segment(map_range(images, source.value_range, segmenter.value_range), segmenter, check_images=False)

    # ------------------------------------------------------------------ the passes' batches
    def read(
        self,
        source: ImageSet,
        indices: Tensor,
        layers: Sequence[str] = (),
        *,
        edits: Mapping[str, LayerEdit] | None = None,
        require_maps: bool = True,
        first: bool = False,
    ) -> Batch:
        """Read ``source[indices]`` and run the network on it (the images' range checked on the first batch)."""
        images, segmentation = self.load(source, indices)
        if first:
            _check_range(images, source)
        output, acts = self._maps_of(source, indices, images, layers, edits, require_maps)
        return Batch(indices, images, acts, given_labels=segmentation, output=output)

    def label(
        self, source: ImageSet, batch: Batch, segmenter: Labeller, *, first: bool, refuse_unit_range: bool = False
    ) -> Tensor:
        """The dataset's segmentation of the batch, or the segmenter's labels.

        ``refuse_unit_range`` does not apply: an image set declares its range, and images are
        mapped to the segmenter's range.
        """
        return self.labels(source, batch.images, batch.given_labels, segmenter, first=first)

    def labels_at(self, source: ImageSet, indices: Tensor, segmenter: Labeller) -> Tensor:
        """The labels of ``source[indices]``, read again without running the network."""
        images, given = self.load(source, indices)
        return self.labels(source, images, given, segmenter, first=False)

    def batches_holding(self, num_samples: int, wanted: Sequence[int], world_size: int) -> Iterator[Tensor]:
        """The ``wanted`` images alone, in batches: images carry no noise to replay."""
        yield from self.split(torch.tensor(sorted({int(i) for i in wanted}), dtype=torch.long))

    def _maps_of(
        self,
        source: ImageSet,
        idx: Tensor,
        images: Tensor,
        layers: Sequence[str],
        edits: Mapping[str, LayerEdit] | None,
        require_maps: bool,
    ) -> tuple[Any, dict[str, Tensor]]:
        """The output and maps of a batch: maps kept from an earlier pass of the same `session()`, or computed.

        Within a session the network is fixed and in eval mode, so a second pass over the same
        images (the counting pass of a dissection) reuses the maps of the first while they fit in
        ``cache_bytes`` together with the cached images: the same tensors, without a second forward.
        Edited calls are never kept; the output of kept maps is ``None``.
        """
        if edits or not layers or not self._sessions:
            return self.forward(images, layers, edits=edits, require_maps=require_maps)
        key = (id(source), tuple(int(i) for i in idx.tolist()), tuple(layers), require_maps)
        acts = self._maps.get(key)
        output = None
        if acts is None:
            output, acts = self.forward(images, layers, require_maps=require_maps)
            size = sum(a.numel() * a.element_size() for a in acts.values())
            if self._cached_bytes + size <= self.cache_bytes:
                self._maps[key] = acts
                self._cached_bytes += size
                self._maps_bytes += size
        return output, acts

    # ------------------------------------------------------------------ pre-flight
    def preflight(
        self,
        sources: ImageSet | Sequence[ImageSet],
        layers: Sequence[str],
        segmenter: Labeller | None = None,
        *,
        require_maps: bool = True,
        edits: Mapping[str, LayerEdit] | None = None,
        what: str = "pre-flight check",
        names: Mapping[str, str] | None = None,
    ) -> ImageSet:
        """Read the first two images, run the network and the labels on them; raise naming the argument.

        The one check before any long work: the items, the image dtype and range, the network
        call, every layer (it runs once and gives unit maps), the edits and the labels.

        Args:
            sources: The image set (or several; the first is checked and returned).
            layers: The layers to capture.
            segmenter: Labels the images (``None``: the labels are not checked).
            require_maps: Every layer must give ``(B, U, h, w)`` maps.
            edits: Also check that the layers take these edits.
            what: How the check is named in messages (unused: every problem names its argument).
            names: How the arguments ``"layers"``, ``"network"``, ``"transform"`` and ``"selector"`` are named in
                messages (default: the argument quoted as code; ``"--layers"`` on the command line).

        Raises:
            ValueError: A problem, naming its argument.
            TypeError: The items are not images.
        """
        source = sources if isinstance(sources, ImageSet) else list(sources)[0]
        name = {key: argument_name(dict(names or {}).get(key, key)) for key in ("layers", "network", "transform")}
        after = f", after {name['transform']}" if self.transform is not None else ""
        idx = torch.arange(min(2, len(source)))
        with self.session():
            images, segmentation = self.load(source, idx, keep=False)
            _check_range(images, source)
            try:
                _, captured = self.forward(images, layers, require_maps=False)
            except LayerCallError as err:
                raise ValueError(f"{name['layers']}: {err}") from err
            except Exception as err:  # noqa: BLE001 - reported with the input that failed
                raise ValueError(
                    f"{name['network']} failed on the first images of {source.argument} (shape "
                    f"{tuple(images.shape)}, dtype {images.dtype}, values in [{float(images.min()):.3g}, "
                    f"{float(images.max()):.3g}]{after}): "
                    f"{type(err).__name__}: {err}"
                ) from err
            if require_maps:
                try:
                    _check_maps(captured, self.layout_problems, dict(names or {}).get("selector", "selector"))
                except ValueError as err:
                    raise ValueError(f"{name['layers']}: {err}") from err
            if edits:
                self.forward(images, (), edits=edits)
            if segmenter is not None:
                self.labels(source, images, segmentation, segmenter, first=True)
        return source

    def check(self, source: ImageSet, layers: Sequence[str], segmenter: Labeller) -> None:
        """Deprecated: :meth:`preflight` (``preflight(source, layers, segmenter)``)."""
        warnings.warn(
            "ImageRunner.check() is deprecated and will be removed in the next release; use preflight()",
            DeprecationWarning,
            stacklevel=2,
        )
        self.preflight(source, layers, segmenter)


def _compact_labels(labels: Tensor) -> Tensor:
    """Integer ``labels`` in the smallest of uint8, int16, int32 that holds every value (as given otherwise).

    Examples:
        >>> _compact_labels(torch.tensor([0, 255])).dtype, _compact_labels(torch.tensor([-1, 1200])).dtype
        (torch.uint8, torch.int16)
    """
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool or not labels.numel():
        return labels
    low, high = int(labels.min()), int(labels.max())
    for dtype in (torch.uint8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= low and high <= info.max and info.bits < torch.iinfo(labels.dtype).bits:
            return labels.to(dtype)
    return labels


def _check_range(images: Tensor, source: ImageSet) -> None:
    """Images of ``source`` are finite and inside its declared ``value_range`` (with the usual tolerance)."""
    try:
        validate_images(images, source.value_range, name=source.name, channels=images.shape[1])
    except ImageRangeError:
        low, high = float(images.min()), float(images.max())
        raise ValueError(
            f"{source.argument} has values in [{low:.4g}, {high:.4g}] outside the declared `value_range`="
            f"{tuple(source.value_range)}: declare the images' own range (e.g. value_range=(-1, 1), or (0, 255) for "
            "unscaled pixels)"
        ) from None
