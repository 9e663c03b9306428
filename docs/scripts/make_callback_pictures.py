"""Extract the callback's pictures from an example run's TensorBoard events into docs/images/.

python docs/scripts/make_callback_pictures.py runs/gan/lightning_logs/version_0 [layer]
"""

from __future__ import annotations

import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

OUT = Path(__file__).resolve().parents[1] / "images"


def main() -> None:
    log_dir = sys.argv[1]
    layer = sys.argv[2] if len(sys.argv) > 2 else "layer3"
    acc = EventAccumulator(log_dir, size_guidance={"images": 0})
    acc.Reload()
    for kind, name in (
        ("unit_strips", "unit_strips.png"),
        ("units_by_round", "units_by_round.png"),
        ("iou_heatmap", "iou_heatmap.png"),
    ):
        events = acc.Images(f"dissection/{layer}/{kind}")
        (OUT / name).write_bytes(events[-1].encoded_image_string)
        print(f"wrote {OUT / name} (step {events[-1].step})")


if __name__ == "__main__":
    main()
