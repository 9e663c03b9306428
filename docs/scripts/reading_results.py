"""Measure every number of docs/reading-results.md ("How to read the numbers") on the example generator.

Train the example generator first (about 5 minutes on 2 CPU cores), then run this script from the
repository root (6 to 11 minutes on 2 CPU cores shared with other work)::

    python examples/train_gan.py --max-epochs 2 --max-time none --num-train 4096 --seed 0 \
        --default-root-dir /tmp/run_c
    python docs/scripts/reading_results.py \
        --checkpoint /tmp/run_c/lightning_logs/version_0/checkpoints/last.ckpt --json /tmp/reading.json

It prints the page's tables as Markdown. Sections:

1. IoU against chance IoU per unit (quantile mode, 1000 latents, bank seed 1);
2. interpretable units per layer over several bank seeds for 128 / 512 / 2000 latents;
3. quantile mode against IQR mode (``num_levels`` 16 and 64) on the same 1000 latents;
4. what each layer shows (size, interpretable units, concepts) and its ``named_modules()``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

from gan_model import DCGAN  # noqa: E402

from lightning_dissect import dissect  # noqa: E402
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter  # noqa: E402

LAYERS = ["layer1", "layer2", "layer3", "layer4"]
RATIO_BINS = [(0.0, 1.0, "< 1× (below chance)"), (1.0, 1.5, "1–1.5×"), (1.5, 2.0, "1.5–2×"),
              (2.0, 4.0, "2–4×"), (4.0, float("inf"), "≥ 4×")]


def ratio(u) -> float:
    """IoU / chance IoU of a unit (inf when chance is 0)."""
    return u.iou / u.chance_iou if u.chance_iou > 0 else float("inf")


def med(values) -> str:
    values = list(values)
    return f"{statistics.median(values):.3f}" if values else "–"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def concept_coverage(generator, latent_dim: int, segmenter, n: int = 1000, seed: int = 1) -> dict[str, float]:
    """Fraction of all pixels each concept covers in ``n`` generated images."""
    names = segmenter.vocabulary.names
    counts = torch.zeros(len(names), dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    generator.eval()
    with torch.inference_mode():
        for start in range(0, n, 100):
            z = torch.randn(min(100, n - start), latent_dim, generator=g)
            labels = segmenter(generator(z))
            counts += torch.bincount(labels.flatten(), minlength=len(names)).double()
    return {name: float(c / counts.sum()) for name, c in zip(names, counts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="the example's last.ckpt")
    parser.add_argument("--seeds", type=int, default=5, help="bank seeds for 128 and 512 latents")
    parser.add_argument("--seeds-2000", type=int, default=3, help="bank seeds for 2000 latents")
    parser.add_argument("--json", default=None, help="also write every number here")
    args = parser.parse_args()
    torch.manual_seed(0)
    t0 = time.time()
    model = DCGAN.load_from_checkpoint(args.checkpoint, map_location="cpu")
    generator, latent_dim = model.generator, int(model.hparams.latent_dim)
    segmenter = SyntheticSceneSegmenter(SceneWorld(32))
    # the page's tables measure the papers' fixed cut, to show what it lets through
    common = dict(latent_shape=(latent_dim,), batch_size=100, progress=False, interpretable="paper")
    out: dict = {"checkpoint": args.checkpoint}

    def run(**kw):
        return dissect(generator, LAYERS, segmenter, **common, **kw)

    coverage = concept_coverage(generator, latent_dim, segmenter)
    out["coverage"] = coverage

    # ---- 1. IoU vs chance IoU -------------------------------------------------------------------
    base = run(num_samples=1000, seed=1)
    print("## 1. IoU against chance IoU (quantile 0.99, 1000 latents, seed 1)\n")
    rows, bins_rows, s1 = [], [], {}
    for name in LAYERS:
        layer = base[name]
        good = layer.interpretable_units()
        r = [ratio(u) for u in good]
        rows.append([name, layer.num_units, len(good), med(u.iou for u in good), med(u.chance_iou for u in good),
                     med(u.iou - u.chance_iou for u in good), med(r) if r else "–",
                     sum(1 for x in r if x < 2.0)])
        bins_rows.append([name] + [sum(1 for x in r if lo <= x < hi) for lo, hi, _ in RATIO_BINS])
        s1[name] = {"num_units": layer.num_units, "interpretable": len(good),
                    "units": [{"unit": u.unit, "label": u.label, "iou": u.iou, "chance_iou": u.chance_iou}
                              for u in good]}
    print(table(["layer", "units", "interpretable", "median IoU", "median chance IoU", "median IoU − chance",
                 "median IoU / chance", "interpretable with IoU < 2× chance"], rows))
    print()
    print(table(["layer"] + [label for *_, label in RATIO_BINS], bins_rows))
    print()
    # per concept, all layers together
    by_concept: dict[str, list] = {}
    for name in LAYERS:
        for u in base[name].interpretable_units():
            by_concept.setdefault(u.label, []).append(u)
    crow = []
    for label, units in sorted(by_concept.items(), key=lambda kv: -len(kv[1])):
        r = [ratio(u) for u in units]
        crow.append([label, f"{100 * coverage[label]:.1f}%", len(units), med(u.iou for u in units),
                     med(u.chance_iou for u in units), med(r), sum(1 for x in r if x < 2.0)])
    print(table(["concept", "pixels covered", "interpretable units", "median IoU", "median chance IoU",
                 "median IoU / chance", "units < 2× chance"], crow))
    print()
    # the rule applied: how many units survive "IoU > 0.04 and IoU >= 2x chance"
    srow = []
    for name in LAYERS:
        good = base[name].interpretable_units()
        srow.append([name, len(good), sum(1 for u in good if ratio(u) >= 2.0),
                     sum(1 for u in good if u.iou - u.chance_iou >= 0.05)])
    print(table(["layer", "IoU > 0.04", "… and IoU ≥ 2× chance", "… and IoU − chance ≥ 0.05"], srow))
    print()
    out["section1"] = s1
    print(f"[{time.time() - t0:.0f} s]\n", file=sys.stderr)

    # ---- 2. sample count vs stability -----------------------------------------------------------
    print("## 2. Interpretable units per layer over bank seeds\n")
    s2: dict = {}
    rows = []
    for n, seeds in ((128, args.seeds), (512, args.seeds), (2000, args.seeds_2000)):
        per_layer = {name: [] for name in LAYERS}
        for seed in range(1, seeds + 1):
            res = run(num_samples=n, seed=seed, chance_baseline=False)
            for name in LAYERS:
                per_layer[name].append(res[name].num_interpretable)
        s2[n] = per_layer
        for name in LAYERS:
            v = per_layer[name]
            rows.append([n, seeds, name, " ".join(map(str, v)), f"{min(v)}–{max(v)}", f"{statistics.mean(v):.1f}",
                         f"{statistics.stdev(v):.1f}" if len(v) > 1 else "–"])
        print(f"[{n} latents: {time.time() - t0:.0f} s]", file=sys.stderr)
    print(table(["latents", "seeds", "layer", "counts (seed 1, 2, …)", "min–max", "mean", "std"], rows))
    print()
    out["section2"] = {str(k): v for k, v in s2.items()}

    # ---- 3. quantile vs IQR ---------------------------------------------------------------------
    print("## 3. Quantile mode against IQR mode (1000 latents, seed 1)\n")
    modes = {"quantile 0.99": base,
             "iqr, 16 levels": run(num_samples=1000, seed=1, threshold_mode="iqr", num_levels=16),
             "iqr, 64 levels": run(num_samples=1000, seed=1, threshold_mode="iqr", num_levels=64)}
    print(f"[modes: {time.time() - t0:.0f} s]", file=sys.stderr)
    rows, s3 = [], {}
    for mode, res in modes.items():
        counts = [res[name].num_interpretable for name in LAYERS]
        good = [u for name in LAYERS for u in res[name].interpretable_units()]
        cov = [coverage[u.label] for u in good]
        rows.append([mode, *counts, sum(counts), len({u.label for u in good}),
                     f"{100 * statistics.mean(cov):.1f}%" if cov else "–", med(u.iou for u in good),
                     sum(1 for u in good if ratio(u) < 2.0)])
        s3[mode] = {name: res[name].concept_counts() for name in LAYERS}
    print(table(["mode", *LAYERS, "total", "distinct concepts", "mean pixel coverage of the labels",
                 "median IoU", "units < 2× chance"], rows))
    print()
    concepts = sorted({c for m in s3.values() for lc in m.values() for c in lc},
                      key=lambda c: -coverage[c])
    rows = []
    for c in concepts:
        row = [c, f"{100 * coverage[c]:.1f}%"]
        for res in modes.values():
            units = [u for name in LAYERS for u in res[name].interpretable_units() if u.label == c]
            row.append(f"{len(units)} ({med(u.iou for u in units)} / {med(u.chance_iou for u in units)})"
                       if units else "0")
        rows.append(row)
    print(table(["concept", "pixels covered", *[f"{m}: units (median IoU / chance)" for m in modes]], rows))
    print()
    print(f"unlabeled pixels: {100 * coverage['unlabeled']:.1f}%\n")
    out["section3"] = s3

    # ---- 4. layers ------------------------------------------------------------------------------
    print("## 4. Layers\n")
    print("```text")
    for name, module in generator.named_modules():
        if name:
            print(f"{name:12s} {type(module).__name__}")
    print("```\n")
    rows = []
    with torch.inference_mode():
        x = torch.randn(1, latent_dim)
        shapes = {}
        hooks = [getattr(generator, n).register_forward_hook(
            lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:]))) for n in LAYERS]
        generator(x)
        for h in hooks:
            h.remove()
    for name in LAYERS:
        rows.append([name, "×".join(map(str, shapes[name])), base[name].num_interpretable,
                     f"{base[name].num_interpretable / base[name].num_units:.0%}",
                     ", ".join(f"{c} {k}" for c, k in base[name].concept_counts().items()) or "–",
                     ", ".join(f"{c} {k}" for c, k in modes["iqr, 16 levels"][name].concept_counts().items()) or "–"])
    print(table(["layer", "output (C×H×W)", "interpretable (quantile)", "share",
                 "concepts (quantile)", "concepts (iqr, 16 levels)"], rows))
    print()
    print(f"total time {time.time() - t0:.0f} s", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
