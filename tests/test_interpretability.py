"""Which units count as interpretable: one rule, checked against a plain loop of its definition."""

from __future__ import annotations

import math
import random

import pytest
import torch

from lightning_dissect import dissect
from lightning_dissect.config import DissectionConfig
from lightning_dissect.interpretability import InterpretabilityRule
from lightning_dissect.report import write_report
from lightning_dissect.result import DissectionResult
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
from tests.helpers.painting import PaintingGenerator


def reference(iou, chance, iqr, *, rule, cut, ratio, iqr_cut=None, p=None, excess=0.05, alpha=0.001) -> bool:
    """The definition written out: IoU above the cut; IQR above its cut (iqr mode); for the ratio
    rule, IoU at least `ratio` times a measured chance IoU; for the default rule, the excess
    (IoU - chance) / (1 - chance) at least `excess` and a p-value of at most `alpha`."""
    if iou is None or iou != iou or iou in (math.inf, -math.inf) or not iou > cut:
        return False
    if iqr_cut is not None and not (iqr is not None and iqr > iqr_cut):
        return False
    if rule == "paper":
        return True
    if chance is None:
        return False
    if rule == "chance_ratio":
        return iou >= ratio * chance
    kappa = (iou - chance) / (1 - chance) if chance < 1 else 0.0
    return p is not None and p == p and kappa >= excess and p <= alpha


def test_the_cases_that_misled_are_not_interpretable_at_chance():
    rule = InterpretabilityRule("chance_ratio")
    assert not rule(0.118, 0.114)  # badged by the fixed cut before
    assert not InterpretabilityRule("chance_ratio", iou_threshold=0.0)(0.061, 0.061)
    assert not rule(0.2, None)  # no chance IoU measured: nothing shows it is above chance
    assert rule(0.118, 0.05) and rule(0.3, 0.0)
    # the ratio cannot count a perfect detector of a large concept; the default rule does
    assert not rule(1.0, 0.674) and InterpretabilityRule()(1.0, 0.674, p_value=0.0002)
    default = InterpretabilityRule()
    assert not default(0.678, 0.668, p_value=0.3) and not default(0.234, 0.234, p_value=0.5)
    assert not default(0.3, 0.0)  # no p-value: not shown to be above chance
    # the papers' fixed cut stays available by name
    paper = InterpretabilityRule("paper")
    assert paper(0.118, 0.114) and InterpretabilityRule("paper", iou_threshold=0.0)(0.061, 0.061)


@pytest.mark.parametrize("name", ["significant", "chance_ratio", "paper"])
@pytest.mark.parametrize("iqr_cut", [None, 0.01])
def test_mask_and_call_match_the_definition(name, iqr_cut):
    rng = random.Random(7)
    rule = InterpretabilityRule(name, iou_threshold=0.04, chance_ratio=1.7, iqr_threshold=iqr_cut,
                                min_excess=0.05, max_p_value=0.001)
    iou = [rng.choice([0.0, 0.04, 0.05, 0.1, 0.3, 1.0, float("nan"), rng.random() * 0.2]) for _ in range(400)]
    chance = [rng.choice([0.0, 0.02, 0.05, 0.1, 0.7, rng.random() * 0.2]) for _ in range(400)]
    iqr = [rng.choice([0.0, 0.01, 0.02, rng.random() * 0.05]) for _ in range(400)]
    p = [rng.choice([0.0002, 0.001, 0.0011, 0.01, 0.5, float("nan"), rng.random() * 0.003]) for _ in range(400)]
    expected = [reference(i, c, q, rule=name, cut=0.04, ratio=1.7, iqr_cut=iqr_cut, p=pv)
                for i, c, q, pv in zip(iou, chance, iqr, p)]
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731  (values exactly as the reference has them)
    got = rule.mask(f64(iou), f64(chance), f64(iqr), f64(p)).tolist()
    assert got == expected
    assert [rule(i, c, q, p_value=pv) for i, c, q, pv in zip(iou, chance, iqr, p)] == expected
    no_chance = rule.mask(f64(iou), None, f64(iqr), f64(p)).tolist()
    assert no_chance == [reference(i, None, q, rule=name, cut=0.04, ratio=1.7, iqr_cut=iqr_cut, p=pv)
                         for i, q, pv in zip(iou, iqr, p)]


