"""Network Dissection of a Broden-format folder: cost against the floor, memory, and scaling in concepts.

Workload: a generated Broden-format folder (:func:`~lightning_dissect.engine.broden.write_example_broden`):
4 categories (``color`` with two PNGs per image, ``object``, ``part`` on every other image,
``scene`` an image-level label), ``--concepts`` labels in all (a quarter per category), a few of
them per image (``--labels-per-image`` per category), ``--image-size`` JPEG images with
segmentations at ``--segmentation-size``. The reader is a ResNet-18-shaped network in plain torch
(random weights, eval mode, no torchvision); its last two blocks ``layer3`` (256 units) and
``layer4`` (512 units) are dissected with ``--preset`` (default ``netdissect``: the quantile of the
raw maps, the per-category unit area), the chance baseline and the top images included.

* **floor**: reading every item of the :class:`~lightning_dissect.BrodenDataset` (image and label
  PNGs) and one forward pass of the network, in the same batches; nothing else.
* **ours**: ``dissect_images(network, ["layer3", "layer4"], BrodenDataset(root), preset=...)``.

Reported in one run:

1. ``ours / floor`` at the largest concept count (target <= 2);
2. the statistics' cost (``ours - floor``) at every count of ``--concepts``;
3. peak resident memory of the same dissection over ``--memory-sizes`` images (each in a fresh
   process; the folders repeat the rows of the generated one), which should not grow with the
   number of images: under glibc's default allocator, and with one arena and large blocks given
   back at once (:data:`ALLOCATOR_RETURNS_MEMORY`), where the peak is what the call holds.

Run ``python benchmarks/bench_broden.py`` (a few minutes on 2 cores); ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from bench_network_dissection import ResNet18  # noqa: E402

from lightning_dissect import BrodenDataset, dissect_images  # noqa: E402
from lightning_dissect.engine.broden import write_example_broden  # noqa: E402

LAYERS = ["layer3", "layer4"]


def make_folder(root: Path, args: argparse.Namespace, concepts: int) -> Path:
    folder = root / f"broden-{concepts}"
    if not (folder / "index.csv").is_file():
        write_example_broden(
            folder, args.num_images, image_size=args.image_size, label_size=args.segmentation_size,
            concepts_per_category=concepts // 4, labels_per_image=args.labels_per_image, seed=0,
        )
    return folder


def repeated_folder(source: Path, root: Path, num_images: int) -> Path:
    """A Broden folder of ``num_images`` rows, cycling the rows of ``source`` (its images linked, not copied)."""
    folder = root / f"{source.name}-x{num_images}"
    if folder.exists():
        return folder
    folder.mkdir()
    for csv_file in source.glob("*.csv"):
        if csv_file.name != "index.csv":
            shutil.copy(csv_file, folder / csv_file.name)
    os.symlink(source / "images", folder / "images")
    with (source / "index.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    with (folder / "index.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        writer.writerows(rows[i % len(rows)] for i in range(num_images))
    return folder


def floor(net: torch.nn.Module, data: BrodenDataset, batch: int) -> None:
    with torch.inference_mode():
        for start in range(0, len(data), batch):
            items = [data[i] for i in range(start, min(start + batch, len(data)))]
            torch.stack([label for _, label in items])
            net(torch.stack([image for image, _ in items]))


def ours(net: torch.nn.Module, data: BrodenDataset, batch: int, preset: str):
    return dissect_images(net, LAYERS, data, preset=preset, batch_size=batch, progress=False)


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _load() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"


#: glibc settings under which freed memory goes back to the system at once (one arena, large blocks
#: mapped): the peak is then the memory the call holds, without what the allocator keeps.
ALLOCATOR_RETURNS_MEMORY = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}


def _peak_child(folder: Path, batch: int, preset: str, env: dict | None = None) -> dict:
    """Resident memory before the call and its peak during the call (Linux: the peak is reset first)."""
    code = (
        "import json, sys, torch\n"
        f"sys.path[:0] = [{str(ROOT)!r}, {str(HERE)!r}]\n"
        "from bench_network_dissection import ResNet18\n"
        "from lightning_dissect import BrodenDataset, dissect_images\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key):\n"
        "            return int(line.split()[1]) / 1024\n"
        "torch.manual_seed(0)\n"
        "net = ResNet18().eval()\n"
        f"data = BrodenDataset({str(folder)!r})\n"
        "before = status('VmRSS')\n"
        "open('/proc/self/clear_refs', 'w').write('5')  # the peak (VmHWM) starts again from here\n"
        f"dissect_images(net, {LAYERS!r}, data, preset={preset!r}, batch_size={batch}, progress=False)\n"
        "print(json.dumps({'before_mib': before, 'peak_mib': status('VmHWM')}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, **(env or {})})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=64, help="images of the timed runs")
    parser.add_argument("--concepts", type=int, nargs="+", default=[52, 300, 1200],
                        help="concept counts (4 categories); the largest gives the cost against the floor")
    parser.add_argument("--labels-per-image", type=int, default=8, help="labels of each category in an image")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--segmentation-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--preset", default="netdissect")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many timed runs")
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[64, 128, 256],
                        help="image counts of the memory runs (none: skip them)")
    parser.add_argument("--root", type=Path, help="where to write the folders (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 8 images of 64 px, 2 counts")
    args = parser.parse_args()
    if args.quick:
        args.num_images, args.image_size, args.segmentation_size, args.batch_size = 8, 64, 32, 4
        args.concepts, args.memory_sizes, args.repeats = [52, 300], [8, 16], 1
    root = args.root or Path(tempfile.mkdtemp(prefix="bench-broden-"))
    root.mkdir(parents=True, exist_ok=True)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; load average at the start {_load()}")
    print(f"ResNet-18 layout, layers {LAYERS} (256 + 512 units), preset {args.preset!r}, {args.num_images} images "
          f"{args.image_size}x{args.image_size}, segmentations {args.segmentation_size}x{args.segmentation_size}, "
          f"batch {args.batch_size}, best of {args.repeats}")
    torch.manual_seed(0)
    net = ResNet18().eval()
    start = time.perf_counter()
    folders = {c: make_folder(root, args, c) for c in sorted(args.concepts)}
    print(f"folders written in {time.perf_counter() - start:.1f} s under {root}")

    rows = []
    for concepts, folder in folders.items():
        data = BrodenDataset(folder)
        ours(net, BrodenDataset(repeated_folder(folder, root, 4)), args.batch_size, args.preset)  # warm-up
        t_floor = _best(lambda data=data: floor(net, data, args.batch_size), args.repeats)
        t_ours = _best(lambda data=data: ours(net, data, args.batch_size, args.preset), args.repeats)
        rows.append((concepts, data.vocabulary.num_concepts, data.depth, t_floor, t_ours))
        print(f"  {data.vocabulary.num_concepts - 1:5d} concepts ({data.depth} label maps per image): "
              f"floor {t_floor:6.2f} s, dissect_images {t_ours:6.2f} s, ours / floor = {t_ours / t_floor:.2f}, "
              f"statistics (ours - floor) {t_ours - t_floor:6.2f} s", flush=True)
    concepts, _, _, t_floor, t_ours = rows[-1]
    print(f"at {concepts} concepts: ours / floor = {t_ours / t_floor:.2f} (target <= 2: "
          f"{'met' if t_ours <= 2 * t_floor else 'NOT met'})")
    first = rows[0]
    print(f"statistics from {first[0]} to {concepts} concepts: {first[4] - first[3]:.2f} s -> {t_ours - t_floor:.2f} s")

    if args.memory_sizes:
        print(f"peak resident memory of dissect_images over {concepts} concepts, each run in a fresh process; "
              f"glibc's default allocator, then with {ALLOCATOR_RETURNS_MEMORY} (the memory the call holds)")
        for n in args.memory_sizes:
            for label, env in (("default", None), ("memory returned", ALLOCATOR_RETURNS_MEMORY)):
                found = _peak_child(repeated_folder(folders[concepts], root, n), args.batch_size, args.preset, env)
                print(f"  {n:6d} images, {label:15s}: peak {found['peak_mib']:7.1f} MiB during the call, "
                      f"{found['before_mib']:.1f} MiB before it: +{found['peak_mib'] - found['before_mib']:.1f} MiB",
                      flush=True)
    print(f"load average at the end {_load()}")
    if args.root is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
