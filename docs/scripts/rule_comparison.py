"""The default rule against the papers' fixed cut on the example generator (docs/reading-results.md, section 5).

Dissects a checkpoint of the example GAN at ``layer1`` ... ``layer4`` (quantile mode, 1,000
latents, bank seed 1), prints per layer the interpretable units under the default rule
(``"significant"``), the papers' fixed cut (``"paper"``) and the earlier ratio rule
(``"chance_ratio"``) as a Markdown table, then draws the strips of a few units on which the
default rule and the fixed cut disagree (``docs/images/rule_disagreements.png``; each row's header
gives the unit's IoU, chance IoU and p-value, and says "not interpretable" under the default rule).

    python docs/scripts/rule_comparison.py CHECKPOINT [--out docs/images/rule_disagreements.png] [--units 6]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]

from gan_model import DCGAN  # noqa: E402

from lightning_dissect import dissect  # noqa: E402
from lightning_dissect.dissection.strips import render_unit_images  # noqa: E402
from lightning_dissect.engine.latents import LatentBank  # noqa: E402
from lightning_dissect.interpretability import InterpretabilityRule  # noqa: E402
from lightning_dissect.segmenters import SyntheticSceneSegmenter  # noqa: E402
from lightning_dissect.visual.round_pictures import unit_strip_grid  # noqa: E402
from lightning_dissect.visual.visualize import encode_png  # noqa: E402

LAYERS = ["layer1", "layer2", "layer3", "layer4"]
RULES = ("significant", "paper", "chance_ratio")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "rule_disagreements.png"))
    parser.add_argument("--units", type=int, default=6)
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    model = DCGAN.load_from_checkpoint(args.checkpoint, map_location="cpu")
    segmenter = SyntheticSceneSegmenter(model.hparams.image_size)
    latent_shape = (model.hparams.latent_dim,)
    result = dissect(model.generator, LAYERS, segmenter, latent_shape=latent_shape, num_samples=args.samples,
                     batch_size=100, top_k=6, progress=False)
    rules = {name: InterpretabilityRule(name) for name in RULES}
    print("| layer | units | `significant` (default) | `paper` | `chance_ratio` | paper only | default only |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    disagree = []
    for name in LAYERS:
        units = result[name].units
        badges = {r: [rule(u.iou, u.chance_iou, u.iou_iqr, p_value=u.p_value) for u in units]
                  for r, rule in rules.items()}
        paper_only = [u for u, d, p in zip(units, badges["significant"], badges["paper"]) if p and not d]
        default_only = [u for u, d, p in zip(units, badges["significant"], badges["paper"]) if d and not p]
        disagree += [(name, u) for u in paper_only + default_only]
        print(f"| {name} | {len(units)} | {sum(badges['significant'])} | {sum(badges['paper'])} "
              f"| {sum(badges['chance_ratio'])} | {len(paper_only)} | {len(default_only)} |")
    print()
    # the disagreements with the highest IoU, one per (layer, label) so the picture shows several concepts
    chosen, seen = [], set()
    for name, u in sorted(disagree, key=lambda item: -item[1].iou):
        if (name, u.label) not in seen:
            chosen.append((name, u))
            seen.add((name, u.label))
    chosen = chosen[: args.units]
    for name, u in chosen:
        print(f"- {name} unit {u.unit}: {u.label}, IoU {u.iou:.3f}, chance {u.chance_iou:.3f}, excess {u.excess:.3f}, "
              f"p {u.p_value:.2g}: paper {'yes' if rules['paper'](u.iou, u.chance_iou) else 'no'}, "
              f"default {'yes' if u.interpretable else 'no'}")
    if not chosen:
        print("the two rules agree on every unit")
        return
    bank = LatentBank(args.samples, latent_shape, seed=1)
    wanted: dict[str, list[int]] = {}
    for name, u in chosen:
        wanted.setdefault(name, []).append(u.unit)
    result.unit_images = render_unit_images(model.generator, result, bank, segmenter.value_range, units=wanted,
                                            scale=2)
    import torch

    grids = [unit_strip_grid(result, name, [u.unit]) for name, u in chosen]
    width = max(g.shape[2] for g in grids)
    padded = [torch.nn.functional.pad(g, (0, width - g.shape[2]), value=255) for g in grids]
    Path(args.out).write_bytes(encode_png(torch.cat(padded, 1)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
