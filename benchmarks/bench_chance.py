"""What the p-values against chance add to a dissection round.

Workload of ``bench_round.py``: the example's DCGAN generator (``examples/gan_model.py``) with
random weights, layers ``layer1`` ... ``layer4`` (480 units), 32 x 32 images, the synthetic
segmenter, 128 latents (batch 32). Three settings, timed interleaved (best of ``--repeats``):

* ``no chance``: ``chance_baseline=False`` (``interpretable="paper"``);
* ``chance``: the chance baseline without sample groups (the counts of earlier releases);
* ``chance + groups``: this release's default: the baseline with its counts kept per sample group
  (``chance_groups=12``) and every unit's swap-test p-value.

Prints the times and the ratios measured in this run, per threshold mode.

    python benchmarks/bench_chance.py [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]

from gan_model import Generator  # noqa: E402

import lightning_dissect.dissection as dissection  # noqa: E402
from lightning_dissect.dissection import dissect  # noqa: E402
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter  # noqa: E402

LAYERS = ["layer1", "layer2", "layer3", "layer4"]
_COUNT_PASS = dissection.count_pass


def _without_groups(*args, **kwargs):
    kwargs["chance_groups"] = None
    return _COUNT_PASS(*args, **kwargs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator = Generator().eval()
    segmenter = SyntheticSceneSegmenter(SceneWorld(32))
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for mode, extra in (("quantile", {}), ("iqr", {"num_levels": 16})):
        common = dict(latent_shape=(generator.latent_dim,), num_samples=args.samples, batch_size=args.batch,
                      progress=False, threshold_mode=mode, **extra)
        settings = {
            "no chance": dict(chance_baseline=False, interpretable="paper", **common),
            "chance": dict(interpretable="chance_ratio", **common),
            "chance + groups": dict(common),
        }
        best = dict.fromkeys(settings, float("inf"))
        for _ in range(args.repeats):
            for name, options in settings.items():
                dissection.count_pass = _without_groups if name == "chance" else _COUNT_PASS
                start = time.perf_counter()
                dissect(generator, LAYERS, segmenter, **options)
                best[name] = min(best[name], time.perf_counter() - start)
        dissection.count_pass = _COUNT_PASS
        print(f"{mode}: " + ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in best.items())
              + f"; groups add {100 * (best['chance + groups'] / best['chance'] - 1):+.1f} % to a round with the "
              f"chance baseline ({100 * (best['chance + groups'] / best['no chance'] - 1):+.1f} % to one without)")


if __name__ == "__main__":
    main()
