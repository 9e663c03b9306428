"""Train a small DCGAN on the synthetic scene world, then dissect its generator (and its discriminator).

Run (defaults: 10 epochs, the same on any machine; 9 min 21 s in all, 547 s of it
training, on 2 idle CPU cores)::

    python examples/train_gan.py --default-root-dir runs/gan
    tensorboard --logdir runs/gan

Tiny settings for tests (a few seconds after ``import lightning``)::

    python examples/train_gan.py --smoke --default-root-dir /tmp/gan-smoke

What it writes under ``--default-root-dir``:

* ``lightning_logs/version_N/`` — TensorBoard events (``g_loss``, ``d_loss``, ``d_real``,
  ``d_fake``, and whatever the dissection callback logs), ``hparams.yaml``, and
  ``checkpoints/last.ckpt`` (the final checkpoint, for ``examples/dissect_checkpoint.py``) and
  ``checkpoints/epochNN-stepS.ckpt`` (one per epoch, for ``lightning-dissect emergence``);
* ``samples.png`` — a grid of images from the final generator (fixed latents);
* ``final_dissection.json`` — the offline dissection of the final generator;
* ``report/index.html`` — its HTML report (per layer: concepts, IoU heatmap, unit strips, all units).

At the end it prints how long the run took and where these files are. ``--max-time`` can cap the
training's wall time; a run it cuts short says so in the final summary (its result then depends on
the machine's speed).

Note: the GAN uses manual optimisation with two optimizers, so ``trainer.global_step`` advances
twice per training batch (see :class:`gan_model.DCGAN`); the losses and every ``dissection/*`` tag
are logged on the batch axis of ``self.log`` (one step per batch) all the same.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lightning_dissect._utils.text import plural  # noqa: E402

# Defaults of the example (documented in docs/example.md).
DEFAULTS = dict(
    max_epochs=10,
    max_time=None,
    num_train=20_000,
    batch_size=64,
    image_size=32,
    latent_dim=128,
    g_channels=(256, 128, 64, 32),
    d_channels=(32, 64, 128),
    lr_g=2e-4,
    lr_d=2e-4,
    dissect_layers=("layer1", "layer2", "layer3", "layer4"),
    dissect_samples=1000,
    callback_every=1,
    callback_samples=128,
    d_dissect_layers=("net.4", "net.7"),
    d_dissect_images=128,
)
SMOKE = dict(
    max_epochs=1,
    num_train=64,
    batch_size=16,
    latent_dim=16,
    g_channels=(32, 16, 8, 8),
    d_channels=(8, 16, 32),
    dissect_samples=32,
    callback_every=1,
    callback_samples=16,
    d_dissect_images=16,
    max_time=None,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--smoke`` replaces the unset sizes with tiny ones."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-epochs", type=int, default=None, help=f"(default {DEFAULTS['max_epochs']})")
    p.add_argument("--max-time", type=str, default=None,
                   help="also stop training after this long, Lightning's DD:HH:MM:SS (default: no "
                        "limit, so the result does not depend on the machine's speed)")
    p.add_argument("--default-root-dir", type=str, default="runs/gan",
                   help="logs, checkpoints and reports go here (default runs/gan)")
    p.add_argument("--seed", type=int, default=0, help="seed_everything(seed, workers=True)")
    p.add_argument("--callback-every", type=int, default=None,
                   help=f"epochs between dissection rounds (default {DEFAULTS['callback_every']})")
    p.add_argument("--callback-samples", type=int, default=None,
                   help=f"latents per dissection round (default {DEFAULTS['callback_samples']})")
    p.add_argument("--no-callback", action="store_true", help="train without the dissection callbacks")
    p.add_argument("--d-dissect-layers", type=str, nargs="+", default=None,
                   help="discriminator layers dissected every round over real scenes "
                        f"(default {' '.join(DEFAULTS['d_dissect_layers'])}; 'none' to skip)")
    p.add_argument("--d-dissect-images", type=int, default=None,
                   help=f"real scenes (with their exact segmentations) per discriminator round "
                        f"(default {DEFAULTS['d_dissect_images']})")
    p.add_argument("--no-final-dissection", action="store_true",
                   help="skip the offline dissection of the final generator")
    p.add_argument("--accelerator", type=str, default="auto")
    p.add_argument("--devices", type=str, default="auto", help="e.g. 1, 2 or auto")
    p.add_argument("--strategy", type=str, default="auto",
                   help="e.g. ddp_find_unused_parameters_true / ddp_spawn_find_unused_parameters_true "
                        "(the GAN needs find_unused_parameters under DDP)")
    p.add_argument("--num-train", type=int, default=None,
                   help=f"training images per epoch (default {DEFAULTS['num_train']})")
    p.add_argument("--batch-size", type=int, default=None, help=f"(default {DEFAULTS['batch_size']})")
    p.add_argument("--image-size", type=int, default=None, help=f"(default {DEFAULTS['image_size']})")
    p.add_argument("--latent-dim", type=int, default=None, help=f"(default {DEFAULTS['latent_dim']})")
    p.add_argument("--g-channels", type=int, nargs="+", default=None,
                   help=f"generator widths layer1.. (default {' '.join(map(str, DEFAULTS['g_channels']))})")
    p.add_argument("--d-channels", type=int, nargs="+", default=None,
                   help=f"discriminator widths (default {' '.join(map(str, DEFAULTS['d_channels']))})")
    p.add_argument("--lr-g", type=float, default=None, help=f"(default {DEFAULTS['lr_g']})")
    p.add_argument("--lr-d", type=float, default=None, help=f"(default {DEFAULTS['lr_d']})")
    p.add_argument("--spectral-norm", action="store_true", help="spectral norm in the discriminator")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default 0)")
    p.add_argument("--dissect-layers", type=str, nargs="+", default=None,
                   help=f"layers of the final dissection (default {' '.join(DEFAULTS['dissect_layers'])})")
    p.add_argument("--dissect-samples", type=int, default=None,
                   help=f"latents of the final dissection (default {DEFAULTS['dissect_samples']})")
    p.add_argument("--no-progress-bar", action="store_true")
    p.add_argument("--smoke", action="store_true",
                   help="tiny model and data, one short epoch (for tests); explicit options still win")
    args = p.parse_args(argv)
    defaults = {**DEFAULTS, **(SMOKE if args.smoke else {})}
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if isinstance(args.max_time, str) and args.max_time.lower() == "none":
        args.max_time = None
    if args.devices not in ("auto",) and args.devices.lstrip("-").isdigit():
        args.devices = int(args.devices)
    return args


# ---------------------------------------------------------------------------------------------
# DISSECTION CALLBACK — the one line a user adds to an existing training run.
# ---------------------------------------------------------------------------------------------
def build_callbacks(args: argparse.Namespace) -> list:
    """The dissection callback of the run (none with ``--no-callback``).

    Every ``--callback-every`` epochs it dissects the generator layers on a fixed bank of
    ``--callback-samples`` latents in GAN Dissection's IQR mode (which, unlike a fixed top-1 %
    quantile, also finds units for large regions such as sky), logs tables, unit strips, heatmaps,
    emergence charts and an ablation check to TensorBoard, and writes each round's JSON.
    """
    if args.no_callback:
        return []
    from lightning_dissect import AblationCheck, DissectionCallback
    from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter

    world = SceneWorld(args.image_size)
    segmenter = SyntheticSceneSegmenter(world)
    callbacks = [
        DissectionCallback(
            list(args.dissect_layers),
            segmenter,
            every_n_epochs=args.callback_every,
            ablation=AblationCheck(samples=64 if not args.smoke else 8),
            dissection_config={
                "num_samples": args.callback_samples,
                "batch_size": min(64, args.callback_samples),
                "threshold_mode": "iqr",
                "num_levels": 16,
                "num_visualized_units": 8,
                "top_k": 6,
            },
        )
    ]
    if list(args.d_dissect_layers) != ["none"]:
        from lightning_dissect import ImageDissectionCallback

        # Network Dissection of the discriminator over real scenes of the validation split, with
        # the scene world's exact segmentations (no segmenter runs): tags `dissection-discriminator/...`
        callbacks.append(
            ImageDissectionCallback(
                list(args.d_dissect_layers),
                network="discriminator",
                vocabulary=world.vocabulary,
                value_range=(-1, 1),
                every_n_epochs=args.callback_every,
                name="discriminator",
                dissection_config={"batch_size": 64, "num_visualized_units": 8, "top_k": 6},
            )
        )
    return callbacks


def main(argv: list[str] | None = None) -> dict:
    """Train, save samples and a checkpoint, dissect the final generator; return a summary dict."""
    run_start = time.perf_counter()
    args = parse_args(argv)
    import lightning as L
    from gan_model import DCGAN
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger
    from process_group import ReleaseGlooProcessGroup

    from lightning_dissect.segmenters.datamodule import SyntheticSceneDataModule
    from lightning_dissect.visual.visualize import encode_png

    L.seed_everything(args.seed, workers=True)
    root = Path(args.default_root_dir)
    root.mkdir(parents=True, exist_ok=True)

    datamodule = SyntheticSceneDataModule(
        image_size=args.image_size,
        num_train=args.num_train,
        num_val=args.d_dissect_images,  # read only by the discriminator's dissection (no validation step)
        batch_size=args.batch_size,
        seed=args.seed,
        num_workers=args.num_workers,
    )
    model = DCGAN(
        latent_dim=args.latent_dim,
        image_size=args.image_size,
        g_channels=tuple(args.g_channels),
        d_channels=tuple(args.d_channels),
        lr_g=args.lr_g,
        lr_d=args.lr_d,
        spectral_norm=args.spectral_norm,
    )
    logger = TensorBoardLogger(save_dir=str(root), name="lightning_logs")
    # last.ckpt, and one checkpoint per epoch for `lightning-dissect emergence` (docs/example.md)
    checkpoint = ModelCheckpoint(save_last=True, every_n_epochs=1, save_top_k=-1,
                                 filename="epoch{epoch:02d}-step{step}", auto_insert_metric_name=False)
    trainer = L.Trainer(
        max_epochs=args.max_epochs,
        max_time=args.max_time,
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
        default_root_dir=str(root),
        logger=logger,
        callbacks=[checkpoint, *build_callbacks(args), ReleaseGlooProcessGroup()],
        log_every_n_steps=10 if not args.smoke else 1,
        limit_val_batches=0,  # the GAN has no validation step
        enable_progress_bar=not args.no_progress_bar,
        enable_model_summary=not args.smoke,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    train_seconds = time.perf_counter() - start
    # a run that --max-time stopped before --max-epochs did not finish its last epoch
    cut_short = args.max_time is not None and trainer.current_epoch < args.max_epochs
    summary = {
        "train_seconds": train_seconds,
        "global_step": trainer.global_step,
        "batches": trainer.global_step // 2,
        "checkpoint": checkpoint.last_model_path,
        "epochs": trainer.current_epoch,
        "cut_short": cut_short,
        "log_dir": logger.log_dir,
    }
    if not trainer.is_global_zero:
        return summary
    print(
        f"training: {train_seconds:.1f} s, {plural(trainer.current_epoch, 'epoch')}, "
        f"{plural(trainer.global_step // 2, 'batch', 'batches')} (global_step {trainer.global_step})"
    )

    model = model.cpu() if args.strategy.startswith("ddp_spawn") else model
    samples_png = root / "samples.png"
    samples_png.write_bytes(encode_png(model.sample_grid(scale=3)))
    print_rounds(trainer)
    print(f"samples: {samples_png}")
    print(f"checkpoint: {checkpoint.last_model_path}")

    if not args.no_final_dissection:
        summary.update(final_dissection(model, args, root))
    summary["total_seconds"] = time.perf_counter() - run_start
    print_where_to_look(summary, args)
    return summary


def print_where_to_look(summary: dict, args: argparse.Namespace) -> None:
    """The closing lines: how long the run took, whether it was cut short, and where to look."""
    minutes, seconds = divmod(round(summary["total_seconds"]), 60)
    print(f"\ndone in {minutes} min {seconds:02d} s (training {summary['train_seconds']:.0f} s)")
    if summary["cut_short"]:
        print(f"WARNING: --max-time {args.max_time} stopped training after "
              f"{plural(summary['epochs'], 'complete epoch')} of {args.max_epochs}: the counts above "
              "depend on this machine's speed; run without --max-time for the full result")
    print("where to look:")
    print(f"  TensorBoard logs:  tensorboard --logdir {summary['log_dir']}")
    if "json" in summary:
        print(f"  final dissection:  {summary['json']}")
        print(f"  HTML report:       {summary['report']}")


def _percent(fraction: float) -> str:
    return "n/a" if fraction != fraction else f"{round(100 * fraction) + 0} %"  # no "-0 %"


def print_rounds(trainer) -> None:
    """Print the callback's rounds: interpretable units per layer over training, last ablation."""
    from lightning_dissect import DissectionCallback, ImageDissectionCallback

    for reader in (c for c in trainer.callbacks if isinstance(c, ImageDissectionCallback) and c.history):
        _print_reader_rounds(reader)
    callbacks = [c for c in trainer.callbacks
                 if isinstance(c, DissectionCallback) and not isinstance(c, ImageDissectionCallback)]
    if not callbacks or not callbacks[0].history:
        return
    from rich.console import Console
    from rich.table import Table

    callback = callbacks[0]
    layers = list(callback.history[-1]["layers"])
    table = Table(title="DissectionCallback rounds: interpretable units per layer (IQR mode)",
                  title_justify="left")
    table.add_column("epoch", justify="right")
    table.add_column("global step", justify="right")
    for name in layers:
        table.add_column(name, justify="right")
    for entry in callback.history:
        table.add_row(str(entry["epoch"]), str(entry["global_step"]),
                      *[str(entry["layers"][n]["num_interpretable"]) for n in layers])
    Console().print(table)
    last = callback.last_result
    if last is not None:
        for name in layers:
            counts = ", ".join(f"{k} {v}" for k, v in last[name].concept_counts().items())
            print(f"  {name} at the last round: {counts or 'none'}")
    for name, records in callback.last_ablations.items():
        for r in records[:3]:
            print(f"  ablation check, {name}: switching off {plural(len(r.units), repr(r.concept) + ' unit')} "
                  f"removes {_percent(r.relative_drop)} of it ({r.drop:.4f} of all pixels); as many random "
                  f"units: {_percent(r.control_relative_drop)} ({r.control_drop:.4f} of all pixels)")


