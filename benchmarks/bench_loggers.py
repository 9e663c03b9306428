"""What logging a round to every logger costs, relative to computing the round.

Workload: the example's callback (``examples/train_gan.py``: the DCGAN generator, random weights,
layers ``layer1`` ... ``layer4`` = 480 units, 32 x 32 images, ``threshold_mode="iqr"`` with 16
levels, 128 latents, 8 visualized units with 6 images each, the ablation check on 64 latents).

* **round**: the statistics of one round, as the callback computes them (``dissect`` plus the
  ablation check).
* **logging**: what the callback does with a computed round on rank 0: build the round's content
  once (tables, pictures), write the round file, each logger's scalars and each logger's writer.
  Measured with TensorBoard alone (the baseline) and with TensorBoard, Weights & Biases (offline),
  MLflow (SQLite store, local artifacts) and CSV at once. Each logger's one-time start (W&B's run,
  MLflow's database) happens before the timing.

Prints the median of ``--repeats`` for each, and the ratios ``logging / round`` measured in this
run. Run ``python benchmarks/bench_loggers.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]  # this checkout's package and the example

from gan_model import Generator  # noqa: E402

from lightning_dissect import DissectionCallback  # noqa: E402
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter  # noqa: E402

LAYERS = ["layer1", "layer2", "layer3", "layer4"]
TARGET = 0.10


def make_loggers(root: Path, which: str) -> list:
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

    loggers = [TensorBoardLogger(root, name="tb")]
    if which == "all":
        loggers += [
            WandbLogger(save_dir=str(root), offline=True, project="bench"),
            MLFlowLogger(experiment_name="bench", tracking_uri=f"sqlite:///{root}/mlflow.db",
                         artifact_location=str(root / "mlartifacts")),
            CSVLogger(root, name="csv"),
        ]
    for logger in loggers:  # one-time starts (W&B run, MLflow database and run) are not timed
        logger.experiment  # noqa: B018
        if hasattr(logger, "run_id"):
            logger.run_id  # noqa: B018
    return loggers


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=128)
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    torch.manual_seed(0)
    generator = Generator(latent_dim=128, image_size=32).eval()
    segmenter = SyntheticSceneSegmenter(SceneWorld(32))
    callback = DissectionCallback(
        LAYERS, segmenter, latent_shape=(128,), generator=lambda module: generator,
        dissection_config={"num_samples": args.samples, "batch_size": 64, "threshold_mode": "iqr", "num_levels": 16,
                           "num_visualized_units": 8, "top_k": 6},
    )
    module = SimpleNamespace(device=torch.device("cpu"))
    print(f"torch {torch.__version__} | {platform.processor() or platform.machine()} | "
          f"threads {torch.get_num_threads()} | {os.cpu_count()} cores")
    print(f"{len(LAYERS)} layers (480 units), {args.samples} latents, iqr 16 levels, 8 units x 6 images, "
          f"ablation on 64 latents; median of {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("WANDB_DATA_DIR", str(Path(tmp) / "wandb-data"))
        trainers = {}
        for which in ("tensorboard", "all"):
            root = Path(tmp) / which
            trainers[which] = SimpleNamespace(loggers=make_loggers(root, which), default_root_dir=str(root),
                                              is_global_zero=True, val_dataloaders=None)
        compute, logging = [], {"tensorboard": [], "all": []}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for step in range(args.repeats + 1):  # the first round warms up
                start = time.perf_counter()
                result = callback.dissect_now(None, module, {"global_step": step, "log_step": step, "name": None})
                ablations = callback._ablation(None, generator, result)
                result.ablations = {name: [r.to_dict() for r in records] for name, records in ablations.items()}
                took = time.perf_counter() - start
                for which, trainer in trainers.items():
                    start = time.perf_counter()
                    failures: list[str] = []
                    content = callback._content(result, ablations, step, failures)
                    callback._write(trainer, content, failures)
                    assert not failures, failures
                    if step:
                        logging[which].append(time.perf_counter() - start)
                callback.history.append({"global_step": step, "epoch": 0, "layers": {
                    name: {"labels": [u.label if u.interpretable else "" for u in layer.units]}
                    for name, layer in result.layers.items()}})
                if step:
                    compute.append(took)
        import wandb

        wandb.finish()
    t_round = statistics.median(compute)
    print(f"{'round (dissect + ablation check)':<44}{t_round:8.2f} s")
    for which, label in (("tensorboard", "logging: TensorBoard only"), ("all", "logging: TB + W&B + MLflow + CSV")):
        t = statistics.median(logging[which])
        ratio = t / t_round
        verdict = "" if which == "tensorboard" else (
            f"   (target <= {TARGET:.0%}: {'ok' if ratio <= TARGET else 'above'})")
        print(f"{label:<44}{t:8.2f} s   {ratio:6.1%} of the round{verdict}")


if __name__ == "__main__":
    main()
