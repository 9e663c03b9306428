"""``ImageDissectionCallback``: Network Dissection of an image-reading network during training.

The sibling of :class:`~lightning_dissect.callbacks.generator.DissectionCallback` for networks that
*read* images — a GAN's discriminator, a classifier, an encoder. Both are children of
:class:`~lightning_dissect.callbacks.base.BaseDissectionCallback`, which owns the scheduling, error
handling, round history, checkpoint state and round logging (here under its own tag prefix); only
the dissection of a round differs: :func:`~lightning_dissect.dissection.dissect_images` over real
images instead of :func:`~lightning_dissect.dissection.dissect` over a latent bank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_dissect._utils.checks import check_int
from lightning_dissect.callbacks.base import BaseDissectionCallback, callback_config, legacy_settings
from lightning_dissect.config import DissectionConfig
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
from lightning_dissect.segmenters.base import Segmenter, check_segmenter
from lightning_dissect.vocabulary import ConceptVocabulary

__all__ = ["ImageDissectionCallback", "ImageSource"]

ImageSource = Callable[[pl.Trainer, pl.LightningModule], Any]
"""``(trainer, pl_module) -> images`` called at every round (e.g. images the generator makes now)."""

#: The dissection settings that were keyword arguments of the callback (deprecated: use ``dissection_config``).
CONFIG_ARGUMENTS = ("batch_size", "threshold_mode", "quantile", "iou_threshold", "num_visualized_units", "top_k")


class ImageDissectionCallback(BaseDissectionCallback):
    r"""Dissect layers of a network that reads images every N epochs, over real images.

    By default the images are the validation set (``trainer.val_dataloaders``, else the
    datamodule's or the module's ``val_dataloader()``), read by index through its dataset: the
    trainer's own validation iteration, sampler and order are never touched, and under DDP each
    rank reads an exact, disjoint share (a ``DistributedSampler``'s padding is never counted).
    Concepts come from ``segmenter``, or from the dataset's segmentations with ``vocabulary``
    (items ``(image, segmentation)``, as the scene world's datamodule yields).

    The schedule, ``on_error``, the round history in checkpoints, and the logged tables, unit
    strips (made from the dataset's own images), interpretable-unit counts and emergence charts
    are those of every dissection callback, under the tag prefix ``dissection-<name>`` (default
    ``dissection-network``) beside the generator's ``dissection``. The ablation check of
    generators does not apply; use :func:`~lightning_dissect.interventions.reader_ablation` offline.

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
        on_error: ``"warn"`` (report a failed round and keep training) or ``"raise"``.
        name: Tag prefix and state key; default ``"network"`` (e.g. ``"discriminator"``).
        dissection_config: The :class:`~lightning_dissect.config.DissectionConfig` settings of a
            round (``batch_size``, ``threshold_mode``, ``quantile``, ...), as a mapping of fields
            or a whole :class:`~lightning_dissect.config.DissectionConfig`.
        **deprecated: The keyword arguments of the previous release (``batch_size``,
            ``threshold_mode``, ``quantile``, ``iou_threshold``, ``num_visualized_units``,
            ``top_k``): still taken, with a ``DeprecationWarning``.

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
        on_error: str = "warn",
        name: str | None = "network",
        dissection_config: DissectionConfig | Mapping[str, Any] | None = None,
        **deprecated: Any,
    ) -> None:
        legacy = legacy_settings(type(self).__name__, deprecated, CONFIG_ARGUMENTS, "dissection_config={...}")
        self.max_images = self._validate_init_configuration(segmenter, network, images, vocabulary, value_range,
                                                            max_images, transform)
        super().__init__(
            layers, GroundTruth(vocabulary, value_range or (0.0, 1.0)) if vocabulary is not None else segmenter,
            every_n_epochs=every_n_epochs, every_n_train_steps=every_n_train_steps,
            config=callback_config(legacy, dissection_config), on_error=on_error, name=name,
        )
        self.network_getter = network
        self.images = images
        self.vocabulary = vocabulary
        self.value_range = None if value_range is None else (float(value_range[0]), float(value_range[1]))
        self.transform = transform
        self.selector = selector

    @staticmethod
    def _validate_init_configuration(
        segmenter: Any, network: Any, images: Any, vocabulary: Any, value_range: Any, max_images: Any, transform: Any
    ) -> int | None:
        """Refuse what cannot work now, not at the first round; return ``max_images`` checked."""
        check_label_source(images, segmenter, vocabulary, value_range)
        if segmenter is not None:
            check_segmenter(segmenter)
        if network is not None and not isinstance(network, str) and not callable(network):
            raise TypeError(
                f"`network` must be an attribute path or a callable pl_module -> nn.Module, got {network!r}"
            )
        max_images = check_int(max_images, "max_images", minimum=1, optional=True)
        if transform is not None and not callable(transform):
            raise TypeError(f"`transform` must be a callable images -> network input, got {transform!r}")
        return max_images

    # ------------------------------------------------------------------ resolution
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
                        f"{type(self).__name__} `network`={getter!r}: {type(pl_module).__name__} has no attribute "
                        f"path {getter!r} (failed at {part!r})"
                    )
                module = getattr(module, part)
        else:
            module = getter(pl_module)
        if not isinstance(module, nn.Module):
            raise ValueError(f"{type(self).__name__} `network` gave a {type(module).__name__}, not an nn.Module")
        return unwrap_model(module)

    def image_set(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> ImageSet:
        """The images of a round (see the ``images`` argument), as an :class:`ImageSet`."""
        return self._images_and_labeller(trainer, pl_module)[0]

    def _images_and_labeller(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[ImageSet, Labeller]:
        """The images of a round and what labels them (:func:`~lightning_dissect.engine.images.resolve_images`)."""
        data = self.images
        if data is None:
            data = _validation_loader(trainer, pl_module, type(self).__name__)
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
        if not (isinstance(self.images, ImageSet) and self.images.vocabulary is not None):
            self._default_segmenter()  # the set's own segmentations label it otherwise
        runner = ImageRunner(self.resolve_network(pl_module), transform=self.transform, selector=self.selector,
                             batch_size=self.config.batch_size)
        runner.check_layers(self.layers)
        try:
            images, labeller = self._images_and_labeller(trainer, pl_module)
            runner.preflight(images, self.layers, labeller)
        except (ValueError, TypeError) as err:
            raise DryRunError(f"{type(self).__name__} (name={self.name!r}): {err}") from err
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


def _validation_loader(trainer: pl.Trainer, pl_module: pl.LightningModule, owner: str) -> Any:
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
    for holder in (getattr(trainer, "datamodule", None), pl_module):
        make = getattr(holder, "val_dataloader", None)
        if make is None:
            continue
        try:
            loader = make()
        except (NotImplementedError, MisconfigurationException):
            continue
        if loader:
            return loader[0] if isinstance(loader, (list, tuple)) else loader
    raise ValueError(
        f"{owner} found no validation images: pass `images=` (a dataset, a DataLoader or a callable "
        "(trainer, pl_module) -> images) or give the trainer a val_dataloader"
    )
