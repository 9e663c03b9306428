"""DissectionCallback with causal unit sets: off by default, every n rounds, logged, training unchanged."""

from __future__ import annotations

import warnings

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_dissect.segmenters import CallableSegmenter, SyntheticSceneSegmenter
from tests.test_callback import fit, make_callback

CONCEPTS = ["mountain", "road", "water"]  # the tiny GAN draws the first two, never water


def test_causal_sets_are_logged_every_n_rounds_and_training_is_unchanged(tmp_path):
    _, without = fit(tmp_path / "a", [], max_epochs=3, enable_checkpointing=False)
    callback = make_callback(
        ablation_check=False, causal_concepts=CONCEPTS, causal_every_n_rounds=2, causal_layer="layer2",
        causal_samples=8, causal_options={"steps": 2, "sizes": [1, 2]},
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, model = fit(tmp_path / "b", [callback], max_epochs=3, enable_checkpointing=False)
    for (name, a), (_, b) in zip(without.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name  # the same weights: α never trains the generator
    assert all(p.grad is None or p.requires_grad for p in model.parameters())
    assert all(p.requires_grad for p in model.generator.parameters())
    assert len(callback.history) == 3
    assert ["causal" in e for e in callback.history] == [True, False, True], [str(w.message)[:300] for w in caught]
    learned = list(callback.history[0]["causal"])
    assert learned == ["mountain", "road"]
    # a concept absent from the samples is warned about (each causal round) and the round still logged
    absent = [str(w.message) for w in caught if "causal units of 'water'" in str(w.message)]
    assert len(absent) == 2 and "does not appear in any of the 8 sample images" in absent[0]
    concept = learned[0]
    record = callback.history[-1]["causal"][concept]
    assert record["layer"] == "layer2" and len(record["alpha"]) == 16 and len(record["top"]) == 8
    acc = EventAccumulator(trainer.logger.log_dir, size_guidance={"tensors": 0, "scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    prefix = f"dissection/layer2/causal/{concept}/"
    for ranking in ("alpha", "iou", "random"):
        for n in (1, 2):
            assert f"{prefix}left/{ranking}/n{n}" in tags["scalars"]
            assert f"{prefix}inserted/{ranking}/n{n}" in tags["scalars"]
    assert [e.step for e in acc.Scalars(prefix + "alpha_mass")] == [3, 11]
    assert acc.Scalars(prefix + "alpha_mass")[-1].value == pytest.approx(sum(record["alpha"]), abs=1e-2)
    overlap = acc.Scalars(prefix + "top_overlap")  # from the second causal round on
    assert len(overlap) == 1
    top0 = callback.history[0]["causal"][concept]["top"]
    assert overlap[0].value == pytest.approx(len(set(top0) & set(record["top"])) / 8)
    assert prefix + "alpha" in tags["histograms"]
    assert f"dissection/layer2/causal/{concept}/text_summary" in tags["tensors"]
    last = callback.last_causal[learned.index(concept)]
    logged = acc.Scalars(f"{prefix}left/alpha/n1")[-1].value
    assert logged == pytest.approx(last.curve("ablated", "alpha")[0], rel=1e-6)


def test_causal_sets_are_off_by_default_and_checked_early(tmp_path):
    callback = make_callback(ablation_check=False)
    assert callback.causal is None
    for kwargs, match in [
        ({"causal_concepts": ["sky"], "causal_layer": "nope"}, "`causal_layer`"),
        ({"causal_concepts": ["sky"], "causal_every_n_rounds": 0}, "`causal_every_n_rounds`"),
        ({"causal_concepts": ["sky"], "causal_options": {"lr": 5.0}}, "`lr`"),
        ({"causal_concepts": ["sky"], "causal_options": {"epochs": 2}}, "unknown keys"),
    ]:
        with pytest.raises(ValueError, match=match):
            make_callback(**kwargs)
    unknown = make_callback(causal_concepts=["skyy"])
    with pytest.raises(KeyError, match="`concept`: .*closest concept names: 'sky'"):
        fit(tmp_path / "u", [unknown], max_epochs=1, enable_checkpointing=False)
    world_labels = SyntheticSceneSegmenter(16)
    labels_only = CallableSegmenter(world_labels, world_labels.vocabulary)
    from lightning_dissect.callbacks.generator import DissectionCallback

    no_scores = DissectionCallback(["layer1"], labels_only, causal_concepts=["sky"], num_samples=16)
    with pytest.raises(TypeError, match="no soft concept scores"):
        fit(tmp_path / "s", [no_scores], max_epochs=1, enable_checkpointing=False)
