"""The picture of the metrics' ``.plot()`` in docs/metrics.md.

A hand-built generator whose unit ``k`` paints concept ``k`` of the synthetic world
(``tests/helpers/painting.py``, plus one unit of pure noise) is measured with the three metrics;
each draws itself into one panel of a figure (``ax=``).

    python docs/scripts/make_metric_plots.py [docs/images/metric_plots.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lightning_dissect.engine.hooks import capture_layers  # noqa: E402
from lightning_dissect.metrics import ConceptPixelFraction, UnitConceptIoU, UnitQuantiles  # noqa: E402
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter  # noqa: E402
from tests.helpers.painting import PaintingGenerator  # noqa: E402

CONCEPTS = ["tree", "house", "water", "road", "cloud", "mountain"]


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "images" / "metric_plots.png"
    world = SceneWorld(32)
    generator = PaintingGenerator(world, CONCEPTS, random_unit=True)
    segmenter = SyntheticSceneSegmenter(world)
    names = list(segmenter.vocabulary.names)
    latents = torch.randn(256, generator.latent_dim, generator=torch.Generator().manual_seed(1))
    batches = []
    with torch.inference_mode():
        for z in latents.split(64):
            with capture_layers(generator, ["layout"]) as maps:
                images = generator(z)
            batches.append((maps["layout"].float(), segmenter(images)))
    units = generator.num_units
    quantiles = UnitQuantiles(units, quantiles=[0.5, 0.9, 0.99])
    fractions = ConceptPixelFraction(len(names), ignore_index=0)
    for acts, seg in batches:
        quantiles.update(acts, size=tuple(seg.shape[-2:]))
        fractions.update(seg)
    iou = UnitConceptIoU(units, len(names), thresholds=quantiles.quantile(0.99), ignore_index=0)
    for acts, seg in batches:
        iou.update(acts, seg)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), gridspec_kw={"width_ratios": [1.1, 1.2, 1]})
    iou.plot(ax=axes[0], concept_names=names, max_concepts=8)
    quantiles.plot(ax=axes[1])
    fractions.plot(ax=axes[2], concept_names=names, max_concepts=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print("wrote", out)


if __name__ == "__main__":
    main()
