"""Read back what an offline W&B run wrote: its history rows and its logged tables (with images).

An offline run keeps its records in ``<dir>/wandb/offline-run-*/run-*.wandb`` (a LevelDB-style
log of ``wandb.proto`` ``Record`` messages). Tables logged to a run become ``run_table``
artifacts whose files (the table JSON and the images its cells point to) are staged under
``$WANDB_DATA_DIR/artifacts/staging``; each artifact record's manifest maps the table's paths to
those staged files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator


def records(run_file: str | Path) -> Iterator[Any]:
    """Every ``Record`` of an offline run file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(run_file).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, block, pending = 7, 32768, b""  # 7-byte file header; records never straddle a 32 KiB block's last 6 bytes
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]  # 1 full, 2 first, 3 middle, 4 last
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        if kind == 2:
            pending = chunk
            continue
        if kind == 3:
            pending += chunk
            continue
        whole = pending + chunk if kind == 4 else chunk
        pending = b""
        record = pb.Record()
        record.ParseFromString(whole)
        yield record


def run_file(save_dir: str | Path) -> Path:
    found = sorted(Path(save_dir).glob("wandb/offline-run-*/run-*.wandb"))
    assert len(found) == 1, found
    return found[0]


def history(save_dir: str | Path) -> list[dict[str, Any]]:
    """The run's history rows (``run.log`` calls) as ``key -> value`` (nested keys joined by ``/``)."""
    rows = []
    for record in records(run_file(save_dir)):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def tables(save_dir: str | Path) -> list[tuple[str, dict[str, Any], dict[str, Path]]]:
    """Every logged table: ``(key, table JSON, {artifact path: staged file})``, in logging order."""
    out = []
    for record in records(run_file(save_dir)):
        if record.WhichOneof("record_type") != "artifact" or record.artifact.type != "run_table":
            continue
        files = {entry.path: Path(entry.local_path) for entry in record.artifact.manifest.contents}
        for path, local in files.items():
            if path.endswith(".table.json"):
                out.append((path[: -len(".table.json")], json.loads(local.read_text()), files))
    return out
