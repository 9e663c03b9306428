"""The README's picture: top units of a trained example generator, their top images, masks overlaid.

python docs/scripts/make_readme_strips.py runs/gan/lightning_logs/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))

from gan_model import DCGAN  # noqa: E402

from lightning_dissect import LatentBank, dissect  # noqa: E402
from lightning_dissect.dissection.strips import render_unit_images  # noqa: E402
from lightning_dissect.segmenters import SyntheticSceneSegmenter  # noqa: E402
from lightning_dissect.visual.visualize import encode_png, image_strip  # noqa: E402


def main() -> None:
    model = DCGAN.load_from_checkpoint(sys.argv[1], map_location="cpu")
    layer = sys.argv[2] if len(sys.argv) > 2 else "layer3"
    segmenter = SyntheticSceneSegmenter(model.hparams.image_size)
    result = dissect(model.generator, [layer], segmenter, latent_shape=(model.hparams.latent_dim,),
                     num_samples=1000, batch_size=100, threshold_mode="iqr", top_k=6, progress=False)
    # one unit per concept, best IoU first, so the picture shows several concepts
    chosen, seen = [], set()
    for unit in result[layer].interpretable_units():
        if unit.label not in seen:
            chosen.append(unit)
            seen.add(unit.label)
    chosen = chosen[:6]
    bank = LatentBank(1000, (model.hparams.latent_dim,), seed=1)
    images = render_unit_images(model.generator, result, bank, segmenter.value_range,
                                units={layer: [u.unit for u in chosen]}, scale=3)[layer]
    rows = [image_strip(list(images[u.unit]), gap=3) for u in chosen]
    gap = torch.full((3, 6, rows[0].shape[2]), 255, dtype=torch.uint8)
    grid = torch.cat([t for row in rows for t in (row, gap)][:-1], 1)
    out = ROOT / "docs" / "images" / "unit_strips.png"
    out.write_bytes(encode_png(grid))
    for i, u in enumerate(chosen):
        print(f"row {i + 1}: {layer} unit {u.unit} = {u.label} (IoU {u.iou:.2f}, chance {u.chance_iou:.2f}, "
              f"excess {u.excess:.2f}, p {u.p_value:.2g})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
