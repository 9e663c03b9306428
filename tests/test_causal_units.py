"""Causal unit sets: α ranks the units that cause a concept, not those that only match it."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from lightning_dissect import dissect
from lightning_dissect.interventions import CausalUnits, causal_units
from lightning_dissect.segmenters import (
    CallableSegmenter,
    SceneWorld,
    SyntheticSceneSegmenter,
    TorchvisionSegmenter,
    adapt_input,
    concept_scores_of,
)
from tests.helpers.painting import CausalPaintingGenerator


@pytest.fixture(scope="module")
def world() -> SceneWorld:
    return SceneWorld(32)


@pytest.fixture(scope="module")
def painted(world):
    """The painted generator, its segmenter, 32 latents, the IQR dissection and the result."""
    gen = CausalPaintingGenerator(world)
    seg = SyntheticSceneSegmenter(world)
    z = torch.randn(32, gen.latent_dim, generator=torch.Generator().manual_seed(1))
    layer = dissect(
        gen, ["units"], seg, latent_shape=(gen.latent_dim,), num_samples=48, batch_size=48, threshold_mode="iqr",
        progress=False,
    ).layers["units"]  # fmt: skip
    result = causal_units(gen, "units", "tree", seg, z, iou=layer, batch_size=16, sizes=[1, 3, 5])
    return gen, seg, z, layer, result


# ---------------------------------------------------------------------- soft scores
def test_scene_segmenter_soft_scores_argmax_is_the_label(world):
    seg = SyntheticSceneSegmenter(world)
    images, labels = world.render(6, seed=3)
    noise = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for x in (images, noise, 0.5 * images + 0.5 * noise):
        scores = seg.concept_scores(x)
        assert scores.shape == (6, world.vocabulary.num_concepts, 32, 32)
        assert torch.allclose(scores.sum(1), torch.ones(6, 32, 32), atol=1e-5)
        assert torch.equal(scores.argmax(1), seg(x))
    # the reference: softmax of -d² / T with the unlabeled logit at max_distance², as a plain loop
    x = noise[:1, :, :2, :2]
    palette = world.palette[1:]
    for i in range(2):
        for j in range(2):
            d2 = [float(((x[0, :, i, j] - colour) ** 2).sum()) for colour in palette]
            logits = [-(seg.max_distance**2) / seg.temperature] + [-d / seg.temperature for d in d2]
            top = max(logits)
            expected = [math.exp(v - top) for v in logits]
            expected = [e / sum(expected) for e in expected]
            assert seg.concept_scores(x)[0, :, i, j].tolist() == pytest.approx(expected, abs=1e-5)


def test_scene_segmenter_soft_scores_are_differentiable_and_follow_resolution(world):
    images, _ = world.render(2, seed=0)
    x = images.clone().requires_grad_(True)
    seg = SyntheticSceneSegmenter(world, resolution=16, multilabel=True)
    scores = seg.concept_scores(x)
    assert scores.shape == (2, world.vocabulary.num_concepts, 16, 16)
    house, window = world.vocabulary.index("house"), world.vocabulary.index("window")
    flat = SyntheticSceneSegmenter(world, resolution=16).concept_scores(images)
    assert torch.allclose(scores[:, house], flat[:, house] + sum(
        flat[:, k] for k in range(flat.shape[1]) if int(world.vocabulary.parent_table()[k]) == house
    ), atol=1e-6)  # fmt: skip
    assert window != house
    scores[:, house].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_adapter_exposes_class_probabilities():
    model = nn.Conv2d(3, 4, 1)
    seg = TorchvisionSegmenter(model, ["background", "a", "b", "c"], background_as_unlabeled=False, input_size=None)
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    scores = seg.concept_scores(images)
    assert scores.shape == (2, 5, 8, 8)  # "unlabeled" + the 4 classes
    assert torch.all(scores[:, 0] == 0)
    # reference: softmax of the model's logits on the normalised images
    x = ((images + 1) / 2 - seg.mean) / seg.std
    expected = torch.softmax(model(x), 1)
    assert torch.allclose(scores[:, 1:], expected, atol=1e-6)
    assert torch.equal(scores.argmax(1), seg(images))


def test_segmenter_without_soft_scores_is_refused(world):
    labels_only = CallableSegmenter(lambda x: (x[:, 0] > 0).long(), world.vocabulary)
    message = r"`segmenter` \(CallableSegmenter\) has no soft concept scores.*concept_scores"
    with pytest.raises(TypeError, match=message):
        concept_scores_of(labels_only)
    with pytest.raises(TypeError, match="concept_scores"):
        adapt_input(labels_only, value_range=(0, 1)).concept_scores(torch.zeros(1, 3, 4, 4))
    gen = CausalPaintingGenerator(world)
    with pytest.raises(TypeError, match="no soft concept scores"):
        causal_units(gen, "units", "tree", labels_only, torch.zeros(2, gen.latent_dim), iou=torch.zeros(gen.num_units))


# ---------------------------------------------------------------------- the method
def test_alpha_ranks_causing_units_first_while_iou_ranks_decoys_first(painted):
    gen, _, _, layer, result = painted
    tree = layer.vocabulary.index("tree") if hasattr(layer, "vocabulary") else result.concept_index
    iou = layer.iou[:, tree]
    iou_top = torch.sort(iou, descending=True).indices[: len(gen.decoys)].tolist()
    assert sorted(iou_top) == gen.decoys  # IoU: the decoys match the concept best
    ranking = result.ranking.tolist()
    assert sorted(ranking[: len(gen.strong)]) == gen.strong  # α: the strong units first
    assert sorted(ranking[len(gen.strong) : len(gen.strong) + len(gen.weak)]) == gen.weak  # then the weak
    assert all(float(result.alpha[u]) < 0.1 for u in gen.decoys + gen.others)
    assert all(float(result.alpha[u]) > 0.5 for u in gen.strong + gen.weak)
    # the decoys cause nothing: their gradient is exactly 0; the causing units' is negative
    assert all(float(result.gradient[u]) == 0.0 for u in gen.decoys)
    assert all(float(result.gradient[u]) < 0.0 for u in gen.strong + gen.weak)


def test_top_alpha_units_remove_the_concept_the_top_iou_units_do_not(painted):
    gen, seg, z, _, result = painted
    three = next(c for c in result.comparison if c.n == 3)
    assert sorted(three.units_alpha) == gen.strong and sorted(three.units_iou) == gen.decoys
    # reference: count the concept's pixels of the edited images directly
    tree = seg.vocabulary.index("tree")

    def fraction(units: list[int]) -> float:
        def hook(_m, _i, out):
            out = out.clone()
            out[:, units] = 0
            return out

        handle = gen.units.register_forward_hook(hook)
        try:
            with torch.no_grad():
                labels = seg(gen(z))
        finally:
            handle.remove()
        return float((labels == tree).double().mean())

    assert result.baseline == pytest.approx(fraction([]), abs=1e-12)
    assert three.ablated_alpha == pytest.approx(fraction(gen.strong), abs=1e-12)
    assert three.ablated_iou == pytest.approx(fraction(gen.decoys), abs=1e-12)
    assert three.ablated_alpha < 0.05 * result.baseline
    assert three.ablated_iou == pytest.approx(result.baseline)  # the decoys cause nothing
    assert three.inserted_alpha > three.inserted_iou
    assert result.passes_per_image == 2 * result.settings["steps"] <= 20
    assert result.num_images == 32 and 0 < result.num_images_with_concept <= 32


def test_generator_untouched_no_gradient_leaks_global_rng_unmoved(world):
    gen = nn.Sequential(nn.Linear(6, 4 * 4 * 4), nn.Unflatten(1, (4, 4, 4)), nn.ReLU(), nn.Conv2d(4, 3, 1), nn.Tanh())
    seg = SyntheticSceneSegmenter(world)
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    z = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    gen.train()
    concept = int(seg(gen(z)).flatten().mode().values)  # a concept these images show
    result = causal_units(gen, "2", concept, seg, z, iou=torch.rand(4, generator=torch.Generator()), steps=2)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in gen.parameters())
    assert all(p.requires_grad for p in gen.parameters())
    assert gen.training
    assert all(torch.equal(before[k], v) for k, v in gen.state_dict().items())
    assert result.alpha.shape == (4,) and bool(((result.alpha >= 0) & (result.alpha <= 1)).all())


def test_runs_inside_inference_mode(painted):
    gen, seg, z, layer, _ = painted
    with torch.inference_mode():
        result = causal_units(gen, "units", "tree", seg, z[:8], iou=layer, steps=1, sizes=[1])
    assert result.alpha.shape == (gen.num_units,)


def test_json_round_trip(painted, tmp_path):
    result = painted[-1]
    path = result.save_json(tmp_path / "causal.json")
    loaded = CausalUnits.load_json(path)
    assert loaded.alpha.tolist() == pytest.approx(result.alpha.tolist())
    assert loaded.to_dict() == result.to_dict()
    assert len(loaded.to_dict()["alpha"]) == painted[0].num_units


# ---------------------------------------------------------------------- bad input
def test_bad_input(world, painted):
    gen, seg, z, layer, _ = painted
    run = dict(generator=gen, layer="units", segmenter=seg, latents=z[:4], iou=layer)
    with pytest.raises(KeyError, match="`concept`: .*closest concept names: 'tree'"):
        causal_units(concept="treee", **run)
    with pytest.raises(ValueError, match="'water' does not appear in any of the 4 sample images"):
        causal_units(concept="water", **run)
    with pytest.raises(ValueError, match="unit"):
        causal_units(**{**run, "layer": "unitz"}, concept="tree")
    for key, value, name in [("l2", -1.0, "l2"), ("steps", 0, "steps"), ("lr", 0.0, "lr"), ("lr", float("nan"), "lr"),
                             ("steps", 20_000, "steps"), ("l2", 5.0, "l2")]:  # fmt: skip
        with pytest.raises(ValueError, match=f"`{name}`"):
            causal_units(concept="tree", **run, **{key: value})
    for key, value in [("steps", 2.5), ("lr", "fast"), ("l2", True)]:  # a wrong type is a TypeError
        with pytest.raises(TypeError, match=f"`{key}`"):
            causal_units(concept="tree", **run, **{key: value})
    with pytest.raises(ValueError, match="`sizes`"):
        causal_units(concept="tree", **run, sizes=[0])


def test_layer_that_cannot_be_edited_is_refused(world):
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    class Gen(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3 * 16)
            self.pair = Pair()

        def forward(self, z):
            a, _ = self.pair(self.lin(z).view(-1, 3, 4, 4))
            return torch.tanh(a)

    seg = SyntheticSceneSegmenter(world)
    # refused before any generator call: a plain callable selector cannot write the edit back
    with pytest.raises(TypeError, match="layer 'pair': editing a layer whose output is selected by a plain callable"):
        causal_units(Gen(), "pair", 1, seg, torch.randn(2, 4), iou=torch.zeros(3), selector=lambda out: out[0])


# ---------------------------------------------------------------------- command line and report
CAUSAL_FACTORY = "tests.helpers.painting:make_causal_painting_generator"


def test_cli_writes_causal_json_and_report(capsys, tmp_path):
    from lightning_dissect.cli import main

    out = tmp_path / "out"
    code = main([
        "causal", "--generator", CAUSAL_FACTORY, "--layer", "units", "--concept", "tree", "--num-samples", "48",
        "--causal-samples", "16", "--threshold-mode", "iqr", "--steps", "4", "--sizes", "1,3", "--output", str(out),
        "--quiet",
    ])  # fmt: skip
    stdout, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads((out / "causal.json").read_text())
    gen = CausalPaintingGenerator(SceneWorld(32))
    assert len(data["alpha"]) == gen.num_units and data["layer"] == "units" and data["concept"] == "tree"
    assert data["settings"]["steps"] == 4 and data["num_images"] == 16
    assert [c["n"] for c in data["comparison"]] == [1, 3]
    assert sorted(data["ranking"][:3]) == gen.strong
    for page in ("causal.html", "index.html"):
        html = (out / page).read_text()
        assert "Causal units of <code>tree</code>" in html and "top-n by α" in html
    names = sorted(p.name for p in (out / "images" / "causal-units-tree").iterdir())
    top6 = [f"unit-{u:04d}.png" for u in sorted(data["ranking"][:6])]
    assert names == ["ablated.png", "before.png", "inserted.png", *top6]  # + the top α units' strips
    assert "Top units by α: their top images" in (out / "causal.html").read_text()
    assert "causal.json" in stdout


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--concept", "treee"], "--concept: 'treee' is not a concept of this vocabulary; closest concept names: 'tree'"),  # noqa: E501
        (["--concept", "tree", "--lr", "2"], "lr"),
        (["--concept", "tree", "--segmenter", "tests.test_causal_units:labels_only_segmenter"], "no soft concept"),
    ],
)
def test_cli_errors_are_one_line(capsys, tmp_path, argv, fragment):
    from lightning_dissect.cli import main

    code = main(["causal", "--generator", CAUSAL_FACTORY, "--layer", "units", "--num-samples", "8", "--quiet",
                 "--output", str(tmp_path / "o"), *argv])  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: ") and fragment in err, err


def labels_only_segmenter() -> CallableSegmenter:
    world = SceneWorld(32)
    return CallableSegmenter(SyntheticSceneSegmenter(world), world.vocabulary)


def test_report_section_matches_the_result(painted, tmp_path):
    from lightning_dissect.report import write_causal_report

    result = painted[-1]
    page = write_causal_report([result], tmp_path).read_text()
    for c in result.comparison:  # the table shows every measured fraction relative to the baseline
        for value in (c.ablated_alpha, c.ablated_iou, c.inserted_alpha):
            assert f"{value / result.baseline:.1%}" in page
    assert page.count('class="causal-curve"') == 2 and 'class="alpha-profile"' in page
    assert page.count("<rect") == len(result.alpha)  # one α bar per unit


def test_to_json_and_from_json_as_for_results(tmp_path):
    units = CausalUnits(
        "conv", "tree", 3, alpha=torch.tensor([0.25, 0.0, 1.0]), ranking=torch.tensor([2, 0, 1]),
        iou=torch.tensor([0.1, 0.0, 0.3]), gradient=torch.tensor([-0.5, 0.0, -1.0]),
        insertion_value=torch.ones(3), baseline=0.3, seed=7,
    )
    target = tmp_path / "sub" / "causal.json"
    text = units.to_json(target)
    assert json.loads(target.read_text()) == json.loads(text) == units.to_dict()
    for source in (text, target, str(target)):
        assert CausalUnits.from_json(source).to_dict() == units.to_dict()
    with pytest.warns(DeprecationWarning, match="to_json"):
        old = units.save_json(tmp_path / "old.json")
    assert old.read_text() == text  # the same bytes as before: indent 1
    with pytest.warns(DeprecationWarning, match="from_json"):
        assert CausalUnits.load_json(old).to_dict() == units.to_dict()