def test_bad_settings_name_the_argument():
    with pytest.raises(ValueError, match="`interpretable`.*'strict'"):
        DissectionConfig(interpretable="strict").validate()
    with pytest.raises(ValueError, match=r"`chance_ratio` must be in \[1, .*0\.5"):
        DissectionConfig(chance_ratio=0.5).validate()
    with pytest.raises(ValueError, match="`chance_ratio` must be a finite number >= 1"):
        InterpretabilityRule(chance_ratio=float("nan"))
    with pytest.raises(ValueError, match="`chance_baseline`=False.*`interpretable`='paper'"):
        DissectionConfig(chance_baseline=False).validate()
    with pytest.raises(ValueError, match="`chance_groups` must be at most 16"):
        DissectionConfig(chance_groups=20).validate()
    with pytest.raises(ValueError, match="`max_p_value` must be in"):
        DissectionConfig(max_p_value=1.5).validate()
    assert DissectionConfig(chance_baseline=False, interpretable="paper").validate()


def test_results_without_the_setting_read_as_the_papers_cut():
    assert InterpretabilityRule.from_settings({}).name == "paper"
    rule = InterpretabilityRule.from_settings({"interpretable": "chance_ratio", "chance_ratio": 3.0,
                                               "iou_threshold": 0.05, "threshold_mode": "iqr", "iqr_threshold": 0.02})
    assert rule == InterpretabilityRule("chance_ratio", 0.05, 3.0, 0.02)
    rule = InterpretabilityRule.from_settings({"interpretable": "significant", "min_excess": 0.1, "max_p_value": 0.05})
    assert (rule.name, rule.min_excess, rule.max_p_value) == ("significant", 0.1, 0.05)


@pytest.fixture(scope="module")
def dissected():
    world = SceneWorld(32)
    painter = PaintingGenerator(world, ["tree", "house", "water", "sun"])
    segmenter = SyntheticSceneSegmenter(world)
    common = dict(latent_shape=(painter.latent_dim,), num_samples=96, batch_size=48, progress=False,
                  iou_threshold=0.0, quantile=0.9)
    return {name: dissect(painter, ["layout", "canvas"], segmenter, interpretable=name, **common)
            for name in ("significant", "chance_ratio", "paper")}


def test_dissect_badges_every_unit_by_the_rule(dissected, tmp_path):
    for name, result in dissected.items():
        assert result.settings["interpretable"] == name and result.rule.name == name
        for layer in result.layers.values():
            for u in layer.units:
                assert u.interpretable == reference(u.iou, u.chance_iou, u.iou_iqr, rule=name, cut=0.0, ratio=2.0,
                                                    p=u.p_value)
    chance, paper = dissected["chance_ratio"], dissected["paper"]
    # the same labels either way; some units pass the fixed cut but not the chance rule
    for name in chance.layers:
        assert [u.label for u in chance[name].units] == [u.label for u in paper[name].units]
    # the painting generator's last layout unit is noise: it passes the fixed cut at its chance IoU
    at_chance = [u.unit for u in paper["layout"].units if u.interpretable and not u.iou >= 2 * u.chance_iou]
    assert at_chance == [4]
    assert chance["layout"].num_interpretable == paper["layout"].num_interpretable - 1 == 4
    assert [u.label for u in chance["layout"].units if u.interpretable] == ["tree", "house", "water", "sun"]
    significant = dissected["significant"]
    assert [u.label for u in significant["layout"].units if u.interpretable] == ["tree", "house", "water", "sun"]
    # the report, the JSON round trip and the console say which rule decided
    page = write_report(chance, tmp_path / "report").read_text()
    assert "label IoU &gt; 0 and ≥ 2× its chance IoU" in page
    loaded = DissectionResult.from_json(chance.to_json())
    assert [u.interpretable for u in loaded["layout"].units] == [u.interpretable for u in chance["layout"].units]
    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(chance.summary())
    assert "interpretable: label IoU > 0 and ≥ 2× its chance IoU (rule 'chance_ratio')" in console.export_text()
