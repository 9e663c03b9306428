"""Train a small scene classifier with Lightning and watch its units come to detect concepts.

Network Dissection of a classifier during training: each scene of the synthetic world is labelled
with the concept that covers most of it (sky, grass, water, ...), a small CNN learns to name it,
and :class:`~lightning_dissect.ImageDissectionCallback` dissects its convolutional blocks every
epoch over the validation scenes, with the world's exact segmentations. At the end the top units
of each concept are switched off (:func:`~lightning_dissect.interventions.reader_ablation`) to
see how much accuracy the classifier loses, overall and on the scenes where the concept is.

Run (defaults: 4 epochs of 6,000 scenes; 60 s in all on 2 idle CPU cores, 43 s of it training)::

    python examples/train_classifier.py --default-root-dir runs/classifier
    tensorboard --logdir runs/classifier

Tiny settings for tests::

    python examples/train_classifier.py --smoke --default-root-dir /tmp/classifier-smoke
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

DEFAULTS = dict(max_epochs=4, num_train=6000, num_val=512, batch_size=64, image_size=32, width=32)
SMOKE = dict(max_epochs=1, num_train=64, num_val=32, batch_size=16, image_size=32, width=8)
LAYERS = ("layer2", "layer3")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--smoke`` replaces the unset sizes with tiny ones."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--default-root-dir", type=str, default="runs/classifier")
    p.add_argument("--seed", type=int, default=0)
    for key in DEFAULTS:
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, help=f"(default {DEFAULTS[key]})")
    p.add_argument("--no-progress-bar", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny model and data, one short epoch (for tests)")
    args = p.parse_args(argv)
    for key, value in {**DEFAULTS, **(SMOKE if args.smoke else {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


class DominantConceptScenes(Dataset):
    """Scenes with their segmentation and, as class, the concept covering most pixels.

    Items are ``(image, segmentation, class)``: float32 ``(3, S, S)`` in [-1, 1], int64 ``(S, S)``
    and the concept index (a concept of the world's vocabulary).
    """

    def __init__(self, n: int, seed: int, image_size: int) -> None:
        from lightning_dissect.segmenters import SceneWorld
        from lightning_dissect.segmenters.synthetic import SyntheticSceneDataset

        self.world = SceneWorld(image_size)
        self.scenes = SyntheticSceneDataset(n, seed, world=self.world)
        self.num_classes = self.world.vocabulary.num_concepts

    def __len__(self) -> int:
        return len(self.scenes)

    def _item(self, image: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, int]:
        counts = torch.bincount(labels.flatten(), minlength=self.num_classes)
        counts[0] = 0  # "unlabeled" is never the answer
        return image, labels, int(counts.argmax())

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        return self._item(*self.scenes[index])

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, Tensor, int]]:
        return [self._item(image, labels) for image, labels in self.scenes.__getitems__(indices)]


def build_model(num_classes: int, width: int, lr: float = 2e-3):
    """The LightningModule: three convolutional blocks (``layer1``..``layer3``) and a linear head."""
    import lightning as L

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

    class SceneClassifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer1 = block(3, width)
            self.layer2 = block(width, 2 * width)
            self.layer3 = block(2 * width, 4 * width)
            self.head = nn.Linear(4 * width, num_classes)

        def forward(self, images: Tensor) -> Tensor:
            x = self.layer3(self.layer2(self.layer1(images)))
            return self.head(x.mean((2, 3)))

        def training_step(self, batch, batch_idx):
            images, _, classes = batch
            loss = nn.functional.cross_entropy(self(images), classes)
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def validation_step(self, batch, batch_idx):
            images, _, classes = batch
            self.log("val_accuracy", (self(images).argmax(1) == classes).float().mean(), prog_bar=True)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=lr)

    return SceneClassifier()


def main(argv: list[str] | None = None) -> dict:
    """Train with the dissection callback, print its rounds and the ablation; return a summary."""
    args = parse_args(argv)
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_dissect import ImageDissectionCallback
    from lightning_dissect._utils.text import plural
    from lightning_dissect.interventions import reader_ablation

    L.seed_everything(args.seed, workers=True)
    root = Path(args.default_root_dir)
    train = DominantConceptScenes(args.num_train, args.seed, args.image_size)
    val = DominantConceptScenes(args.num_val, args.seed + 1, args.image_size)
    vocabulary = train.world.vocabulary
    model = build_model(train.num_classes, args.width)
    callback = ImageDissectionCallback(
        list(LAYERS), vocabulary=vocabulary, value_range=(-1, 1), every_n_epochs=1, name="classifier",
        dissection_config={"batch_size": 64, "num_visualized_units": 6, "top_k": 6},
    )
    trainer = L.Trainer(
        max_epochs=args.max_epochs, default_root_dir=str(root), accelerator="cpu", devices=1,
        logger=TensorBoardLogger(save_dir=str(root), name="lightning_logs"), callbacks=[callback],
        enable_progress_bar=not args.no_progress_bar, enable_model_summary=False, log_every_n_steps=10,
    )
    start = time.perf_counter()
    trainer.fit(model, DataLoader(train, batch_size=args.batch_size, shuffle=True),
                DataLoader(val, batch_size=args.batch_size))
    seconds = time.perf_counter() - start
    accuracy = float(trainer.callback_metrics.get("val_accuracy", float("nan")))
    print(f"training: {seconds:.1f} s, {plural(trainer.current_epoch, 'epoch')}, validation accuracy {accuracy:.2f}")
    print("interpretable units per round: " + ", ".join(
        f"epoch {e['epoch']}: " + " ".join(f"{n} {e['layers'][n]['num_interpretable']}" for n in LAYERS)
        for e in callback.history
    ))
    result = callback.last_result
    records = reader_ablation(model, result, val, vocabulary=vocabulary, value_range=(-1, 1), top_n=5,
                              batch_size=128) if result is not None else {}
    for layer, effects in records.items():
        for r in effects[:4]:
            switched = plural(len(r.units), repr(r.concept) + " unit")
            print(f"  {layer}: switching off {switched}: accuracy {r.baseline:.2f} -> "
                  f"{r.ablated:.2f} (random units {r.control_ablated:.2f}); on the {r.num_present} scenes with "
                  f"{r.concept}: {r.present_baseline:.2f} -> {r.present_ablated:.2f}")
    print(f"TensorBoard: tensorboard --logdir {root}")
    return {"train_seconds": seconds, "val_accuracy": accuracy, "history": callback.history, "ablation": records}


if __name__ == "__main__":
    main()
