"""Dissect the generator of a saved ``examples/train_gan.py`` checkpoint and write a report.

Example::

    python examples/dissect_checkpoint.py \\
        --checkpoint runs/gan/lightning_logs/version_0/checkpoints/last.ckpt \\
        --layers layer1 layer2 layer3 --num-samples 1000 --output runs/gan/report

It loads the :class:`gan_model.DCGAN` from the checkpoint (its hyper-parameters are stored in it),
runs :func:`lightning_dissect.dissect` over the chosen generator layers against the exact
segmenter of the synthetic scene world, prints the summary and writes the JSON result and the
static HTML report with :func:`lightning_dissect.report.write_report`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a Lightning .ckpt written by train_gan.py")
    p.add_argument("--layers", nargs="+", default=["layer1", "layer2", "layer3"],
                   help="generator layers to dissect (default layer1 layer2 layer3)")
    p.add_argument("--num-samples", type=int, default=1000, help="latents in the bank (default 1000)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threshold-mode", choices=("quantile", "iqr"), default="quantile")
    p.add_argument("--quantile", type=float, default=0.99)
    p.add_argument("--iou-threshold", type=float, default=0.04)
    p.add_argument("--seed", type=int, default=1, help="seed of the latent bank")
    p.add_argument("--num-visualized-units", type=int, default=8,
                   help="per layer, units whose top images go into the report")
    p.add_argument("--resolution", type=int, default=None,
                   help="segmentation resolution (default: the image size)")
    p.add_argument("--output", default=None,
                   help="report directory (default: <checkpoint dir>/../dissection_report)")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None):
    """Dissect, print the summary, write the report; return the ``DissectionResult``."""
    args = parse_args(argv)
    from gan_model import DCGAN

    from lightning_dissect import dissect
    from lightning_dissect.report import write_report
    from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter

    checkpoint = Path(args.checkpoint)
    model = DCGAN.load_from_checkpoint(checkpoint, map_location=args.device)
    hp = model.hparams
    segmenter = SyntheticSceneSegmenter(SceneWorld(hp.image_size), resolution=args.resolution)
    start = time.perf_counter()
    result = dissect(
        model.generator,
        args.layers,
        segmenter,
        latent_shape=(hp.latent_dim,),
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        threshold_mode=args.threshold_mode,
        quantile=args.quantile,
        iou_threshold=args.iou_threshold,
        seed=args.seed,
        num_visualized_units=args.num_visualized_units,
        metadata={"checkpoint": str(checkpoint), "hparams": {k: _plain(v) for k, v in hp.items()}},
    )
    seconds = time.perf_counter() - start
    result.print_summary()
    print(f"dissection: {seconds:.1f} s ({args.num_samples} samples, {args.threshold_mode} mode)")
    for name in args.layers:
        layer = result[name]
        print(f"  {name}: {layer.num_interpretable}/{layer.num_units} interpretable  "
              f"{layer.concept_counts()}")

    output = Path(args.output) if args.output else checkpoint.parent.parent / "dissection_report"
    output.mkdir(parents=True, exist_ok=True)
    result.to_json(output / "result.json", indent=1)
    report = write_report(result, output)  # JSON + HTML
    print(f"report: {report}")
    return result


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


if __name__ == "__main__":
    main()
