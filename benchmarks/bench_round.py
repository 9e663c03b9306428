"""Cost of one dissection round relative to the forward passes it cannot avoid.

Workload: the example's DCGAN generator (``examples/gan_model.py``) with random weights, layers
``layer1`` ... ``layer4`` (256 + 128 + 64 + 32 = 480 units), 32 x 32 images, the
:class:`~lightning_dissect.segmenters.SyntheticSceneSegmenter` and 128 latents.

* **forward floor**: two generator passes (pass 1 thresholds, pass 2 counts) plus one segmenter
  pass over the 128 latents, with the same batch size; nothing else.
* ``dissect()`` in ``"quantile"`` mode and in ``"iqr"`` mode with ``num_levels=16``.

Prints the times (best of ``--repeats``) and the ratios ``dissect / floor`` measured in this run.
``--profile`` adds a cProfile top-10 (by internal time) of one ``dissect()`` call per mode.

Run ``python benchmarks/bench_round.py [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import platform
import pstats
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]  # this checkout's package and the example

from gan_model import Generator  # noqa: E402

from lightning_dissect.dissection import dissect  # noqa: E402
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter  # noqa: E402

LAYERS = ["layer1", "layer2", "layer3", "layer4"]
TARGETS = {"quantile": 4.0, "iqr": 8.0}


def best_time(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--levels", type=int, default=16, help="num_levels in iqr mode")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile top-10 per mode")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    generator = Generator(latent_dim=128, image_size=32).eval().to(device)
    world = SceneWorld(32)
    segmenter = SyntheticSceneSegmenter(world)
    latents = torch.randn(args.samples, 128, generator=torch.Generator().manual_seed(1)).to(device)
    units = sum(getattr(generator, name)[0].out_channels for name in LAYERS)

    def forward_floor():
        # two generator passes + one segmenter pass (the segmenter sees pass-2 images)
        with torch.inference_mode():
            for batch in latents.split(args.batch):
                generator(batch)
            for batch in latents.split(args.batch):
                segmenter(generator(batch))

    def run(mode):
        return dissect(
            generator,
            LAYERS,
            segmenter,
            latent_shape=(128,),
            num_samples=args.samples,
            batch_size=args.batch,
            threshold_mode=mode,
            num_levels=args.levels,
            progress=False,
        )

    print(f"torch {torch.__version__} | {platform.processor() or platform.machine()} | "
          f"threads {torch.get_num_threads()}")
    print(f"{units} units in {len(LAYERS)} layers, 32x32 images, {args.samples} latents, "
          f"batch {args.batch}, iqr num_levels={args.levels}; best of {args.repeats}")
    forward_floor()  # warm up
    t_floor = best_time(forward_floor, args.repeats)
    print(f"{'forward floor (2 G + 1 S)':<28}{t_floor * 1e3:9.1f} ms")
    for mode in ("quantile", "iqr"):
        run(mode)  # warm up
        t = best_time(lambda mode=mode: run(mode), args.repeats)
        ratio = t / t_floor
        verdict = "ok" if ratio <= TARGETS[mode] else "above target"
        print(f"{'dissect ' + mode:<28}{t * 1e3:9.1f} ms   {ratio:5.2f}x floor "
              f"(target <= {TARGETS[mode]:g}x: {verdict})")
    if args.profile:
        for mode in ("quantile", "iqr"):
            profiler = cProfile.Profile()
            profiler.enable()
            run(mode)
            profiler.disable()
            stream = io.StringIO()
            pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(10)
            print(f"\n--- cProfile, dissect {mode}: top 10 by internal time ---")
            lines = stream.getvalue().splitlines()
            start = next(i for i, line in enumerate(lines) if "ncalls" in line)
            print("\n".join(lines[start : start + 11]))


if __name__ == "__main__":
    main()
