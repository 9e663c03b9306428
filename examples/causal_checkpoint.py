"""Causal unit sets of the example GAN: α-ranked against IoU-ranked against random units.

Example::

    python examples/causal_checkpoint.py \\
        --checkpoint runs/gan/lightning_logs/version_0/checkpoints/last.ckpt \\
        --layer layer2 --concepts sky grass cloud --output runs/gan/causal

Loads the :class:`gan_model.DCGAN` of a ``train_gan.py`` checkpoint, dissects one layer (its IoU
ranking), learns α for each concept with :func:`lightning_dissect.interventions.causal_units`,
prints per concept the share of the concept left after ablating the top-n units by α, by IoU and
n random units, and writes ``causal.json`` + ``causal.html`` (:func:`write_causal_report`).
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
    p.add_argument("--layer", default="layer2", help="the generator layer (default layer2)")
    p.add_argument("--concepts", nargs="+", default=["sky", "grass", "cloud"])
    p.add_argument("--num-samples", type=int, default=1000, help="latents of the dissection (IoU)")
    p.add_argument("--causal-samples", type=int, default=200, help="latents alpha is learned on")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=1, help="seed of the latent bank")
    p.add_argument("--output", default=None, help="report directory (default: <checkpoint dir>/../causal)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None):
    """Dissect, learn α per concept, print the tables, write the report; return the results."""
    args = parse_args(argv)
    from gan_model import DCGAN

    from lightning_dissect import LatentBank, dissect
    from lightning_dissect.interventions import causal_units
    from lightning_dissect.report import write_causal_report
    from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter

    checkpoint = Path(args.checkpoint)
    model = DCGAN.load_from_checkpoint(checkpoint, map_location="cpu")
    shape = (model.hparams.latent_dim,)
    segmenter = SyntheticSceneSegmenter(SceneWorld(model.hparams.image_size))
    start = time.perf_counter()
    result = dissect(model.generator, [args.layer], segmenter, latent_shape=shape, num_samples=args.num_samples,
                     batch_size=args.batch_size, seed=args.seed, progress=False)
    print(f"dissection of {args.layer}: {time.perf_counter() - start:.1f} s ({args.num_samples} samples)")
    bank = LatentBank(args.causal_samples, shape, args.seed)
    results = []
    for concept in args.concepts:
        start = time.perf_counter()
        found = causal_units(model.generator, args.layer, concept, segmenter, bank, result.layers[args.layer],
                             steps=args.steps, batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        results.append(found)
        print(f"\n{concept} in {args.layer}: baseline {found.baseline:.2%} of the pixels, in "
              f"{found.num_images_with_concept}/{found.num_images} images; {seconds:.1f} s, "
              f"{found.passes_per_image} forward+backward passes per image")
        print(found.table())
        print("top units by alpha:", found.top_units(8), " by IoU:", found.comparison[-1].units_iou[:8])
    output = Path(args.output) if args.output else checkpoint.parent.parent / "causal"
    page = write_causal_report(results, output)
    print(f"\nreport: {page}")
    return results


if __name__ == "__main__":
    main()
