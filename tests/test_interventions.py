"""Interventions on a hand-built generator whose unit ``k`` paints concept ``k``.

The painting generator (``tests/helpers/painting.py``) is ground truth: switching unit ``k`` off
must remove its concept (relative drop 1), other units must barely matter, insertion must create
the concept where it is written, and every fraction can be recomputed by painting edited maps by
hand. One test spawns two gloo processes and checks that ``ablation_check`` and
``ConceptPixelFraction`` give bit-identical results to one process.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

try:
    from tests.helpers.painting import PaintingGenerator
except ImportError:  # tests/ itself is on sys.path
    from helpers.painting import PaintingGenerator

from lightning_dissect.engine.hooks import LayerEdit
from lightning_dissect.engine.latents import LatentBank, noise_seed
from lightning_dissect.interventions import (
    AblationEffect,
    ablate,
    ablation_check,
    ablation_curve,
    ablation_effect,
    average_causal_effect,
    insert,
    insertion_effect,
    intervene,
    random_units,
    unit_statistics,
)
from lightning_dissect.metrics import ConceptPixelFraction
from lightning_dissect.result import DissectionResult, LayerDissection, UnitDissection
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter

SIZE, LOW, SAMPLES = 16, 4, 32
CONCEPTS = ["tree", "tree", "tree", "house", "water", "road", "fence", "cloud", "sun", "roof"]
LAYER = "layout"


def make_world():
    world = SceneWorld(SIZE)
    return world, SyntheticSceneSegmenter(world)


def make_generator(world, **kwargs):
    return PaintingGenerator(world, CONCEPTS, size=SIZE, low=LOW, **kwargs)


def make_latents(gen, n=SAMPLES, seed=0):
    return torch.randn(n, gen.latent_dim, generator=torch.Generator().manual_seed(seed))


class TwoLayerPainting(PaintingGenerator):
    """The painting generator with a second hook ``"second"`` after ``"layout"`` and optional noise.

    With ``noise > 0`` the maps get ``noise * torch.randn_like(maps)`` between the two layers (a
    generator that draws from the global RNG in ``forward``).
    """

    def __init__(self, world, noise: float = 0.0, **kwargs):
        super().__init__(world, CONCEPTS, size=SIZE, low=LOW, **kwargs)
        self.second = nn.Identity()
        self.noise = noise

    def forward(self, z):
        maps = self.layout(self.unit_maps(z))
        if self.noise:
            maps = maps + self.noise * torch.randn_like(maps)
        images, _ = self.paint(self.second(maps))
        return images


def painted_layer_result(gen, world, layer_name: str = LAYER) -> LayerDissection:
    """What a perfect dissection says: unit k is interpretable for its concept."""
    vocab = world.vocabulary
    units = []
    iou = torch.zeros(gen.num_units, vocab.num_concepts)
    for u in range(gen.num_units):
        name = gen.concept_of_unit(u)
        painted = name != "random"
        label = name if painted else "sky"
        value = 0.5 - 0.01 * u if painted else 0.01
        iou[u, vocab.index(label)] = value
        units.append(
            UnitDissection(
                unit=u, label=label, concept_index=vocab.index(label),
                category=vocab.categories[vocab.index(label)], iou=value, iou_iqr=0.1,
                level=0.5, interpretable=painted, chance_iou=0.0,
            )
        )  # fmt: skip
    return LayerDissection(layer_name, units, iou)


def reference_fraction(gen, seg, maps, concept, region=None):
    """Paint edited layout maps by hand and count the concept's pixels (the definition)."""
    with torch.inference_mode():
        images, _ = gen.paint(maps)
        labels = seg(images)
    hit = labels == concept
    if region is None:
        return float(hit.sum()) / hit.numel()
    inside = region.bool().expand_as(hit)
    return float(hit[inside].sum()) / float(inside.sum())


@pytest.fixture(scope="module")
def setup():
    world, seg = make_world()
    gen = make_generator(world)
    return world, seg, gen, make_latents(gen)


