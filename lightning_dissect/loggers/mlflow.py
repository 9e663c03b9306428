"""The MLflow writer: tables, pictures and the round JSON as run artifacts; the HTML report at the end.

``MLFlowLogger`` itself logs metrics and parameters only; everything else goes through its
``experiment`` (an ``MlflowClient``) and ``run_id``. ``mlflow`` is imported only by that client,
when an ``MLFlowLogger`` is in use. Artifacts of a round, under the run's artifact root::

    <prefix>/round_<global_step>.json            the round
    <prefix>/step_<step>/<layer>/<kind>.png      unit_strips, iou_heatmap, units_by_round
    <prefix>/step_<step>/<layer>/<table>.json    top_units, ablation (MLflow's table format)
    <prefix>/report/index.html                   the last round's HTML report, at the end of fit
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from lightning_dissect.callbacks.history import round_file_name, step_folder_name
from lightning_dissect.loggers.content import RoundContent

__all__ = ["MLflowWriter"]


def _relative(tag: str, prefix: str) -> str:
    return tag[len(prefix) + 1 :] if tag.startswith(prefix + "/") else tag


class MLflowWriter:
    """Writes rounds to an ``MLFlowLogger``'s run as artifacts that MLflow's UI shows.

    Args:
        logger: The ``lightning.pytorch.loggers.MLFlowLogger``.
        name: Names this writer in warnings.
    """

    def __init__(self, logger: Any, *, name: str = "MLFlowLogger") -> None:
        self.logger = logger
        self.name = name

    def write(self, content: RoundContent) -> None:
        """Log the round's JSON, tables (JSON tables) and pictures (PNG) as artifacts."""
        client, run_id = self.logger.experiment, self.logger.run_id
        prefix, step = content.prefix, content.step
        folder = f"{prefix}/{step_folder_name(step)}"
        global_step = int(content.result.metadata.get("global_step", step))
        client.log_text(run_id, content.result.to_json(), f"{prefix}/{round_file_name(global_step)}")
        for tag, table in content.tables.items():
            data = {column: [row[i] for row in table.rows] for i, column in enumerate(table.columns)}
            client.log_table(run_id, data=data, artifact_file=f"{folder}/{_relative(tag, prefix)}.json")
        for tag, picture in content.images.items():
            image = picture.permute(1, 2, 0).contiguous().numpy()
            client.log_image(run_id, image, artifact_file=f"{folder}/{_relative(tag, prefix)}.png")

    def finish(self, result: Any, prefix: str) -> None:
        """Log the HTML report of the last round (``result``) under ``<prefix>/report``."""
        from lightning_dissect.report import write_report

        client, run_id = self.logger.experiment, self.logger.run_id
        with tempfile.TemporaryDirectory() as tmp:
            write_report(result, Path(tmp) / "report")
            client.log_artifacts(run_id, str(Path(tmp) / "report"), f"{prefix}/report")
