"""Redraw the callback's TensorBoard pictures for the docs from an example run.

Uses the run's round JSON files (emergence picture) and its final checkpoint (unit strips and IoU
heatmap of the last round, recomputed with the callback's settings), through the same functions the
callback logs with.

    python docs/scripts/make_callback_pictures.py runs/gan/lightning_logs/version_0 [layer]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
OUT = ROOT / "docs" / "images"

from gan_model import DCGAN  # noqa: E402

from lightning_dissect import dissect, load_history  # noqa: E402
from lightning_dissect.loggers.rounds import round_entry  # noqa: E402
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter  # noqa: E402
from lightning_dissect.visual.round_pictures import (  # noqa: E402
    iou_heatmap_image,
    segmenter_palette,
    unit_strip_grid,
    units_by_round_image,
)
from lightning_dissect.visual.visualize import encode_png  # noqa: E402


def main() -> None:
    log_dir = Path(sys.argv[1])
    layer = sys.argv[2] if len(sys.argv) > 2 else "layer3"
    model = DCGAN.load_from_checkpoint(log_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    segmenter = SyntheticSceneSegmenter(SceneWorld(model.hparams.image_size))
    entries = [round_entry(r, r.metadata["global_step"], 0) for r in load_history(log_dir)]
    palette = segmenter_palette(segmenter)
    (OUT / "units_by_round.png").write_bytes(encode_png(units_by_round_image(entries, layer, palette)))
    result = dissect(model.generator, [layer], segmenter, latent_shape=(model.hparams.latent_dim,),
                     num_samples=128, batch_size=64, threshold_mode="iqr", num_levels=16,
                     num_visualized_units=8, top_k=6, progress=False)
    shown = [u.unit for u in result[layer].top_units(8)]
    (OUT / "unit_strips_tensorboard.png").write_bytes(encode_png(unit_strip_grid(result, layer, shown)))
    picture = iou_heatmap_image(result[layer], segmenter.vocabulary.names, result[layer].top_units(8))
    if picture is not None:
        (OUT / "iou_heatmap.png").write_bytes(encode_png(picture))
    print(result.markdown_table(layer, top=8))
    print("wrote", [p.name for p in OUT.glob("*.png")])


if __name__ == "__main__":
    main()
