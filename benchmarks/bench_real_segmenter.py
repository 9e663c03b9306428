"""What a real segmenter costs per dissection round: a SegFormer-b0-sized model with random weights.

Workload: ``SegformerForSemanticSegmentation`` built from a config of SegFormer-b0's sizes
(hidden sizes 32/64/160/256, depths 2/2/2/2, decoder 256, 150 ADE20K classes, ~3.7 M parameters),
saved with ``save_pretrained`` and loaded offline with
:meth:`~lightning_dissect.segmenters.TransformersSegmenter.from_pretrained`. Random weights cost
the same as trained ones. For each model input size (``--input-sizes``, the image is resized to
it; ADE20K models were trained at 512) and segmentation size (``--resolutions``), it times the
segmenter on ``--images`` images of ``--image-size`` pixels in batches of ``--batch-size`` and
reports seconds per image, the round's segmentation time for ``--num-samples`` latents (a round
segments every latent once), and the peak resident memory growth of the process.

Run ``python benchmarks/bench_real_segmenter.py`` (``--small`` uses a quarter-width config when
b0 is too slow on a machine).
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_dissect.segmenters import TransformersSegmenter  # noqa: E402
from lightning_dissect.segmenters.transformers_adapter import ade20k_categories  # noqa: E402

B0 = dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 5, 8],
          decoder_hidden_size=256)
SMALL = dict(hidden_sizes=[8, 16, 40, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1],
             decoder_hidden_size=64)


def save_random_segformer(folder: str, sizes: dict) -> int:
    """Save a random-weight ADE20K-labelled SegFormer in ``folder``; returns its parameter count."""
    import transformers

    names = list(ade20k_categories())
    config = transformers.SegformerConfig(num_labels=len(names), id2label=dict(enumerate(names)),
                                          label2id={n: i for i, n in enumerate(names)}, **sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.SegformerForSemanticSegmentation(config)
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input-sizes", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--small", action="store_true", help="a quarter-width config instead of b0's sizes")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    sizes = SMALL if args.small else B0
    with tempfile.TemporaryDirectory() as folder:
        params = save_random_segformer(folder, sizes)
        base_rss = max_rss_mib()
        print(f"SegFormer ({'small' if args.small else 'b0 sizes'}, random weights, {params / 1e6:.1f} M params); "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{platform.processor() or platform.machine()}")
        print(f"{args.images} images of {args.image_size}px, batch {args.batch_size}; "
              f"round = {args.num_samples} latents")
        print(f"{'input':>6} {'labels':>7} {'s/image':>8} {'s/round':>8} {'peak RSS +MiB':>14}")
        g = torch.Generator().manual_seed(0)
        images = torch.rand(args.images, 3, args.image_size, args.image_size, generator=g) * 2 - 1
        for input_size in args.input_sizes:
            for resolution in args.resolutions:
                seg = TransformersSegmenter.from_pretrained(folder, input_size=input_size, resolution=resolution,
                                                            batch_size=args.batch_size)
                seg(images[: min(2, args.images)])  # warm-up
                start = time.perf_counter()
                labels = seg(images)
                per_image = (time.perf_counter() - start) / args.images
                assert labels.shape == (args.images, resolution, resolution)
                print(f"{input_size:>6} {resolution:>7} {per_image:>8.3f} {per_image * args.num_samples:>8.0f} "
                      f"{max_rss_mib() - base_rss:>14.0f}")


if __name__ == "__main__":
    main()
