"""``FolderWriter``: a round's PNGs are written atomically, with the permissions of a plain open."""

from __future__ import annotations

import os

import pytest
import torch

from lightning_dissect import ConceptVocabulary
from lightning_dissect.loggers.content import RoundContent
from lightning_dissect.loggers.folder import FolderWriter, step_folder
from lightning_dissect.result import DissectionResult, LayerDissection, UnitDissection
from lightning_dissect.visual.visualize import encode_png


def _content(value: int) -> RoundContent:
    vocab = ConceptVocabulary(("unlabeled", "sky"), ("none", "material"))
    unit = UnitDissection(0, "sky", 1, "material", 0.5, 0.2, 1.0, True, 0.0)
    result = DissectionResult({"conv": LayerDissection("conv", [unit], torch.tensor([[0.0, 0.5]]))}, vocab,
                              metadata={"global_step": 3})
    image = torch.full((3, 4, 5), value, dtype=torch.uint8)
    return RoundContent(prefix="dissection", step=3, result=result, images={"dissection/conv/unit_strips": image})


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_pngs_are_replaced_atomically_with_plain_open_permissions(tmp_path, monkeypatch):
    writer = FolderWriter(tmp_path, round_file=False)
    old = os.umask(0o022)
    try:
        writer.write(_content(10))
    finally:
        os.umask(old)
    png = step_folder(tmp_path, "dissection", 3) / "conv" / "unit_strips.png"
    assert png.read_bytes() == encode_png(torch.full((3, 4, 5), 10, dtype=torch.uint8))
    assert png.stat().st_mode & 0o777 == 0o644

    def fail(fd):  # the disk fails before the new picture is safely written
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        writer.write(_content(200))
    # the old picture is intact and no temporary file is left beside it
    assert png.read_bytes() == encode_png(torch.full((3, 4, 5), 10, dtype=torch.uint8))
    assert sorted(p.name for p in png.parent.iterdir()) == ["unit_strips.png"]