# ------------------------------------------------------------------------- edit helpers
def test_ablate_and_insert_build_the_rule():
    edit = ablate([2, 0, 2], 4)
    assert edit.alpha.tolist() == [1.0, 0.0, 1.0, 0.0] and edit.value == 0.0 and edit.mask is None
    mask = torch.tensor([True, False, False, True])
    assert ablate(mask, 4).alpha.tolist() == [1.0, 0.0, 0.0, 1.0]
    mean = ablate([1], 2, mode="mean", mean=torch.tensor([0.25, 0.5]))
    assert mean.value.tolist() == [0.25, 0.5]
    region = torch.ones(8, 8)
    ins = insert([1], 3, torch.tensor([1.0, 2.0, 3.0]), region, alpha=0.5)
    assert ins.alpha.tolist() == [0.0, 0.5, 0.0] and ins.mask is region
    with pytest.raises(ValueError, match="mean"):
        ablate([0], 2, mode="mean")
    with pytest.raises(ValueError, match="mode"):
        ablate([0], 2, mode="half")
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ablate([3], 3)
    with pytest.raises(ValueError, match="shape"):
        insert([0], 3, torch.ones(2))
    with pytest.raises(ValueError, match="alpha"):
        insert([0], 3, 1.0, alpha=1.5)


def test_intervene_several_layers_and_always_removed():
    net = nn.Sequential(nn.Conv2d(1, 3, 1), nn.ReLU(), nn.Conv2d(3, 2, 1), nn.ReLU())
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    before = net(x).detach()
    edits = {"1": ablate([0, 1, 2], 3), "3": insert([1], 2, torch.tensor([0.0, 7.0]))}
    with intervene(net, edits) as same:
        assert same is net
        out = net(x).detach()
    assert torch.equal(out[:, 1], torch.full_like(out[:, 1], 7.0))
    assert torch.allclose(out[:, 0], net[2].bias[0].relu().detach().expand_as(out[:, 0]))
    assert all(not m._forward_hooks for m in net.modules())
    assert torch.equal(net(x).detach(), before)
    with pytest.raises(RuntimeError, match="boom"):
        with intervene(net, edits):
            net(x)
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in net.modules())
    assert torch.equal(net(x).detach(), before)
    with pytest.raises(TypeError, match="LayerEdit"):
        with intervene(net, {"1": 0.0}):  # type: ignore[dict-item]
            pass
    with pytest.raises(ValueError, match="alpha"):
        with intervene(net, {"1": LayerEdit(alpha=2.0)}):
            pass
    with pytest.raises(ValueError, match="unknown layer"):
        with intervene(net, {"9": ablate([0], 3)}):
            pass
    assert all(not m._forward_hooks for m in net.modules())


