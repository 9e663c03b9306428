"""The ablation table shows every measure for the chosen units and the random control side by side."""

from __future__ import annotations

import math

from lightning_dissect.interventions import AblationEffect
from lightning_dissect.report._ablation_table import ablation_markdown, ablation_rows


def effect(concept: str, units: list[int], baseline: float, ablated: float, control_ablated: float) -> AblationEffect:
    drop, control_drop = baseline - ablated, baseline - control_ablated
    return AblationEffect(layer="l", concept=concept, concept_index=1, units=units, baseline=baseline,
                          ablated=ablated, drop=drop, relative_drop=drop / baseline,
                          control_ablated=control_ablated, control_drop=control_drop,
                          control_relative_drop=control_drop / baseline)


def test_relative_next_to_relative_and_absolute_next_to_absolute():
    # the case that misled: sky's relative drop 0.893 stood next to the control's *absolute* 0.0538
    sky = effect("sky", list(range(20)), baseline=0.1076, ablated=0.0115, control_ablated=0.0538)
    table = ablation_markdown([sky])
    header, rule, row = table.splitlines()
    columns = [c.strip() for c in header.strip("|").split("|")]
    cells = dict(zip(columns, (c.strip() for c in row.strip("|").split("|"))))
    assert cells["concept"] == "sky" and cells["units off"] == "20"
    # hand-computed: drops 0.1076 − 0.0115 = 0.0961 and 0.1076 − 0.0538 = 0.0538;
    # relative 0.0961 / 0.1076 = 89.3 %, 0.0538 / 0.1076 = 50.0 %
    assert (cells["drop: units"], cells["drop: random"]) == ("0.0961", "0.0538")
    assert (cells["relative drop: units"], cells["relative drop: random"]) == ("89.3 %", "50.0 %")
    assert (cells["ablated: units"], cells["ablated: random"]) == ("0.0115", "0.0538")
    # every measure appears for both, and each name says which it is
    for measure in ("ablated", "drop", "relative drop"):
        assert f"{measure}: units" in columns and f"{measure}: random" in columns
    assert "control drop" not in header


def test_missing_control_reads_as_a_dash():
    record = effect("tree", [1], baseline=0.2, ablated=0.1, control_ablated=0.2).to_dict()
    record["control_relative_drop"] = math.nan
    record["control_ablated"] = None
    row = ablation_rows([record])[0]
    assert row[3] == "0.1000" and row[4] == "–" and row[-1] == "–" and row[-2] == "50.0 %"
