"""Server-side time of one paint edit: the example generator and a StyleGAN2-shaped generator at 256 px.

Workloads (random weights: the time does not depend on them):

* **example**: the example's DCGAN generator (``examples/gan_model.py``, 32 x 32 images, latent 128),
  edited at ``layer2`` (128 units, 8 x 8);
* **stylegan2-256**: a StyleGAN2-shaped generator: an 8-layer 512-wide mapping network, a constant
  4 x 4 input, two modulated 3 x 3 convolutions (demodulated) with noise per resolution and a
  modulated toRGB skip, 512 channels up to 64 x 64, 256 at 128, 128 at 256 (config-f widths);
  edited at ``b32.act1`` (512 units, 32 x 32).

Each is dissected quickly (a handful of samples: the result only names the units), then one edit
is timed as the page asks for it: ``Painter.render`` with 1 stroke and with 5 strokes (the
generator call, the segmentation of both images, the fractions), and the whole ``POST /api/render``
through FastAPI's test client (plus the JSON, the PNG encoding of four images and base64). The
sample's original image and the layer's insertion values are computed once before the timing (the
page does that on the first stroke). Prints the median of ``--repeats`` and the torch thread count.

Run ``python benchmarks/bench_paint.py [--repeats 5] [--threads 1] [--skip-stylegan]``.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]  # this checkout's package and the example

from lightning_dissect.app import Painter, encode_mask  # noqa: E402
from lightning_dissect.dissection import dissect  # noqa: E402
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter  # noqa: E402


# ---------------------------------------------------------------------- a StyleGAN2-shaped generator
class ModulatedConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, w_dim: int, demodulate: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel, kernel))
        self.scale = 1 / math.sqrt(in_ch * kernel * kernel)
        self.affine = nn.Linear(w_dim, in_ch)
        nn.init.ones_(self.affine.bias)
        self.demodulate = demodulate

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        b, in_ch, h, width = x.shape
        weight = self.scale * self.weight * self.affine(w).view(b, 1, in_ch, 1, 1)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum((2, 3, 4), keepdim=True) + 1e-8)
        weight = weight.reshape(-1, in_ch, *weight.shape[-2:])
        out = F.conv2d(x.reshape(1, b * in_ch, h, width), weight, padding=weight.shape[-1] // 2, groups=b)
        return out.view(b, -1, h, width)


class Block(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, w_dim: int, first: bool) -> None:
        super().__init__()
        self.first = first
        self.conv0 = ModulatedConv(in_ch, out_ch, 3, w_dim)
        self.conv1 = ModulatedConv(out_ch, out_ch, 3, w_dim)
        self.noise_strength = nn.Parameter(torch.full((2,), 0.1))
        self.act0, self.act1 = nn.LeakyReLU(0.2), nn.LeakyReLU(0.2)
        self.to_rgb = ModulatedConv(out_ch, 3, 1, w_dim, demodulate=False)

    def forward(self, x, rgb, w):
        if not self.first:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        b, _, h, width = x.shape
        x = self.act0(self.conv0(x, w) + self.noise_strength[0] * torch.randn(b, 1, h, width))
        x = self.act1(self.conv1(x, w) + self.noise_strength[1] * torch.randn(b, 1, h, width))
        skip = self.to_rgb(x, w)
        if rgb is not None:
            skip = skip + F.interpolate(rgb, scale_factor=2, mode="bilinear", align_corners=False)
        return x, skip


class StyleGAN2Shaped(nn.Module):
    """``z (B, 512) -> images (B, 3, 256, 256)`` in [-1, 1]."""

    widths = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128}

    def __init__(self, z_dim: int = 512) -> None:
        super().__init__()
        self.z_dim = z_dim
        layers: list[nn.Module] = []
        for _ in range(8):
            layers += [nn.Linear(z_dim, z_dim), nn.LeakyReLU(0.2)]
        self.mapping = nn.Sequential(*layers)
        self.const = nn.Parameter(torch.randn(1, 512, 4, 4))
        previous = 512
        for res, width in self.widths.items():
            self.add_module(f"b{res}", Block(previous, width, z_dim, first=res == 4))
            previous = width

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.mapping(z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8))
        x, rgb = self.const.expand(z.shape[0], -1, -1, -1), None
        for res in self.widths:
            x, rgb = getattr(self, f"b{res}")(x, rgb, w)
        return torch.tanh(rgb)


# ---------------------------------------------------------------------- timing
def square(size: int, top: float, left: float, side: float) -> torch.Tensor:
    m = torch.zeros(size, size)
    m[int(top * size):int((top + side) * size), int(left * size):int((left + side) * size)] = 1
    return m


def workload(name: str, generator: nn.Module, layer: str, size: int, latent: int, repeats: int, samples: int) -> dict:
    from fastapi.testclient import TestClient

    from lightning_dissect.app.server import create_app

    segmenter = SyntheticSceneSegmenter(SceneWorld(size))
    start = time.perf_counter()
    result = dissect(generator, [layer], segmenter, latent_shape=(latent,), num_samples=samples, batch_size=samples,
                     num_visualized_units=0, chance_baseline=False, interpretable="paper", progress=False)
    dissect_time = time.perf_counter() - start
    painter = Painter(generator, result, segmenter, statistics_samples=samples)
    concept = next(c["name"] for c in painter.info()["layers"][0]["concepts"])
    start = time.perf_counter()
    painter.statistics(layer)
    stats_time = time.perf_counter() - start

    def stroke(i: int) -> dict:
        mode = "draw" if i % 2 == 0 else "erase"
        mask = square(size, 0.1 + 0.12 * i, 0.1 + 0.1 * i, 0.3)
        return {"mode": mode, "layer": layer, "concept": concept, "size": 8, "mask": encode_mask(mask)}

    times: dict[str, list[float]] = {"render, 1 stroke": [], "render, 5 strokes": [], "HTTP, 1 stroke": []}
    client = TestClient(create_app(painter))
    body1 = {"seed": 0, "concept": concept, "strokes": [stroke(0)]}
    body5 = {"seed": 0, "concept": concept, "strokes": [stroke(i) for i in range(5)]}
    painter.render(body1)  # warm: the original sample is cached, as on the page
    for _ in range(repeats):
        for key, run in [("render, 1 stroke", lambda: painter.render(body1)),
                         ("render, 5 strokes", lambda: painter.render(body5)),
                         ("HTTP, 1 stroke", lambda: client.post("/api/render", json=body1).raise_for_status())]:
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
    start = time.perf_counter()
    generator(torch.randn(1, latent))
    forward = time.perf_counter() - start
    row = {key: statistics.median(v) for key, v in times.items()}
    print(f"\n{name}: edit layer {layer} {tuple(result.layers[layer].iou.shape[:1])} units, images {size} px")
    print(f"  quick dissection ({samples} samples): {dissect_time:.1f} s; insertion values ({samples} samples): "
          f"{stats_time:.1f} s; one plain forward: {1000 * forward:.0f} ms")
    for key, value in row.items():
        print(f"  {key:<18} median {1000 * value:8.0f} ms  (of {repeats}: "
              f"{', '.join(f'{1000 * t:.0f}' for t in times[key])})")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-stylegan", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: steadiest on a shared machine; the server's worker threads use it too)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    from gan_model import Generator

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        example = Generator(latent_dim=128, image_size=32)
        workload("example DCGAN", example, "layer2", 32, 128, args.repeats, samples=64)
        if not args.skip_stylegan:
            stylegan = StyleGAN2Shaped()
            workload("StyleGAN2-shaped", stylegan, "b32.act1", 256, 512, args.repeats, samples=2)


if __name__ == "__main__":
    main()
