"""End-to-end dissection vs the bare forwards (a ProGAN-sized workload; meant for a GPU).

A ProGAN-shaped generator with random weights (latent 512, 4×4 → 256×256; ``layer4`` = 512 units
at 8×8) and a stand-in segmenter (a small conv net giving 150-concept labels at 64×64). Measured in
one run:

* (A) the floor: two generator passes over the latents plus one segmenter pass — what any two-pass
  dissection must run;
* (B) ``dissect(G, ["layer4"], segmenter, num_samples=N)``: both passes with the statistics
  (upsampling to 64×64, quantile histogram, unit–concept counts, chance baseline, top-k).

Target: B / A ≤ 1.25 on one GPU with N = 10,000.

    python benchmarks/bench_end_to_end.py --device cuda --num-samples 10000
    python benchmarks/bench_end_to_end.py --device cpu --num-samples 64 --batch-size 16   # smoke
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from lightning_dissect import ConceptVocabulary, dissect


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2),
        nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.2),
    )


class ProGANShaped(nn.Module):
    """Random-weight generator with ProGAN-256's shapes (layer names layer1..layer7)."""

    def __init__(self, latent_dim: int = 512) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, 512, 4), nn.LeakyReLU(0.2),
            nn.Conv2d(512, 512, 3, padding=1), nn.LeakyReLU(0.2),
        )  # 4x4
        widths = [512, 512, 512, 256, 128, 64, 32]
        self.layer2 = block(widths[0], widths[1])  # 8x8
        self.layer3 = block(widths[1], widths[2])  # 16x16
        self.layer4 = block(widths[2], widths[3])  # 32x32
        self.layer5 = block(widths[3], widths[4])  # 64x64
        self.layer6 = block(widths[4], widths[5])  # 128x128
        self.layer7 = block(widths[5], widths[6])  # 256x256
        self.to_rgb = nn.Sequential(nn.Conv2d(widths[6], 3, 1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.layer1(z.view(z.shape[0], -1, 1, 1))
        for layer in (self.layer2, self.layer3, self.layer4, self.layer5, self.layer6, self.layer7):
            x = layer(x)
        return self.to_rgb(x)


class StandInSegmenter(nn.Module):
    """A small conv net: (B, 3, 256, 256) in [-1, 1] → labels (B, 64, 64) over 150 concepts."""

    def __init__(self, num_concepts: int = 150, size: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.AdaptiveAvgPool2d(size),
            nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
            nn.Conv2d(128, num_concepts, 1),
        )
        names = tuple(f"concept{i}" for i in range(num_concepts))
        categories = ("none",) + ("object",) * (num_concepts - 1)
        self.vocabulary = ConceptVocabulary(("unlabeled",) + names[1:], categories)
        self.value_range = (-1.0, 1.0)
        self.multilabel = False

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).argmax(1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--layer", default="layer2", help="layer2 = 512 units at 8x8")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    gen = ProGANShaped().to(device).eval()
    seg = StandInSegmenter().to(device).eval()
    g = torch.Generator().manual_seed(1)
    n, bs = args.num_samples, args.batch_size

    def floor() -> float:
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            for _ in range(2):  # two generator passes
                for i in range(0, n, bs):
                    z = torch.randn(min(bs, n - i), 512, generator=g).to(device)
                    images = gen(z)
                    if _ == 0:
                        seg(images)  # one segmenter pass
        sync(device)
        return time.perf_counter() - start

    def full() -> float:
        sync(device)
        start = time.perf_counter()
        dissect(gen, [args.layer], seg, latent_shape=(512,), num_samples=n, batch_size=bs,
                progress=False, device=str(device))
        sync(device)
        return time.perf_counter() - start

    floor()  # warm-up (cudnn autotune, allocator)
    times_a = [floor() for _ in range(2)]
    times_b = [full() for _ in range(2)]
    a, b = min(times_a), min(times_b)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; N={n}, batch {bs}, layer {args.layer}")
    print(f"(A) 2x generator + 1x segmenter forward: {a:8.2f} s")
    print(f"(B) dissect() both passes:                {b:8.2f} s")
    print(f"B / A = {b / a:.2f}   (target <= 1.25)")


if __name__ == "__main__":
    main()