def _print_reader_rounds(callback) -> None:
    """Interpretable discriminator units per round, and what the last round's units detect."""
    layers = list(callback.history[-1]["layers"])
    rows = ", ".join(
        f"epoch {e['epoch']}: " + " ".join(f"{n} {e['layers'][n]['num_interpretable']}" for n in layers)
        for e in callback.history
    )
    print(f"discriminator rounds (interpretable units over real scenes): {rows}")
    last = callback.last_result
    if last is not None:
        for name in layers:
            counts = ", ".join(f"{k} {v}" for k, v in last[name].concept_counts().items())
            print(f"  discriminator {name} at the last round: {counts or 'none'}")


def final_dissection(model, args: argparse.Namespace, root: Path) -> dict:
    """Dissect the final generator offline (quantile mode) and print the summary."""
    import torch

    from lightning_dissect import dissect
    from lightning_dissect.report import write_report
    from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter

    segmenter = SyntheticSceneSegmenter(SceneWorld(args.image_size))
    start = time.perf_counter()
    result = dissect(
        model.generator,
        list(args.dissect_layers),
        segmenter,
        latent_shape=(args.latent_dim,),
        num_samples=args.dissect_samples,
        batch_size=100,
        threshold_mode="quantile",
        num_visualized_units=12,  # unit strips for the HTML report
        progress=False,
        # rank 0 alone: the other ranks have returned after fit(), so a sharded dissect() in a
        # process group that is still alive (a user's own, say) would wait for them forever
        distributed=False,
        metadata={"source": "examples/train_gan.py", "args": _plain(vars(args))},
    )
    seconds = time.perf_counter() - start
    result.print_summary()
    per_layer = {name: result[name].num_interpretable for name in args.dissect_layers}
    print(f"final dissection ({plural(args.dissect_samples, 'sample')}, quantile 0.99, interpretable: "
          f"{result.rule.describe()}): {seconds:.1f} s")
    for name in args.dissect_layers:
        layer = result[name]
        print(f"  {name}: {layer.num_interpretable}/{layer.num_units} interpretable units  "
              f"{layer.concept_counts()}")
    print(f"  total: {plural(sum(per_layer.values()), 'interpretable unit')}")
    json_path = root / "final_dissection.json"
    result.to_json(json_path, indent=1)
    report = write_report(result, root / "report", title="Final dissection of the example GAN", write_json=False)
    del torch
    return {"dissection_seconds": seconds, "interpretable": per_layer, "result": result,
            "json": json_path, "report": report}


def _plain(values: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}


if __name__ == "__main__":
    main()
