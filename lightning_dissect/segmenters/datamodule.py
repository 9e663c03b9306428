"""A LightningDataModule over the synthetic scene world (imports ``lightning``)."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from .._utils.seeds import derive_seed
from .synthetic import SyntheticSceneDataset
from .world import SceneWorld

__all__ = ["SyntheticSceneDataModule"]


class SyntheticSceneDataModule(L.LightningDataModule):
    """Train and validation splits of :class:`SceneWorld` scenes.

    The two splits are disjoint streams: train uses ``seed``, validation ``seed + 1``. Batches are
    ``(images, labels)``: float32 ``(B, 3, S, S)`` in [-1, 1] and int64 ``(B, S, S)``.

    Args:
        image_size: Side of the images (>= 16).
        num_train: Training samples per epoch.
        num_val: Validation samples.
        batch_size: Batch size of both loaders.
        seed: Seed of the training stream.
        num_workers: ``DataLoader`` workers.
        shuffle: Shuffle the training split.

    Examples:
        >>> dm = SyntheticSceneDataModule(image_size=16, num_train=8, num_val=4, batch_size=4)
        >>> dm.setup("fit")
        >>> images, labels = next(iter(dm.train_dataloader()))
        >>> images.shape, labels.shape
        (torch.Size([4, 3, 16, 16]), torch.Size([4, 16, 16]))

    """

    def __init__(
        self,
        image_size: int = 32,
        num_train: int = 10_000,
        num_val: int = 1_000,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.world = SceneWorld(image_size)
        self.train_set: SyntheticSceneDataset | None = None
        self.val_set: SyntheticSceneDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Create the datasets (cheap: samples are rendered on demand)."""
        hp = self.hparams
        self.train_set = SyntheticSceneDataset(hp.num_train, hp.seed, world=self.world)
        self.val_set = SyntheticSceneDataset(hp.num_val, derive_seed(hp.seed, "validation"), world=self.world)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if self.train_set is None or self.val_set is None:
            self.setup()
        return DataLoader(
            self.train_set if split == "train" else self.val_set,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Return the training batches, shuffled unless ``shuffle=False``."""
        return self._loader("train", bool(self.hparams.shuffle))

    def val_dataloader(self) -> DataLoader:
        """Return the validation batches, in order."""
        return self._loader("val", False)
