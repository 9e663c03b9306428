"""Cost of learning a causal unit set (α for one concept at one layer) against one dissection round.

Workload: the example's DCGAN generator (``examples/gan_model.py``, weights from ``--checkpoint``
or random), the :class:`~lightning_dissect.segmenters.SyntheticSceneSegmenter`, 32 x 32 images.

* **dissection round**: ``dissect()`` of the callback's default round — ``layer1`` ... ``layer4``,
  ``--round-samples`` latents (the callback's default 512), quantile mode, batch 64.
* **causal units**: ``causal_units()`` for ``--concept`` at ``--layer`` on ``--samples`` latents
  with the default settings (8 Adam steps), split into the optimisation (``sizes=[1]``,
  no pictures: the statistics pass and the steps) and the whole call (plus the comparison of 6
  sizes x 3 rankings x ablation/insertion and the pictures).

Prints the generator forward+backward passes per sample image counted by the call (the budget is
20), the times (best of ``--repeats``) and the ratios to the round, measured in this run.

Run ``python benchmarks/bench_causal.py [--checkpoint last.ckpt]``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]  # this checkout's package and the example

from gan_model import DCGAN, Generator  # noqa: E402

from lightning_dissect.dissection import dissect  # noqa: E402
from lightning_dissect.engine.latents import LatentBank  # noqa: E402
from lightning_dissect.interventions import causal_units  # noqa: E402
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter  # noqa: E402

LAYERS = ["layer1", "layer2", "layer3", "layer4"]
BUDGET = 20


def best_time(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="a train_gan.py checkpoint (default: random weights)")
    parser.add_argument("--layer", default="layer2")
    parser.add_argument("--concept", default="sky")
    parser.add_argument("--samples", type=int, default=200, help="latents alpha is learned on")
    parser.add_argument("--round-samples", type=int, default=512, help="latents of the dissection round")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        model = DCGAN.load_from_checkpoint(args.checkpoint, map_location="cpu")
        generator, shape = model.generator.eval(), (model.hparams.latent_dim,)
    else:
        torch.manual_seed(0)
        generator, shape = Generator(latent_dim=128, image_size=32).eval(), (128,)
    segmenter = SyntheticSceneSegmenter(SceneWorld(32))

    def round_():
        return dissect(generator, LAYERS, segmenter, latent_shape=shape, num_samples=args.round_samples,
                       batch_size=args.batch, progress=False)

    t_round, result = best_time(round_, args.repeats)
    bank = LatentBank(args.samples, shape, seed=7)
    iou = result.layers[args.layer]

    def optimise():
        return causal_units(generator, args.layer, args.concept, segmenter, bank, iou, sizes=[1], num_examples=0,
                            batch_size=args.batch)

    def whole():
        return causal_units(generator, args.layer, args.concept, segmenter, bank, iou, batch_size=args.batch)

    t_opt, found = best_time(optimise, args.repeats)
    t_all, _ = best_time(whole, args.repeats)
    units = getattr(generator, args.layer)[0].out_channels
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"weights: {args.checkpoint or 'random'}; layer {args.layer} ({units} units); concept {args.concept!r} "
          f"in {found.num_images_with_concept}/{found.num_images} images")
    print(f"forward+backward passes per sample image (optimisation): {found.passes_per_image} "
          f"(budget {BUDGET}; plus 1 forward statistics pass)")
    print(f"dissection round ({len(LAYERS)} layers, {args.round_samples} latents): {t_round:.2f} s")
    print(f"causal units, optimisation ({args.samples} latents):       {t_opt:.2f} s  = {t_opt / t_round:.2f} x round")
    print(f"causal units, with the comparison and pictures:   {t_all:.2f} s  = {t_all / t_round:.2f} x round")
    assert found.passes_per_image <= BUDGET


if __name__ == "__main__":
    main()
