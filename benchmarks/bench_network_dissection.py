"""Network Dissection cost: a ResNet-18-shaped reader against its forward floor and a plain pipeline.

Workload: a ResNet-18-shaped network written in plain torch (torchvision is not needed), random
weights, eval mode; the last two blocks ``layer3`` (256 units) and ``layer4`` (512 units);
``--num-images`` scenes of the synthetic world at ``--image-size`` pixels, labelled by the
:class:`~lightning_dissect.segmenters.SyntheticSceneSegmenter` at ``--segmentation-size``.

* **floor**: one forward pass of the network plus one segmenter pass over the same images, in the
  same batches; nothing else.
* **ours**: ``dissect_images`` (quantile mode, chance baseline, top images), images held in memory.
* **plain**: a NetDissect-Lite-style pipeline written plainly here: one forward pass caching the
  feature maps, per-unit thresholds as the 0.99 quantile of the cached features
  (``torch.quantile``), then per image: upsample its maps (``F.interpolate``), threshold them, and
  count intersections and unions with boolean masks for every concept in the image.

Prints the times (best of ``--repeats``) and the ratios ``ours / floor`` and ``plain / ours``
measured in this run. ``--memory`` instead measures the peak resident memory of
``dissect_images`` over growing image sets (a small CNN, images read lazily from a dataset), each
in a fresh subprocess.

Run ``python benchmarks/bench_network_dissection.py [--memory]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_dissect import dissect_images  # noqa: E402
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter  # noqa: E402

LAYERS = ["layer3", "layer4"]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """ResNet-18's layout: stem, four stages of two basic blocks (64, 128, 256, 512), pooled head."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        widths, cin = (64, 128, 256, 512), 64
        for i, width in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, width, stride), BasicBlock(width, width, 1)))
            cin = width
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(x.mean((2, 3)))


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def floor(net: nn.Module, images: torch.Tensor, segmenter, batch: int) -> None:
    with torch.inference_mode():
        for chunk in images.split(batch):
            net(chunk)
            segmenter(chunk)


def ours(net: nn.Module, images: torch.Tensor, segmenter, batch: int):
    return dissect_images(net, LAYERS, images, segmenter, value_range=(-1, 1), batch_size=batch, progress=False)


def plain(net: nn.Module, images: torch.Tensor, segmenter, batch: int) -> dict[str, torch.Tensor]:
    """NetDissect-Lite's way, written plainly: cache features, quantile them, then count per image."""
    num_concepts = segmenter.vocabulary.num_concepts
    features: dict[str, list[torch.Tensor]] = {n: [] for n in LAYERS}
    labels = []
    hooks = [getattr(net, n).register_forward_hook(lambda m, i, o, n=n: features[n].append(o)) for n in LAYERS]
    try:
        with torch.inference_mode():
            for chunk in images.split(batch):
                net(chunk)
                labels.append(segmenter(chunk))
    finally:
        for h in hooks:
            h.remove()
    seg = torch.cat(labels)
    size = tuple(seg.shape[-2:])
    out = {}
    with torch.inference_mode():
        for name in LAYERS:
            maps = torch.cat(features[name])  # (N, U, h, w)
            units = maps.shape[1]
            flat = maps.transpose(0, 1).reshape(units, -1)
            thresholds = torch.quantile(flat[:, :: max(1, flat.shape[1] // 16_000_000 + 1)], 0.99, dim=1)
            inter = torch.zeros(units, num_concepts, dtype=torch.long)
            union = torch.zeros(units, num_concepts, dtype=torch.long)
            for i in range(maps.shape[0]):
                up = F.interpolate(maps[i : i + 1], size=size, mode="bilinear", align_corners=False)[0]
                mask = up > thresholds[:, None, None]
                area = mask.sum((1, 2))
                for c in seg[i].unique().tolist():
                    if c == 0:
                        continue
                    concept = seg[i] == c
                    both = (mask & concept).sum((1, 2))
                    inter[:, c] += both
                    union[:, c] += area + concept.sum() - both
            out[name] = inter / union.clamp(min=1)
    return out


def speed(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    net = ResNet18().eval()
    world = SceneWorld(args.image_size)
    images, _ = world.render(args.num_images, seed=1)
    segmenter = SyntheticSceneSegmenter(world, resolution=args.segmentation_size)
    ours(net, images[: args.batch_size], segmenter, args.batch_size)  # warm-up
    t_floor = _best(lambda: floor(net, images, segmenter, args.batch_size), args.repeats)
    t_ours = _best(lambda: ours(net, images, segmenter, args.batch_size), args.repeats)
    t_plain = _best(lambda: plain(net, images, segmenter, args.batch_size), args.repeats)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"ResNet-18 layout, layers {LAYERS} (256 + 512 units), {args.num_images} images "
          f"{args.image_size}x{args.image_size}, segmentation {args.segmentation_size}x{args.segmentation_size}, "
          f"batch {args.batch_size}, best of {args.repeats}")
    print(f"floor (1 forward + segmenter): {t_floor:.2f} s")
    print(f"dissect_images:                {t_ours:.2f} s   ours / floor = {t_ours / t_floor:.2f}  (target <= 3)")
    print(f"plain NetDissect-Lite style:   {t_plain:.2f} s   plain / ours = {t_plain / t_ours:.2f}  (target >= 5)")
    # ours runs at least the floor's forward and segmenter, so plain / ours cannot exceed this:
    print(f"                               plain / floor = {t_plain / t_floor:.2f}")


def _peak_child(n: int, cache: int) -> dict:
    code = (
        "import json, resource, sys, torch\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from torch import nn\n"
        "from lightning_dissect import dissect_images\n"
        "from lightning_dissect.engine import images as images_module\n"
        "from lightning_dissect.segmenters import SceneWorld\n"
        "from lightning_dissect.segmenters.synthetic import SyntheticSceneDataset\n"
        f"images_module.IMAGE_CACHE_BYTES = {cache}\n"
        "torch.manual_seed(0)\n"
        "world = SceneWorld(64)\n"
        f"data = SyntheticSceneDataset({n}, 1, world=world)\n"
        "net = nn.Sequential(nn.Conv2d(3, 64, 3, 2, 1), nn.ReLU(), nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU())\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "dissect_images(net, ['1', '3'], data, vocabulary=world.vocabulary, value_range=(-1, 1), batch_size=64,\n"
        "               progress=False)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'before_mib': before / 1024, 'peak_mib': after / 1024}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory(args: argparse.Namespace) -> None:
    print("peak resident memory of dissect_images (small CNN, layers of 64 and 128 units, 64x64 scenes read "
          "from a dataset, batch 64), each run in a fresh process")
    configs = {"none": (0, "no image cache"), "default": (64 << 20, "default 64 MiB image cache")}
    for cache, label in (configs[c] for c in args.memory_caches):
        for n in args.memory_sizes:
            found = _peak_child(n, cache)
            print(f"  {label:28s} {n:6d} images: peak {found['peak_mib']:7.1f} MiB "
                  f"(before the call {found['before_mib']:.1f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--segmentation-size", type=int, default=56)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory", action="store_true", help="measure peak memory over growing image sets")
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--memory-caches", nargs="+", default=["none", "default"], choices=["none", "default"])
    args = parser.parse_args()
    if args.memory:
        memory(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
