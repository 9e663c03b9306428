"""Every Lightning logger gets the round: W&B (offline) and MLflow (SQLite store) read back for real.

One training run with four loggers at once (TensorBoard, W&B, MLflow, CSV); each test reads what one
logger wrote, from its own store, and compares it with the round files the callback wrote.
"""

from __future__ import annotations

import io
import json
import warnings

import pytest
import torch

pytest.importorskip("wandb")
pytest.importorskip("mlflow")
from PIL import Image  # noqa: E402

from lightning_dissect import load_history  # noqa: E402
from lightning_dissect.visual.round_pictures import unit_strip  # noqa: E402
from tests.helpers import wandb_offline  # noqa: E402
from tests.test_callback import LAYERS, fit, paper_rule_callback  # noqa: E402


def _pixels(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as img:
        return torch.tensor(list(img.convert("RGB").getdata()), dtype=torch.uint8).T.reshape(3, img.height, img.width)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

    tmp = tmp_path_factory.mktemp("loggers")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("WANDB_DATA_DIR", str(tmp / "wandb-data"))  # staged table files, inside the test's folder
    mp.setenv("WANDB_CACHE_DIR", str(tmp / "wandb-cache"))
    mp.setenv("WANDB_CONFIG_DIR", str(tmp / "wandb-config"))
    loggers = {
        "tb": TensorBoardLogger(tmp, name="tb"),
        "wandb": WandbLogger(save_dir=str(tmp), offline=True, project="dissection"),
        "mlflow": MLFlowLogger(experiment_name="dissection", tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                               artifact_location=str(tmp / "mlartifacts")),
        "csv": CSVLogger(tmp, name="csv"),
    }
    callback = paper_rule_callback()  # the papers' cut: a 1-epoch GAN has units to ablate, so every artefact is written
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp, [callback], max_epochs=1, enable_checkpointing=False, logger=list(loggers.values()))
    import wandb

    wandb.finish()
    mp.undo()
    rounds = load_history(loggers["tb"].log_dir)
    assert [r.metadata["global_step"] for r in rounds] == [8]
    return {"tmp": tmp, "loggers": loggers, "callback": callback, "round": rounds[0],
            "warnings": [str(w.message) for w in caught]}


def test_no_logger_was_left_out(run):
    assert not [m for m in run["warnings"] if "scalars only" in m or "could not write" in m]


def test_wandb_table_has_a_unit_strip_in_each_row_at_the_runs_step(run):
    result, callback = run["round"], run["callback"]
    save_dir = run["loggers"]["wandb"].save_dir
    rows = wandb_offline.history(save_dir)
    losses = [r["trainer/global_step"] for r in rows if "g_loss" in r]
    assert losses == [0, 1, 2, 3]  # the run's own metrics: one step per batch
    logged = [r for r in rows if "dissection/layer1/top_units/_type" in r or "dissection/layer1/top_units" in r]
    assert len(logged) == 1 and logged[0]["trainer/global_step"] == 3  # the epoch's last batch
    for layer in LAYERS:
        assert logged[0][f"dissection/{layer}/iou_heatmap/_type"] == "image-file"
        assert logged[0][f"dissection/{layer}/units_by_round/_type"] == "image-file"
    scalars = [r for r in rows if "dissection/layer2/interpretable_units" in r]
    assert [(r["trainer/global_step"], r["dissection/layer2/interpretable_units"]) for r in scalars] == [
        (3, result["layer2"].num_interpretable)]
    tables = {key: (table, files) for key, table, files in wandb_offline.tables(save_dir)}
    for layer in LAYERS:
        table, files = tables[f"dissection/{layer}/top_units"]
        assert table["columns"] == ["unit", "concept", "category", "interpretable", "IoU", "IQR", "threshold",
                                    "chance IoU", "excess", "p-value", "strip"]
        units = {u.unit: u for u in result[layer].units}
        assert 0 < len(table["data"]) <= 3
        for row in table["data"]:
            unit = units[row[0]]
            assert row[1:5] == [unit.label, unit.category, unit.interpretable, pytest.approx(unit.iou)]
            assert row[7] == pytest.approx(unit.chance_iou) and unit.iou > unit.chance_iou
            cell = row[table["columns"].index("strip")]
            assert cell["_type"] == "image-file"
            strip = _pixels(files[cell["path"]].read_bytes())
            assert torch.equal(strip, unit_strip(callback.last_result.unit_images[layer][unit.unit]))
        ablation, _ = tables[f"dissection/{layer}/ablation"]
        assert ablation["columns"][0] == "concept" and len(ablation["columns"]) > 3
        assert [r[0] for r in ablation["data"]] == [a["concept"] for a in result.ablations[layer]]


def test_mlflow_run_holds_tables_pictures_round_and_report(run):
    from mlflow import MlflowClient

    logger = run["loggers"]["mlflow"]
    client = MlflowClient(tracking_uri=f"sqlite:///{run['tmp']}/mlflow.db")
    result = run["round"]
    history = client.get_metric_history(logger.run_id, "dissection/layer1/interpretable_units")
    assert [(m.step, m.value) for m in history] == [(3, result["layer1"].num_interpretable)]
    assert sorted({m.step for m in client.get_metric_history(logger.run_id, "g_loss")}) == [0, 1, 2, 3]
    root = run["tmp"] / "mlartifacts" / logger.run_id / "artifacts" / "dissection"
    listed = {a.path for a in client.list_artifacts(logger.run_id, "dissection")}
    assert {"dissection/round_00000008.json", "dissection/step_00000003", "dissection/report"} <= listed
    assert json.loads((root / "round_00000008.json").read_text()) == json.loads(result.to_json())
    for layer in LAYERS:
        folder = root / "step_00000003" / layer
        table = json.loads((folder / "top_units.json").read_text())  # MLflow's table format
        assert table["columns"][:5] == ["unit", "concept", "category", "interpretable", "IoU"]
        units = {u.unit: u for u in result[layer].units}
        for row in table["data"]:
            assert row[1] == units[row[0]].label and row[4] == pytest.approx(units[row[0]].iou)
        for kind in ("unit_strips", "iou_heatmap", "units_by_round"):
            assert _pixels((folder / f"{kind}.png").read_bytes()).shape[0] == 3
        assert (folder / "ablation.json").exists()
    page = (root / "report" / "index.html").read_text()
    assert "layer1" in page and "layer2" in page
    assert client.get_run(logger.run_id).info.status == "FINISHED"


def test_csv_and_tensorboard_share_the_step(run):
    import csv

    folder = run["loggers"]["csv"].log_dir
    rows = list(csv.DictReader(open(f"{folder}/metrics.csv")))
    assert [int(r["step"]) for r in rows if r.get("dissection/layer1/mean_best_iou")] == [3]
    assert (run["tmp"] / "csv" / "version_0" / "dissection" / "step_00000003" / "layer2" / "top_units.csv").exists()
