"""Screenshots of real TensorBoard (Images, Text and Custom Scalars tabs) on an example run.

Starts ``tensorboard --logdir RUN`` on a free port, waits for it to answer, and captures each tab
with headless Chromium (TensorBoard's frontend is JavaScript, so Chromium gets a virtual-time
budget to run it). Writes ``tensorboard_images.png``, ``tensorboard_text.png`` and
``tensorboard_custom_scalars.png``.

    python examples/train_gan.py --max-epochs 3 --max-time none --num-train 1024 \\
        --default-root-dir /tmp/tbrun --no-final-dissection --no-progress-bar
    python docs/scripts/tensorboard_screenshots.py /tmp/tbrun [--out docs/images]
    # the discriminator's rounds (docs/network-dissection.md):
    python docs/scripts/tensorboard_screenshots.py /tmp/tbrun --tabs images \
        --tag-filter dissection-discriminator --name tensorboard_discriminator
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TABS = {"images": "tensorboard_images.png", "text": "tensorboard_text.png",
        "custom_scalars": "tensorboard_custom_scalars.png"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"TensorBoard did not answer at {url} within {seconds:.0f} s")
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the --logdir for TensorBoard (an example run's root)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--tensorboard", default=str(Path(sys.executable).with_name("tensorboard")))
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser")
                        or "chromium")
    parser.add_argument("--window-size", default="1400,1800")
    parser.add_argument("--budget-ms", type=int, default=15000, help="Chromium's virtual-time budget")
    parser.add_argument("--tag-filter", default="layer3", help="regex of the tags shown (empty: all)")
    parser.add_argument("--tabs", nargs="+", default=list(TABS), choices=list(TABS))
    parser.add_argument("--name", default="tensorboard",
                        help="file name prefix: NAME_images.png ... (e.g. tensorboard_discriminator)")
    args = parser.parse_args()
    port = args.port or free_port()
    args.out.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [args.tensorboard, "--logdir", str(args.run), "--port", str(port), "--bind_all"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for(f"http://localhost:{port}/data/logdir", 120)
        time.sleep(5)  # first scan of the event files
        with tempfile.TemporaryDirectory() as profile:
            for tab in args.tabs:
                target = (args.out / TABS[tab].replace("tensorboard", args.name, 1)).resolve()
                subprocess.run(
                    [args.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                     f"--user-data-dir={profile}", f"--window-size={args.window_size}",
                     f"--virtual-time-budget={args.budget_ms}", f"--screenshot={target}",
                     f"http://localhost:{port}/#{tab}" + (f"&tagFilter={args.tag_filter}" if args.tag_filter else "")],
                    check=True, timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
                print("wrote", target)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
