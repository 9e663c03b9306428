"""The pictures of docs/loggers.md: one short example run with four loggers, read back from each.

Trains the example GAN (``examples/train_gan.py``'s model, data and callback settings) for a few
epochs with TensorBoard, Weights & Biases (offline), MLflow (SQLite store) and CSV at once, then

* reads the W&B top-units table back from the offline run (``tests/helpers/wandb_offline.py``),
  prints it as Markdown and renders it with its unit strips (``wandb_table.png``);
* starts ``mlflow ui`` on the run's store and screenshots it in headless Chromium
  (``mlflow_artifacts.png``, ``mlflow_metrics.png``);
* prints the CSV logger's folder layout.

    python docs/scripts/loggers_demo.py [--out docs/images] [--root runs/loggers-demo]
"""

from __future__ import annotations

import argparse
import base64
import html
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]

LAYER = "layer3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(url)


def screenshot(chromium: str, url: str, target: Path, size: str, budget_ms: int = 20000) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--disable-background-networking", f"--user-data-dir={profile}", f"--window-size={size}",
             f"--virtual-time-budget={budget_ms}", f"--screenshot={target}", url],
            check=True, timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    print("wrote", target)


def train(root: Path, epochs: int, num_train: int):
    import lightning as L
    from gan_model import DCGAN
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
    from train_gan import build_callbacks, parse_args

    from lightning_dissect.segmenters.datamodule import SyntheticSceneDataModule

    args = parse_args([])
    L.seed_everything(0, workers=True)
    datamodule = SyntheticSceneDataModule(image_size=32, num_train=num_train, num_val=64, batch_size=64, seed=0)
    model = DCGAN(latent_dim=args.latent_dim, image_size=32, g_channels=tuple(args.g_channels),
                  d_channels=tuple(args.d_channels), lr_g=args.lr_g, lr_d=args.lr_d)
    loggers = [
        TensorBoardLogger(save_dir=str(root), name="tensorboard"),
        WandbLogger(save_dir=str(root), offline=True, project="lightning-dissect-demo"),
        MLFlowLogger(experiment_name="lightning-dissect-demo", tracking_uri=f"sqlite:///{root}/mlflow.db",
                     artifact_location=str((root / "mlartifacts").resolve())),
        CSVLogger(save_dir=str(root), name="csv"),
    ]
    trainer = L.Trainer(max_epochs=epochs, default_root_dir=str(root), logger=loggers,
                        callbacks=build_callbacks(args), log_every_n_steps=10, limit_val_batches=0,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=datamodule)
    import wandb

    wandb.finish()
    return loggers


def wandb_table(save_dir: Path, out: Path, chromium: str) -> None:
    from tests.helpers import wandb_offline

    tables = [(key, table, files) for key, table, files in wandb_offline.tables(save_dir)
              if key == f"dissection/{LAYER}/top_units"]
    key, table, files = tables[-1]  # the last round's
    print(f"\nW&B table `{key}` ({len(tables)} rounds), read back from the offline run:\n")
    print("| " + " | ".join(table["columns"]) + " |")
    print("|" + "---|" * len(table["columns"]))
    rows_html = []
    for row in table["data"]:
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row[:-1]]
        strip = row[-1]
        print("| " + " | ".join(cells) + f" | {strip['_type']} {strip['width']}×{strip['height']} |")
        data = base64.b64encode(files[strip["path"]].read_bytes()).decode()
        rows_html.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                         + f'<td><img src="data:image/png;base64,{data}"></td></tr>')
    page = (
        "<html><body style='font:14px sans-serif;margin:12px'>"
        f"<div style='margin-bottom:8px;color:#444'>W&amp;B table <b>{html.escape(key)}</b> "
        "(read back from the offline run)</div>"
        "<table style='border-collapse:collapse' border=1 cellpadding=4><tr>"
        + "".join(f"<th>{html.escape(c)}</th>" for c in table["columns"]) + "</tr>"
        + "".join(rows_html) + "</table></body></html>"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.html"
        path.write_text(page)
        screenshot(chromium, path.as_uri(), out / "wandb_table.png", "1200,940", budget_ms=2000)


def mlflow_screens(root: Path, logger, out: Path, chromium: str) -> None:
    port = free_port()
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    server = subprocess.Popen(
        [mlflow, "ui", "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/health", 180)
        base = f"http://127.0.0.1:{port}/#/experiments/{logger.experiment_id}/runs/{logger.run_id}"
        artifacts = root / "mlartifacts" / logger.run_id / "artifacts" / "dissection"
        steps = sorted(p.name for p in artifacts.glob("step_*"))
        artifact = f"dissection/{steps[-1]}/{LAYER}/iou_heatmap.png"
        screenshot(chromium, f"{base}/artifacts/{artifact}", out / "mlflow_artifacts.png", "1400,900")
        screenshot(chromium, f"{base}/model-metrics", out / "mlflow_metrics.png", "1400,1000", budget_ms=90000)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--root", type=Path, default=Path("runs/loggers-demo"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--skip-training", action="store_true", help="reuse the run in --root")
    args = parser.parse_args()
    root = args.root.resolve()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_DATA_DIR", str(root / "wandb-data"))
    if not args.skip_training:
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        start = time.perf_counter()
        loggers = train(root, args.epochs, args.num_train)
        print(f"trained {args.epochs} epochs in {time.perf_counter() - start:.0f} s")
        mlflow_logger = loggers[2]
    else:
        from types import SimpleNamespace

        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
        experiment = client.get_experiment_by_name("lightning-dissect-demo")
        run = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])[0]
        mlflow_logger = SimpleNamespace(experiment_id=experiment.experiment_id, run_id=run.info.run_id)
    args.out.mkdir(parents=True, exist_ok=True)
    wandb_table(root, args.out, args.chromium)
    mlflow_screens(root, mlflow_logger, args.out, args.chromium)
    print("\nCSV logger folder:")
    for path in sorted((root / "csv").rglob("*"))[:40]:
        print("  ", path.relative_to(root))


if __name__ == "__main__":
    main()