def test_random_units_private_and_disjoint():
    state = torch.get_rng_state()
    a = random_units(20, 5, [0, 1, 2], generator=torch.Generator().manual_seed(3))
    b = random_units(20, 5, [0, 1, 2], generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and len(set(a.tolist())) == 5
    assert not set(a.tolist()) & {0, 1, 2}
    assert random_units(4, 2, [0, 1, 2], generator=torch.Generator()) is None
    assert torch.equal(torch.get_rng_state(), state)


# ------------------------------------------------------------------------- statistics
def test_unit_statistics_mean_and_quantile(setup):
    world, seg, gen, z = setup
    stats = unit_statistics(gen, LAYER, LatentBank(SAMPLES, (gen.latent_dim,), seed=5),
                            batch_size=10)  # fmt: skip
    maps = gen.unit_maps(LatentBank(SAMPLES, (gen.latent_dim,), seed=5).latents)
    flat = maps.transpose(0, 1).reshape(gen.num_units, -1).double()
    torch.testing.assert_close(stats.mean.double(), flat.mean(1), rtol=1e-6, atol=1e-7)
    k = int(torch.ceil(torch.tensor(0.99 * flat.shape[1])))
    exact = flat.kthvalue(k, dim=1).values
    assert ((stats.high.double() - exact).abs() <= 0.006 * exact.abs()).all()
    assert stats.num_samples == SAMPLES and stats.quantile == 0.99 and stats.num_units == 11


# ------------------------------------------------------------------------- ablation
def test_ablating_a_unit_removes_its_concept_not_a_random_one(setup):
    world, seg, gen, z = setup
    gen.train()
    state = torch.get_rng_state()
    house = world.vocabulary.index("house")
    effect = ablation_effect(gen, LAYER, [3], "house", seg, z, num_controls=3, batch_size=12)
    assert isinstance(effect, AblationEffect)
    assert gen.training and all(m.training for m in gen.modules())  # mode restored
    assert torch.equal(torch.get_rng_state(), state)  # no global RNG use
    assert all(not m._forward_hooks for m in gen.modules())
    maps = gen.unit_maps(z)
    assert effect.baseline == pytest.approx(reference_fraction(gen, seg, maps, house), abs=0)
    assert effect.baseline > 0.03
    assert effect.ablated == 0.0 and effect.relative_drop == 1.0
    assert effect.drop == effect.baseline
    # the control: three random single units from the others; at most a small change
    assert len(effect.control_units) == 3
    assert all(len(u) == 1 and u != [3] for u in effect.control_units)
    assert abs(effect.control_relative_drop) < 0.15
    assert effect.excess_drop > 0.85 * effect.baseline
    assert effect.num_images == SAMPLES and effect.concept == "house"
    # the control equals painting with those units switched off, averaged
    refs = []
    for (u,) in effect.control_units:
        edited = maps.clone()
        edited[:, u] = 0
        refs.append(reference_fraction(gen, seg, edited, house))
    assert effect.control_ablated == pytest.approx(sum(refs) / 3, rel=1e-12)


def test_partial_ablation_of_a_multi_unit_concept(setup):
    world, seg, gen, z = setup
    tree = world.vocabulary.index("tree")
    effect = ablation_effect(gen, LAYER, [0], tree, seg, z)
    edited = gen.unit_maps(z)
    edited[:, 0] = 0
    assert effect.ablated == pytest.approx(reference_fraction(gen, seg, edited, tree), abs=0)
    assert 0.0 < effect.relative_drop < 1.0  # two other units still paint trees
    assert ablation_effect(gen, LAYER, [0, 1, 2], "tree", seg, z).ablated == 0.0


def test_mean_vs_zero_ablation():
    world, seg = make_world()
    # painting level 0.5: every unit's mean (about 0.1) is below it, so a constant mean map never
    # paints and mean ablation makes exactly the images of zero ablation
    gen = make_generator(world)
    z = make_latents(gen)
    stats = unit_statistics(gen, LAYER, z)
    assert (stats.mean[:-1] < gen.level).all() and (stats.mean[:-1] > 0).all()
    zero = ablation_effect(gen, LAYER, [3], "house", seg, z, num_controls=0)
    mean = ablation_effect(gen, LAYER, [3], "house", seg, z, mode="mean", statistics=stats,
                           num_controls=0)  # fmt: skip
    assert mean.ablated == zero.ablated == 0.0 and mean.mode == "mean"
    assert mean.control_units == [] and mean.control_ablated != mean.control_ablated  # NaN
    # painting level below the mean: the constant mean map paints the concept wherever no other
    # unit is stronger, so mean ablation leaves some of it (zero ablation leaves none), exactly
    # as painting the maps with the unit set to its mean
    low = make_generator(world, level=0.05)
    house = world.vocabulary.index("house")
    assert float(stats.mean[3]) > low.level
    zero = ablation_effect(low, LAYER, [3], house, seg, z, num_controls=0)
    mean = ablation_effect(low, LAYER, [3], house, seg, z, mode="mean", statistics=stats.mean,
                           num_controls=0)  # fmt: skip
    edited = low.unit_maps(z)
    edited[:, 3] = stats.mean[3]
    assert zero.ablated == 0.0
    assert mean.ablated == pytest.approx(reference_fraction(low, seg, edited, house), abs=0)
    assert mean.ablated > 0.0 and mean.drop < zero.drop
    # statistics computed on the fly give the same result
    auto = ablation_effect(low, LAYER, [3], house, seg, z, mode="mean", num_controls=0)
    assert auto.ablated == pytest.approx(mean.ablated, abs=0.02)


# ------------------------------------------------------------------------- insertion / ACE
def test_insertion_creates_the_concept_in_the_region(setup):
    world, seg, gen, z = setup
    house = world.vocabulary.index("house")
    region = torch.zeros(SIZE, SIZE)
    region[: SIZE // 2, : SIZE // 2] = 1.0  # the top-left quadrant = 2x2 layout cells
    stats = unit_statistics(gen, LAYER, z)
    effect = insertion_effect(gen, LAYER, [3], "house", seg, z, region=region, statistics=stats)
    assert effect.region_fraction == 0.25
    edited = gen.unit_maps(z)
    edited[:, 3, :2, :2] = stats.high[3]
    assert effect.inserted_in_region == pytest.approx(
        reference_fraction(gen, seg, edited, house, region), abs=0
    )
    assert effect.inserted == pytest.approx(reference_fraction(gen, seg, edited, house), abs=0)
    assert effect.baseline_in_region < 0.2 and effect.inserted_in_region > 0.75
    assert effect.effect_in_region > 0.6 and effect.effect > 0.1
    # inserting another unit there does not make houses (it can only cover them)
    assert effect.control_effect_in_region <= 0.0
    # the insertion value defaults to the 0.99 quantile computed from the latents
    default = insertion_effect(gen, LAYER, [3], house, seg, z, region=region, num_controls=0)
    assert default.inserted_in_region == pytest.approx(effect.inserted_in_region, abs=0.02)
    with pytest.raises(ValueError, match="shared by all images"):
        insertion_effect(gen, LAYER, [3], house, seg, z, region=torch.ones(2, SIZE, SIZE))


def test_average_causal_effect(setup):
    world, seg, gen, z = setup
    ace = average_causal_effect(gen, LAYER, [3], "house", seg, z, value=2.0)
    # inserted everywhere at 2.0 (above every other unit's maximum): every pixel is a house
    assert (gen.unit_maps(z)[:, :-1].amax() < 2.0).item()
    assert ace.inserted == 1.0 and ace.ablated == 0.0 and ace.ace == 1.0
    assert ace.control_ace < 0.2  # another unit switched on covers the houses instead
    assert ace.baseline == pytest.approx(ablation_effect(gen, LAYER, [3], "house", seg, z).baseline)


# ------------------------------------------------------------------------- curves
def test_ablation_curve_monotone_and_control_near_baseline(setup):
    world, seg, gen, z = setup
    iou = painted_layer_result(gen, world)  # tree units 0, 1, 2 rank first for "tree"
    curve = ablation_curve(gen, LAYER, "tree", seg, z, iou, max_units=5, batch_size=16)
    assert curve.num_units.tolist() == [0, 1, 2, 3, 4, 5]
    assert curve.ranking.tolist() == [0, 1, 2, 3, 4]
    assert curve.fraction[0] == curve.baseline > 0.05
    diffs = curve.fraction[1:] - curve.fraction[:-1]
    assert (diffs <= 0).all()  # monotone non-increasing
    assert curve.fraction[3:].eq(0).all()  # all tree units off: no tree left
    assert 0 < curve.fraction[1] < curve.baseline
    # the random control never comes close to removing the trees
    assert (curve.control_fraction >= 0.5 * curve.baseline).all()
    for n, units in zip(curve.num_units.tolist(), curve.control_units, strict=True):
        assert len(units) == n and not set(units) & set(curve.ranking[:n].tolist())
    # reference for one point: paint with the top two tree units off
    edited = gen.unit_maps(z)
    edited[:, :2] = 0
    tree = world.vocabulary.index("tree")
    assert float(curve.fraction[2]) == pytest.approx(reference_fraction(gen, seg, edited, tree))
    rel = curve.relative
    assert rel[0] == 1.0 and rel[-1] == 0.0
    # selected steps; a (U,) IoU vector works too
    part = ablation_curve(gen, LAYER, "tree", seg, z, iou.iou[:, tree], steps=[0, 3])
    assert part.num_units.tolist() == [0, 3] and part.fraction.tolist() == [curve.baseline, 0.0]
    with pytest.raises(ValueError, match="steps"):
        ablation_curve(gen, LAYER, "tree", seg, z, iou, max_units=2, steps=[3])


# ------------------------------------------------------------------------- ablation check
def test_ablation_check_every_interpretable_concept(setup):
    world, seg, gen, z = setup
    layer = painted_layer_result(gen, world)
    records = ablation_check(gen, layer, seg, z, top_n=20, batch_size=16)
    names = [r.concept for r in records]
    assert names[0] == "tree"  # most units first
    assert sorted(names) == sorted(set(CONCEPTS))
    for r in records:
        assert r.layer == LAYER and r.num_images == SAMPLES
        assert r.relative_drop == 1.0 and r.ablated == 0.0 and r.baseline > 0
        assert len(r.control_units) == 1 and len(r.control_units[0]) == len(r.units)
        assert not set(r.control_units[0]) & set(r.units)
        assert r.control_drop < 0.5 * r.drop
        assert set(r.to_dict()) >= {
            "concept", "units", "baseline", "ablated", "drop", "relative_drop",
            "control_drop", "control_relative_drop",
        }  # fmt: skip
    tree = records[0]
    assert tree.units == [0, 1, 2]
    # top_n caps the units; `concepts` restricts the concepts
    capped = ablation_check(gen, layer, seg, z, top_n=2, concepts=["tree", "house"])
    assert [(r.concept, r.units) for r in capped] == [("tree", [0, 1]), ("house", [3])]
    assert 0 < capped[0].relative_drop < 1
    assert capped[1].baseline == next(r for r in records if r.concept == "house").baseline
    # no interpretable unit: nothing to do
    for unit in layer.units:
        unit.interpretable = False
    assert ablation_check(gen, layer, seg, z) == []


def test_ablation_check_after_a_real_dissection(setup):
    from lightning_dissect.dissection import dissect

    world, seg, gen, z = setup
    result = dissect(gen, [LAYER], seg, latent_shape=(gen.latent_dim,), num_samples=64,
                     batch_size=32, progress=False)  # fmt: skip
    records = ablation_check(gen, result[LAYER], seg, z, mode="mean")
    assert {r.concept for r in records} >= {"house", "water", "road"}
    for r in records:
        assert r.mode == "mean"
        assert r.relative_drop > 0.5 and r.relative_drop > r.control_relative_drop
    # the whole DissectionResult at once: the same records, keyed by layer
    assert isinstance(result, DissectionResult)
    assert ablation_check(gen, result, seg, z, mode="mean") == {LAYER: records}


def test_multi_layer_ablation_check_shares_the_unedited_pass_and_controls():
    world, seg = make_world()
    gen = TwoLayerPainting(world)
    z = make_latents(gen)
    calls = []

    def counting(g, latents):
        calls.append(latents.shape[0])
        return g(latents)

    layers = {name: painted_layer_result(gen, world, name) for name in ("layout", "second")}
    multi = ablation_check(gen, layers, seg, z, batch_size=16, num_controls=2, generate=counting)
    assert list(multi) == ["layout", "second"]
    # one unedited pass per batch for both layers; per layer one pass per concept (8) and one per
    # distinct control set: at most 2 controls x 2 numbers of units (3 and 1), equal draws merged
    distinct = [{tuple(u) for r in records for u in r.control_units} for records in multi.values()]
    assert all(2 <= len(d) <= 4 for d in distinct)
    assert len(calls) == 2 * (1 + sum(8 + len(d) for d in distinct))
    assert len(calls) < 2 * 2 * (1 + 8 * (1 + 2))  # one call per layer, a control per concept
    for name, records in multi.items():
        # the single-layer call gives the same records
        assert records == ablation_check(gen, layers[name], seg, z, batch_size=16, num_controls=2)
        singles = [r for r in records if len(r.units) == 1]
        assert len(singles) == 7 and all(r.control_units == singles[0].control_units for r in singles)
        union = {u for r in singles for u in r.units}
        assert all(len(c) == 1 and not set(c) & union for c in singles[0].control_units)
        # every number against painting the edited maps by hand (plain loop reference)
        for r in records:
            c = r.concept_index
            maps = gen.unit_maps(z)
            assert r.baseline == reference_fraction(gen, seg, maps, c)
            edited = maps.clone()
            edited[:, r.units] = 0
            assert r.ablated == reference_fraction(gen, seg, edited, c)
            controls = []
            for units in r.control_units:
                edited = maps.clone()
                edited[:, units] = 0
                controls.append(reference_fraction(gen, seg, edited, c))
            assert r.control_ablated == pytest.approx(sum(controls) / len(controls), rel=1e-12, abs=0)
    # a mapping of one layer gives a dict; a LayerDissection gives a list
    assert isinstance(ablation_check(gen, {"second": layers["second"]}, seg, z), dict)


def test_shared_control_falls_back_when_no_unit_is_left():
    from lightning_dissect.interventions._toy import sky_grass

    gen, seg = sky_grass()
    vocab = seg.vocabulary
    units = [
        UnitDissection(u, name, vocab.index(name), "", 0.9, 0.0, 0.5, True, 0.0)
        for u, name in enumerate(["sky", "grass"])
    ]
    layer = LayerDissection("1", units, torch.zeros(2, vocab.num_concepts))
    records = ablation_check(gen, layer, seg, torch.eye(2), num_controls=2)
    # both concepts switch off one unit and the layer has only these two: each draws the other
    assert [r.control_units for r in records] == [[[1], [1]], [[0], [0]]]


def test_noise_drawing_generator_is_seeded_per_batch_and_leaves_the_global_rng():
    world, seg = make_world()
    gen = TwoLayerPainting(world, noise=0.3)
    z = make_latents(gen, n=20)
    layer = painted_layer_result(gen, world, "second")
    calls = {
        "unit_statistics": lambda: unit_statistics(gen, "second", z, batch_size=8),
        "ablation_effect": lambda: ablation_effect(gen, "second", [3], "house", seg, z, batch_size=8),
        "insertion_effect": lambda: insertion_effect(gen, "second", [3], "house", seg, z, batch_size=8),
        "average_causal_effect": lambda: average_causal_effect(gen, "second", [3], "house", seg, z, batch_size=8),
        "ablation_curve": lambda: ablation_curve(gen, "second", "tree", seg, z, layer, max_units=3, batch_size=8),
        "ablation_check": lambda: ablation_check(gen, {"second": layer}, seg, z, batch_size=8, mode="mean"),
    }
    torch.manual_seed(1234)
    for name, call in calls.items():
        state = torch.get_rng_state()
        first = call()
        assert torch.equal(torch.get_rng_state(), state), name
        again = call()
        assert repr(first) == repr(again), name  # reproducible, tensors included
    # the documented seeding, replayed by hand: batch starting at latent i draws its noise after
    # torch.manual_seed(noise_seed(0, i)) (a plain tensor counts as a bank of seed 0)
    stats = unit_statistics(gen, "second", z, batch_size=8)
    parts = []
    for start in range(0, 20, 8):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(noise_seed(0, start))
            maps = gen.unit_maps(z[start : start + 8])
            parts.append(maps + 0.3 * torch.randn_like(maps))
    flat = torch.cat(parts).transpose(0, 1).reshape(gen.num_units, -1).double()
    torch.testing.assert_close(stats.mean.double(), flat.mean(1), rtol=1e-6, atol=1e-7)
    # a LatentBank uses its own seed
    bank = LatentBank(20, (gen.latent_dim,), seed=7)
    stats = unit_statistics(gen, "second", bank, batch_size=20)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(noise_seed(7, 0))
        maps = gen.unit_maps(bank.latents)
        maps = maps + 0.3 * torch.randn_like(maps)
    torch.testing.assert_close(stats.mean.double(), maps.transpose(0, 1).reshape(gen.num_units, -1).double().mean(1))


def test_argument_errors_name_the_argument(setup):
    world, seg, gen, z = setup
    layer = painted_layer_result(gen, world)
    with pytest.raises(TypeError, match="batchsize"):
        ablation_effect(gen, LAYER, [3], "house", seg, z, batchsize=4)
    with pytest.raises(TypeError, match="num_controls"):
        ablation_curve(gen, LAYER, "tree", seg, z, layer, num_controls=2)  # the curve has one control
    with pytest.raises(ValueError, match="`num_controls`"):
        ablation_effect(gen, LAYER, [3], "house", seg, z, num_controls=-1)
    with pytest.raises(ValueError, match="`batch_size`"):
        insertion_effect(gen, LAYER, [3], "house", seg, z, batch_size=0)
    with pytest.raises(ValueError, match="`layer`"):
        average_causal_effect(gen, "nope", [3], "house", seg, z)
    with pytest.raises(ValueError, match="`top_n`"):
        ablation_check(gen, layer, seg, z, top_n=0)
    with pytest.raises(TypeError, match="`layer_result`"):
        ablation_check(gen, [layer], seg, z)
    with pytest.raises(TypeError, match="`layer_result`"):
        ablation_check(gen, {LAYER: "x"}, seg, z)
    with pytest.raises(ValueError, match="`layer`"):
        ablation_check(gen, {LAYER: layer}, seg, z, layer=LAYER)
    two = {LAYER: layer, "canvas": painted_layer_result(gen, world, "canvas")}
    with pytest.raises(ValueError, match="`statistics`"):
        ablation_check(gen, two, seg, z, mode="mean", statistics=torch.zeros(11))
    with pytest.raises(ValueError, match="`mode`"):
        ablation_check(gen, layer, seg, z, mode="half")


# ------------------------------------------------------------------------- DDP
def _ddp_worker(rank, world_size, store_path, result_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size
    )
    try:
        out = _ddp_payload(rank, world_size)
        if rank == 0:
            torch.save(out, result_path)
        # distributed=False inside the process group: this rank's latents only, nothing synced
        torch.save(_local_payload(rank, world_size), f"{result_path}.local{rank}")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _ddp_payload(rank: int, world_size: int) -> dict:
    world, seg = make_world()
    gen = make_generator(world)
    z = make_latents(gen)
    share = SAMPLES // world_size
    local = z[rank * share : (rank + 1) * share]
    records = ablation_check(
        gen, painted_layer_result(gen, world), seg, local, batch_size=8, num_controls=2
    )
    metric = ConceptPixelFraction(world.num_concepts, ignore_index=0)
    with torch.inference_mode():
        for batch in local.split(8):
            metric.update(seg(gen(batch)))
    curve = ablation_curve(
        gen, LAYER, "tree", seg, local, painted_layer_result(gen, world), max_units=3,
        batch_size=8,
    )  # fmt: skip
    return {
        "records": [r.to_dict() for r in records],
        "fraction": metric.compute(),
        "stderr": metric.standard_error(),
        "curve": torch.stack([curve.fraction, curve.control_fraction]),
    }


def _local_payload(rank: int, world_size: int, distributed: bool = False) -> dict:
    world, seg = make_world()
    gen = make_generator(world)
    share = SAMPLES // world_size
    local = make_latents(gen)[rank * share : (rank + 1) * share]
    layer = painted_layer_result(gen, world)
    options = {"batch_size": 8, "distributed": distributed}
    return {
        "check": [r.to_dict() for r in ablation_check(gen, {LAYER: layer}, seg, local, mode="mean", **options)[LAYER]],
        "stats": unit_statistics(gen, LAYER, local, **options),
        "insertion": insertion_effect(gen, LAYER, [3], "house", seg, local, value=2.0, **options).to_dict(),
        "curve": ablation_curve(gen, LAYER, "tree", seg, local, layer, max_units=2, **options).fraction,
    }


@pytest.mark.ddp
def test_ddp_ablation_check_matches_single_process(tmp_path, monkeypatch):
    store, result = tmp_path / "store", tmp_path / "rank0.pt"
    if "GLOO_SOCKET_IFNAME" not in os.environ:
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_ddp_worker, args=(2, str(store), str(result)), nprocs=2, join=True)
    distributed = torch.load(result, weights_only=True)
    single = _ddp_payload(0, 1)
    assert distributed["records"] == single["records"]  # floats compared exactly
    assert all(r["num_images"] == SAMPLES for r in single["records"])
    assert torch.equal(distributed["fraction"], single["fraction"])
    assert torch.equal(distributed["curve"], single["curve"])
    torch.testing.assert_close(distributed["stderr"], single["stderr"], rtol=1e-12, atol=0)
    for rank in range(2):
        local = torch.load(f"{result}.local{rank}", weights_only=False)
        alone = _local_payload(rank, 2, distributed=True)  # no process group here: one process
        assert local["check"] == alone["check"] and local["insertion"] == alone["insertion"]
        assert local["insertion"]["num_images"] == SAMPLES // 2
        assert local["stats"].num_samples == SAMPLES // 2
        assert torch.equal(local["stats"].mean, alone["stats"].mean)
        assert torch.equal(local["stats"].high, alone["stats"].high)
        assert torch.equal(local["curve"], alone["curve"])


def test_an_unknown_concept_name_lists_the_closest_ones(setup):
    world, seg, gen, z = setup
    with pytest.raises(KeyError, match=r"'houses' is not a concept of this vocabulary; closest concept names: 'house'"):
        ablation_effect(gen, LAYER, [3], "houses", seg, z)


def test_a_plain_callable_selector_is_refused_before_any_generator_call(setup):
    world, seg, gen, z = setup
    calls = []
    handle = gen.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(TypeError, match=r"editing a layer whose output is selected by a plain callable"):
            ablation_effect(gen, LAYER, [3], "house", seg, z, selector=lambda output: output)
    finally:
        handle.remove()
    assert calls == []  # refused before the first generator call, not after seconds of work
