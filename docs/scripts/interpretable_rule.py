"""The measurements behind the default interpretability rule (docs/reading-results.md, section 1).

A generator painted from the synthetic world's own labels (``tests/helpers/painting.py``,
``LabelPaintedGenerator``) has, for each of the 15 concepts the world draws, four units: the
concept's own mask in each image (a perfect detector), another image's mask of the concept, a
fixed map of where the concept usually is, and noise. Only the first kind carries information about
the image. For several bank sizes and seeds, in both threshold modes, the script counts how often
each kind of unit is called interpretable by each rule, and how the excess over chance and the
swap test's p-value of the units that know nothing of their image are distributed.

    python docs/scripts/interpretable_rule.py [--seeds 10] [--sizes 128 512 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lightning_dissect import dissect  # noqa: E402
from lightning_dissect.interpretability import InterpretabilityRule  # noqa: E402
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter  # noqa: E402
from tests.helpers.painting import LABEL_UNIT_KINDS, LabelPaintedGenerator  # noqa: E402

CONCEPTS = ("sky", "cloud", "sun", "mountain", "grass", "soil", "water", "road", "fence", "trunk", "foliage",
            "wall", "roof", "window", "door")
MODES = {"quantile 0.5": {"threshold_mode": "quantile", "quantile": 0.5},
         "iqr, 32 levels": {"threshold_mode": "iqr", "num_levels": 32}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512, 1000])
    args = parser.parse_args()
    torch.manual_seed(0)
    world = SceneWorld(32)
    generator = LabelPaintedGenerator(world, CONCEPTS)
    segmenter = SyntheticSceneSegmenter(world)
    rules = {
        "significant (default: excess ≥ 0.05, p ≤ 0.001)": InterpretabilityRule(),
        "significant with p ≤ 0.01": InterpretabilityRule(max_p_value=0.01),
        "p ≤ 0.001 alone": InterpretabilityRule(min_excess=0.0),
        "excess ≥ 0.05 alone": InterpretabilityRule(max_p_value=1.0),
        "chance_ratio 2×": InterpretabilityRule("chance_ratio"),
        "paper (IoU > 0.04)": InterpretabilityRule("paper"),
    }
    passed = {}  # (mode, size, rule, kind) -> [passed, total]
    null_excess, null_p = {}, {}
    started = time.time()
    for mode, options in MODES.items():
        for size in args.sizes:
            for seed in range(1, args.seeds + 1):
                result = dissect(generator, ["units"], segmenter, latent_shape=(2,), num_samples=size, batch_size=128,
                                 seed=seed, progress=False, **options)
                iqr = mode.startswith("iqr")
                for u in result["units"].units:
                    kind = LABEL_UNIT_KINDS[u.unit % len(LABEL_UNIT_KINDS)]
                    for name, rule in rules.items():
                        if iqr:
                            rule = InterpretabilityRule(**{**rule.__dict__, "iqr_threshold": 0.01})
                        ok = rule(u.iou, u.chance_iou, u.iou_iqr, p_value=u.p_value)
                        cell = passed.setdefault((mode, size, name, kind), [0, 0])
                        cell[0] += int(ok)
                        cell[1] += 1
                    if kind != "own":
                        null_excess.setdefault((mode, size), []).append(u.excess)
                        null_p.setdefault((mode, size), []).append(u.p_value)
    print(f"<!-- {time.time() - started:.0f} s -->")
    print("| mode | latents | rule | own mask | another image's mask | fixed map | noise |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for mode in MODES:
        for size in args.sizes:
            for name in rules:
                cells = []
                for kind in LABEL_UNIT_KINDS:
                    ok, total = passed[(mode, size, name, kind)]
                    cells.append(f"{ok}/{total}")
                print(f"| {mode} | {size} | {name} | " + " | ".join(cells) + " |")
    print()
    print("| mode | latents | units that know nothing of their image | excess: 99th percentile | max "
          "| p ≤ 0.001 | p ≤ 0.01 | p ≤ 0.05 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, values in null_excess.items():
        excess = torch.tensor(values, dtype=torch.float64)
        p = torch.tensor(null_p[key], dtype=torch.float64)
        print(f"| {key[0]} | {key[1]} | {len(values)} | {float(excess.quantile(0.99)):.3f} "
              f"| {float(excess.max()):.3f} "
              f"| {100 * float((p <= 0.001).double().mean()):.1f} % "
              f"| {100 * float((p <= 0.01).double().mean()):.1f} % "
              f"| {100 * float((p <= 0.05).double().mean()):.1f} % |")


if __name__ == "__main__":
    main()
