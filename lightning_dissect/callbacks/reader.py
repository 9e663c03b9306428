"""``ImageDissectionCallback``: Network Dissection of an image-reading network during training.

The sibling of :class:`~lightning_dissect.callbacks.generator.DissectionCallback` for networks that *read*
images — a GAN's discriminator, a classifier, an encoder. It shares the parent's scheduling, error
handling, round history, checkpoint state and round logging (under its own tag prefix); only the
dissection of a round differs: :func:`~lightning_dissect.dissection.dissect_images` over real images
instead of :func:`~lightning_dissect.dissection.dissect` over a latent bank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_dissect._utils.checks import check_int
from lightning_dissect.callbacks.generator import DissectionCallback
from lightning_dissect.dissection import dissect_images
from lightning_dissect.engine.hooks import OutputSelector, unwrap_model
from lightning_dissect.engine.images import (
    GroundTruth,
    ImageSet,
    Labeller,
    Transform,
    check_label_source,
    resolve_images,
)
from lightning_dissect.engine.reader import ImageRunner
from lightning_dissect.engine.runner import DryRunError
from lightning_dissect.result import DissectionResult
from lightning_dissect.segmenters.base import Segmenter
from lightning_dissect.vocabulary import ConceptVocabulary

__all__ = ["ImageDissectionCallback", "ImageSource"]

ImageSource = Callable[[pl.Trainer, pl.LightningModule], Any]
"""``(trainer, pl_module) -> images`` called at every round (e.g. images the generator makes now)."""


class ImageDissectionCallback(DissectionCallback):
    r"""Dissect layers of a network that reads images every N epochs, over real images.

    By default the images are the validation set (``trainer.val_dataloaders``, else the
    datamodule's or the module's ``val_dataloader()``), read by index through its dataset: the
    trainer's own validation iteration, sampler and order are never touched, and under DDP each
    rank reads an exact, disjoint share (a ``DistributedSampler``'s padding is never counted).
    Concepts come from ``segmenter``, or from the dataset's segmentations with ``vocabulary``
    (items ``(image, segmentation)``, as the scene world's datamodule yields).

    Everything else is :class:`~lightning_dissect.callbacks.generator.DissectionCallback`'s: the schedule,
    ``on_error``, the round history in checkpoints, and the logged tables, unit strips (made from
    the dataset's own images), interpretable-unit counts and emergence charts, under the tag prefix
    ``dissection-<name>`` (default ``dissection-network``) beside the generator's ``dissection``.
    The ablation check of generators does not apply; use
    :func:`~lightning_dissect.interventions.reader_ablation` offline.

    Args:
        layers: Layer names relative to the network (as in its ``named_modules()``).
        segmenter: Images → concept labels; default: the embedded synthetic-world segmenter
            (unless ``vocabulary`` is given).
        network: Attribute path (``"discriminator"``, ``"model.encoder"``) or callable
            ``pl_module -> nn.Module``; default: the LightningModule itself (a classifier).
        images: A dataset, ``DataLoader``, tensor or :class:`~lightning_dissect.engine.images.ImageSet`,
            or a callable ``(trainer, pl_module) -> images`` called every round; default: the
            validation set.
        vocabulary: The concepts of the dataset's own segmentations (ground truth).
        value_range: The images' value range (mapped to the segmenter's); default ``(0, 1)``. An
            :class:`~lightning_dissect.engine.images.ImageSet` given as ``images`` carries its own.
        max_images: Dissect only the first ``max_images`` images of the set.
        transform: The network's own preprocessing (the segmenter sees the raw images).
        selector: Picks the tensor from tuple/dict layer outputs.
        every_n_epochs: Dissect after every ``n``-th training epoch (default: every epoch, unless
            ``every_n_train_steps`` is set).
        every_n_train_steps: Dissect every ``n`` global steps instead.
        batch_size: Images per network call. Default 64.
        threshold_mode: ``"quantile"`` or ``"iqr"``.
        quantile: Quantile level, or a name of :data:`~lightning_dissect.config.QUANTILE_PRESETS`.
        iou_threshold: Interpretability cut-off on the label IoU.
        num_visualized_units: Units per layer whose strips are logged. Default 8.
        top_k: Images per strip. Default 6.
        on_error: ``"warn"`` (report a failed round and keep training) or ``"raise"``.
        name: Tag prefix and state key; default ``"network"`` (e.g. ``"discriminator"``).
        dissection_config: Further :class:`~lightning_dissect.config.DissectionConfig` settings.

    Examples:
        >>> from lightning_dissect.segmenters import SceneWorld
        >>> world = SceneWorld(32)
        >>> callback = ImageDissectionCallback(["net.2"], network="discriminator",
        ...                                    vocabulary=world.vocabulary, value_range=(-1, 1),
        ...                                    name="discriminator")
        >>> callback.round_logger.prefix
        'dissection-discriminator'
    """

    def __init__(
        self,
        layers: Sequence[str],
        segmenter: Segmenter | None = None,
        *,
        network: str | Callable[[pl.LightningModule], nn.Module] | None = None,
        images: Any = None,
        vocabulary: ConceptVocabulary | None = None,
        value_range: tuple[float, float] | None = None,
        max_images: int | None = None,
        transform: Transform | None = None,
        selector: OutputSelector | Mapping[str, OutputSelector] = None,
        every_n_epochs: int | None = None,
        every_n_train_steps: int | None = None,
        batch_size: int | None = None,
        threshold_mode: str | None = None,
        quantile: float | str | None = None,
        iou_threshold: float | None = None,
        num_visualized_units: int | None = None,
        top_k: int | None = None,
        on_error: str = "warn",
        name: str | None = "network",
        dissection_config: Mapping[str, Any] | None = None,
    ) -> None:
        check_label_source(images, segmenter, vocabulary, value_range)
        if network is not None and not isinstance(network, str) and not callable(network):
            raise TypeError(
                f"`network` must be an attribute path or a callable pl_module -> nn.Module, got {network!r}"
            )
        max_images = check_int(max_images, "max_images", minimum=1, optional=True)
        if transform is not None and not callable(transform):
            raise TypeError(f"`transform` must be a callable images -> network input, got {transform!r}")
        super().__init__(
            layers,
            GroundTruth(vocabulary, value_range or (0.0, 1.0)) if vocabulary is not None else segmenter,
            every_n_epochs=every_n_epochs,
            every_n_train_steps=every_n_train_steps,
            batch_size=batch_size,
            threshold_mode=threshold_mode,
            quantile=quantile,  # type: ignore[arg-type]
            iou_threshold=iou_threshold,
            num_visualized_units=num_visualized_units,
            top_k=top_k,
            selector=selector,
            ablation_check=False,
            on_error=on_error,
            name=name,
            dissection_config=dissection_config,
        )
        self.network_getter = network
        self.images = images
        self.vocabulary = vocabulary
        self.value_range = None if value_range is None else (float(value_range[0]), float(value_range[1]))
        self.max_images = max_images
        self.transform = transform

    def _check_segmenter(self, segmenter: Any) -> None:
        """The dataset's own segmentations (``GroundTruth``) label the images; a segmenter is checked."""
        if not isinstance(segmenter, GroundTruth):
            super()._check_segmenter(segmenter)

    # ------------------------------------------------------------------ resolution
    def resolve_generator(self, pl_module: pl.LightningModule) -> nn.Module:
        """The network that reads the images (see the ``network`` argument)."""
        return self.resolve_network(pl_module)

    def resolve_network(self, pl_module: pl.LightningModule) -> nn.Module:
        """The network that reads the images (see the ``network`` argument)."""
        getter = self.network_getter
        if getter is None:
            module: Any = pl_module
        elif isinstance(getter, str):
            module = pl_module
            for part in getter.split("."):
                if not hasattr(module, part):
                    raise ValueError(
                        f"ImageDissectionCallback `network`={getter!r}: {type(pl_module).__name__} has no attribute "
                        f"path {getter!r} (failed at {part!r})"
                    )
                module = getattr(module, part)
        else:
            module = getter(pl_module)
        if not isinstance(module, nn.Module):
            raise ValueError(f"ImageDissectionCallback `network` gave a {type(module).__name__}, not an nn.Module")
        return unwrap_model(module)

    def image_set(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> ImageSet:
        """The images of a round (see the ``images`` argument), as an :class:`ImageSet`."""
        return self._images_and_labeller(trainer, pl_module)[0]

    def _images_and_labeller(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[ImageSet, Labeller]:
        """The images of a round and what labels them (:func:`~lightning_dissect.engine.images.resolve_images`)."""
        data = self.images
        if data is None:
            data = _validation_loader(trainer, pl_module)
        elif callable(data) and not isinstance(data, (ImageSet, Dataset, DataLoader, Tensor)):
            data = data(trainer, pl_module)
        if not isinstance(data, ImageSet):
            if isinstance(data, DataLoader):
                data = data.dataset  # read by index: the loader's own iteration is never touched
            if self.max_images is not None and hasattr(data, "__len__") and len(data) > self.max_images:
                data = data[: self.max_images] if hasattr(data, "ndim") else Subset(data, range(self.max_images))
        segmenter = None if isinstance(self.segmenter, GroundTruth) else self.segmenter
        return resolve_images(data, segmenter, self.vocabulary, self.value_range)

    # ------------------------------------------------------------------ setup / check
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Resolve the network, its layers and the images, and check them on two images before training."""
        if self.segmenter is None and not (isinstance(self.images, ImageSet) and self.images.vocabulary is not None):
            from lightning_dissect.segmenters import SyntheticSceneSegmenter

            self.segmenter = SyntheticSceneSegmenter()
        runner = ImageRunner(self.resolve_network(pl_module), transform=self.transform, selector=self.selector,
                             batch_size=self.config.batch_size)
        runner.check_layers(self.layers)
        try:
            images, labeller = self._images_and_labeller(trainer, pl_module)
            runner.preflight(images, self.layers, labeller)
        except (ValueError, TypeError) as err:
            raise DryRunError(f"ImageDissectionCallback (name={self.name!r}): {err}") from err
        self._round_logger = None

    # ------------------------------------------------------------------ one round
    def dissect_now(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, metadata: Mapping[str, Any]
    ) -> DissectionResult:
        """Network Dissection of this round over the images (all ranks call it)."""
        segmenter = None if isinstance(self.segmenter, GroundTruth) else self.segmenter
        return dissect_images(
            self.resolve_network(pl_module), self.layers, self.image_set(trainer, pl_module), segmenter,
            transform=self.transform, selector=self.selector, config=self.config, metadata=metadata,
        )


def _validation_loader(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
    """The validation dataloader: the trainer's, else the datamodule's or the module's ``val_dataloader()``.

    A fresh loader from ``val_dataloader()`` is only read through its dataset (by index): nothing
    of the trainer's own iteration is consumed.
    """
    loaders = getattr(trainer, "val_dataloaders", None)
    if loaders:
        return loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    # loaders given to fit(val_dataloaders=...) are known before the validation loop sets them up
    # only to the loop's data source (Lightning 2.x); its dataloader() makes a fresh loader
    source = getattr(getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "val_loop", None),
                     "_data_source", None)
    if source is not None and getattr(source, "instance", None) is not None and source.is_defined():
        loader = source.dataloader()
        if loader:
            return loader[0] if isinstance(loader, (list, tuple)) else loader
    for owner in (getattr(trainer, "datamodule", None), pl_module):
        make = getattr(owner, "val_dataloader", None)
        if make is None:
            continue
        try:
            loader = make()
        except (NotImplementedError, MisconfigurationException):
            continue
        if loader:
            return loader[0] if isinstance(loader, (list, tuple)) else loader
    raise ValueError(
        "ImageDissectionCallback found no validation images: pass `images=` (a dataset, a DataLoader or a callable "
        "(trainer, pl_module) -> images) or give the trainer a val_dataloader"
    )
