"""End-to-end tests of the dissection engine against a generator with known unit semantics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from lightning_dissect import DissectionConfig, dissect
from lightning_dissect.engine.latents import LatentBank
from lightning_dissect.functional.upsample import upsample_bilinear
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
from tests.helpers.painting import PaintingGenerator

CONCEPTS = ["tree", "house", "water", "sun"]
N = 300


@pytest.fixture(scope="module")
def world() -> SceneWorld:
    return SceneWorld(32)


@pytest.fixture(scope="module")
def painter(world: SceneWorld) -> PaintingGenerator:
    return PaintingGenerator(world, CONCEPTS)


@pytest.fixture(scope="module")
def segmenter(world: SceneWorld) -> SyntheticSceneSegmenter:
    return SyntheticSceneSegmenter(world)


class CountingSegmenter:
    """Wraps a segmenter and records how many times each image was segmented."""

    def __init__(self, inner: SyntheticSceneSegmenter, corrupt_batch: int | None = None) -> None:
        self.inner = inner
        self.vocabulary = inner.vocabulary
        self.value_range = inner.value_range
        self.multilabel = inner.multilabel
        self.calls = 0
        self.samples = 0
        self.corrupt_batch = corrupt_batch

    def __call__(self, images: Tensor) -> Tensor:
        labels = self.inner(images)
        if self.calls == self.corrupt_batch:
            labels = labels.clone()
            labels[0, 0, 0] = self.vocabulary.num_concepts + 3
        self.calls += 1
        self.samples += images.shape[0]
        return labels


def run(painter, segmenter, layers=("layout",), **kwargs):
    kwargs = {"num_samples": N, "batch_size": 64, "progress": False, **kwargs}
    return dissect(painter, list(layers), segmenter, latent_shape=(painter.latent_dim,), **kwargs)


@pytest.fixture(scope="module")
def iqr_result(painter, segmenter):
    return run(painter, segmenter, layers=("layout", "canvas"), threshold_mode="iqr", num_levels=40)


# ---------------------------------------------------------------------------- correctness
def test_iqr_mode_recovers_painted_concepts(iqr_result, painter):
    layer = iqr_result["layout"]
    assert layer.num_units == len(CONCEPTS) + 1
    for k, concept in enumerate(CONCEPTS):
        unit = layer.units[k]
        assert unit.label == concept, (k, unit)
        assert unit.iou > 0.8, unit
        assert unit.interpretable
        assert unit.chance_iou is not None and unit.chance_iou < 0.1
        # the chosen level is near the painting level
        assert abs(unit.level - painter.level) < 0.1
    noise = layer.units[-1]
    assert not noise.interpretable, noise
    assert noise.iou_iqr < 0.01
    assert abs(noise.iou - noise.chance_iou) < 0.03, noise


def test_several_layers_in_one_pass(iqr_result):
    assert list(iqr_result.layers) == ["layout", "canvas"]
    canvas = iqr_result["canvas"]
    assert canvas.num_units == len(CONCEPTS)
    for k, concept in enumerate(CONCEPTS):
        assert canvas.units[k].label == concept
        assert canvas.units[k].iou > 0.999
    assert iqr_result.settings["layers"] == ["layout", "canvas"]
    assert iqr_result.settings["segmentation_size"] == [32, 32]
    assert iqr_result["layout"].iou.shape == (5, iqr_result.vocabulary.num_concepts)


def test_quantile_mode_with_matching_level(painter, segmenter):
    # the level at which each unit's mask has the painted area: 1 - fraction of painted pixels
    bank = LatentBank(N, (painter.latent_dim,), seed=1)
    maps = upsample_bilinear(painter.unit_maps(bank.latents), (32, 32))
    fraction = float((maps[:, : len(CONCEPTS)] > painter.level).float().mean())
    result = run(painter, segmenter, threshold_mode="quantile", quantile=1.0 - fraction)
    layer = result["layout"]
    for k, concept in enumerate(CONCEPTS):
        assert layer.units[k].label == concept
        assert layer.units[k].iou > 0.8, layer.units[k]
        assert layer.units[k].interpretable
    noise = layer.units[-1]
    assert noise.iou < 0.1
    assert abs(noise.iou - noise.chance_iou) < 0.02, noise


def test_held_out_level_selection(painter, segmenter):
    counting = CountingSegmenter(segmenter)
    result = run(painter, counting, threshold_mode="iqr", level_selection_samples=100,
                 num_samples=150, num_levels=40)
    assert counting.samples == 150 + 100
    assert result.settings["level_selection_samples"] == 100
    for k, concept in enumerate(CONCEPTS):
        assert result["layout"].units[k].label == concept
        assert result["layout"].units[k].iou > 0.8


def test_levels_chosen_on_the_selection_set_count_the_dissection_set_at_them(painter, segmenter, monkeypatch):
    """Pass 2 counts only the chosen level of every unit: the same IoU as counting every level."""
    import numpy as np

    import tests.reference as ref
    from lightning_dissect.dissection import summary

    kwargs = {"threshold_mode": "iqr", "level_selection_samples": 24, "num_samples": 20, "num_levels": 6,
              "batch_size": 8}
    result = run(painter, segmenter, **kwargs)
    # the dissection bank's maps and labels, counted pixel by pixel at each unit's chosen threshold
    bank = LatentBank(20, (painter.latent_dim,), seed=1)
    maps = painter.unit_maps(bank.latents)
    with torch.no_grad():
        labels = segmenter(painter(bank.latents))
    layer = result["layout"]
    levels = np.array([u.level for u in layer.units], dtype=np.float32)
    expected = ref.counts(maps.numpy(), labels.numpy(), levels, result.vocabulary.num_concepts,
                          result.vocabulary.unlabeled_index)
    want = ref.iou(expected["intersection"], expected["unit_area"], expected["concept_area"])
    np.testing.assert_allclose(layer.iou.double().numpy(), want.astype(np.float32), rtol=1e-6, atol=0)
    # and the result equals counting every level of the dissection set (the chosen ones read after)
    every_level = summary.chosen_thresholds
    monkeypatch.setattr(summary, "chosen_thresholds", lambda cfg, thresholds, counts, ignore: thresholds)
    import lightning_dissect.dissection as dissection_module

    monkeypatch.setattr(dissection_module, "chosen_thresholds", summary.chosen_thresholds)
    assert every_level is not summary.chosen_thresholds
    again = run(painter, segmenter, **kwargs)
    assert again.to_dict()["layers"] == result.to_dict()["layers"]


# ---------------------------------------------------------------------------- contract
@pytest.mark.parametrize(("mode", "cache_bytes"), [("quantile", None), ("iqr", None), ("quantile", 0)])
def test_call_counts_modes_and_rng(painter, segmenter, mode, cache_bytes, monkeypatch):
    if cache_bytes is not None:  # the batches do not fit: pass 2 runs the generator again
        import lightning_dissect.engine.generator as generator_module

        monkeypatch.setattr(generator_module, "BATCH_CACHE_BYTES", cache_bytes)
    calls: list[tuple[int, bool]] = []

    def record(module: nn.Module, args: tuple) -> None:
        calls.append((args[0].shape[0], module.training))

    painter.train()
    counting = CountingSegmenter(segmenter)
    handle = painter.register_forward_pre_hook(record)
    rng = torch.get_rng_state()
    try:
        run(painter, counting, threshold_mode=mode, num_samples=150, batch_size=64)
    finally:
        handle.remove()
        training = [m.training for m in painter.modules()]
        painter.eval()
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(training), "generator train mode not restored"
    batches = [64, 64, 22]
    # the dry run reads pass 1's first batch, which pass 1 takes as it is; pass 2 takes pass 1's
    # batches (images and maps) when they fit the runner's cache, else runs them again
    assert [c[0] for c in calls] == (batches if cache_bytes is None else batches * 2)
    assert not any(c[1] for c in calls), "generator not in eval mode during dissection"
    assert counting.samples == 150 and counting.calls == 3  # the segmenter once per sample


def test_topk_images_are_the_largest_spatial_max(painter, segmenter, iqr_result):
    top_k = iqr_result.settings["top_k"]
    bank = LatentBank(N, (painter.latent_dim,), seed=1)
    maps = painter.unit_maps(bank.latents)
    _, canvas = painter.paint(maps)
    for name, acts in (("layout", maps), ("canvas", canvas)):
        maxact = acts.amax((2, 3))  # (N, U)
        for unit in iqr_result[name].units:
            values = maxact[:, unit.unit].tolist()
            # brute force: largest first, ties to the smaller latent index
            expected = sorted(range(N), key=lambda i: (-values[i], i))[:top_k]
            got = [int(img["index"]) for img in unit.top_images]
            assert got == expected, (name, unit.unit)
            for img in unit.top_images:
                assert math.isclose(img["maxact"], values[int(img["index"])], abs_tol=1e-6)


def test_chance_baseline_with_a_last_batch_of_one(painter, segmenter):
    result = run(painter, segmenter, num_samples=65, batch_size=64, quantile=0.97)
    assert result["layout"].units[0].chance_iou is not None
    result = run(painter, segmenter, num_samples=5, batch_size=1, quantile=0.97)
    assert result["layout"].chance_iou is not None
    assert float(result["layout"].chance_iou.max()) > 0.0


def test_chance_pairing_does_not_depend_on_the_batch_size(painter, segmenter):
    """Image j is paired with the segmentation of image j - 1 (image 0 with the last), whatever the batches."""
    import numpy as np

    from tests import reference

    n = 12
    results = [run(painter, segmenter, num_samples=n, batch_size=b, quantile=0.9) for b in (1, 5, n)]
    for other in results[1:]:
        assert torch.equal(other["layout"].chance_iou, results[0]["layout"].chance_iou)
    bank = LatentBank(n, (painter.latent_dim,), seed=1)
    with torch.no_grad():
        acts = painter.unit_maps(bank.latents).numpy()
        seg = segmenter(painter(bank.latents)).numpy()
    thresholds = np.array([u.level for u in results[0]["layout"].units])
    vocabulary = segmenter.vocabulary
    counted = reference.counts(acts, np.roll(seg, 1, axis=0), thresholds, vocabulary.num_concepts,
                               vocabulary.unlabeled_index)
    expected = reference.iou(counted["intersection"], counted["unit_area"], counted["concept_area"])
    np.testing.assert_allclose(results[0]["layout"].chance_iou.numpy(), expected, atol=1e-6, rtol=0)


def test_one_sample_has_no_chance_baseline(painter, segmenter):
    result = run(painter, segmenter, num_samples=1, batch_size=1)
    assert result["layout"].chance_iou is None
    assert all(u.chance_iou is None for u in result["layout"].units)


def test_dissect_errors_from_python(painter, segmenter):
    with pytest.raises(ValueError, match=r"dry run with `latent_shape`=\(3,\) failed"):
        dissect(painter, ["layout"], segmenter, latent_shape=(3,), num_samples=8, progress=False)
    with pytest.raises(TypeError, match="CallableSegmenter"):
        dissect(painter, ["layout"], lambda images: images, latent_shape=(painter.latent_dim,), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="`device`='cuda': CUDA is not available"):
            run(painter, segmenter, device="cuda")


def test_visualized_units(painter, segmenter):
    result = run(painter, segmenter, num_samples=64, num_visualized_units=2, top_k=3)
    images = result.unit_images["layout"]
    assert len(images) == 2
    for strip in images.values():
        assert strip.shape == (3, 3, 32, 32) and strip.dtype == torch.uint8


def test_strips_are_drawn_from_pass_two_without_generating_again(painter, segmenter, monkeypatch):
    from lightning_dissect import dissection
    from lightning_dissect.dissection.strips import render_unit_images
    from lightning_dissect.engine.latents import LatentBank

    calls = []
    handle = painter.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        result = run(painter, segmenter, num_samples=64, batch_size=32, num_visualized_units=2, top_k=3)
    finally:
        handle.remove()
    # pass 1 in two batches (its first read by the dry run); pass 2 takes them from the runner's
    # batch cache, and nothing runs for the strips
    assert calls == [32, 32]
    bank = LatentBank(64, (painter.latent_dim,), result.settings["seed"])
    regenerated = render_unit_images(painter, result, bank, segmenter.value_range, num_units=2)
    assert set(regenerated) == set(result.unit_images) == {"layout"}
    for unit, strip in regenerated["layout"].items():
        assert torch.equal(result.unit_images["layout"][unit], strip)

    # beyond the frame budget the strips generate their images again, with the same result
    monkeypatch.setattr(dissection, "FRAME_BUDGET_BYTES", 0)
    calls.clear()
    handle = painter.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        again = run(painter, segmenter, num_samples=64, batch_size=32, num_visualized_units=2, top_k=3)
    finally:
        handle.remove()
    assert len(calls) > 2, calls
    for unit, strip in again.unit_images["layout"].items():
        assert torch.equal(result.unit_images["layout"][unit], strip)


def test_kept_frames_are_copies_not_views_of_the_batch():
    from lightning_dissect.dissection.strips import keep_frames
    from lightning_dissect.engine.runner import Batch

    batch = Batch(torch.arange(8), torch.rand(8, 3, 16, 16), {"l": torch.rand(8, 4, 4, 4)})
    frames = {}
    keep_frames(frames, batch, {2, 5})
    assert set(frames) == {2, 5}
    frame = frames[5]
    assert torch.equal(frame.image, batch.images[5]) and torch.equal(frame.maps["l"], batch.activations["l"][5])
    # one latent's bytes each, so the frame budget counts what is kept (and gathering pickles no batch)
    assert frame.image.untyped_storage().nbytes() == 3 * 16 * 16 * 4
    assert frame.maps["l"].untyped_storage().nbytes() == 4 * 4 * 4 * 4


def test_config_object_and_overrides(painter, segmenter):
    cfg = DissectionConfig(num_samples=64, batch_size=32, progress=False, quantile=0.97)
    result = dissect(painter, "layout", segmenter, latent_shape=(painter.latent_dim,), config=cfg,
                     top_k=2)
    assert result.settings["top_k"] == 2 and result.settings["num_samples"] == 64
    assert all(len(u.top_images) == 2 for u in result["layout"].units)


class WithDeadUnits(nn.Module):
    def __init__(self, painter: PaintingGenerator) -> None:
        super().__init__()
        self.painter = painter
        self.dead = nn.Identity()

    def forward(self, z: Tensor) -> Tensor:
        images = self.painter(z)
        self.dead(torch.zeros(z.shape[0], 2, 4, 4))
        return images


@pytest.mark.parametrize("mode", ["quantile", "iqr"])
def test_dead_units_are_never_labelled_unlabeled(painter, segmenter, mode):
    gen = WithDeadUnits(painter)
    result = dissect(gen, ["dead"], segmenter, latent_shape=(painter.latent_dim,),
                     num_samples=32, threshold_mode=mode, progress=False)
    for unit in result["dead"].units:
        assert unit.label != "unlabeled" and unit.iou == 0.0 and not unit.interpretable


# ---------------------------------------------------------------------------- errors
def test_unknown_layer_lists_close_names(painter, segmenter):
    with pytest.raises(ValueError, match=r"unknown layer 'layot'.*'layout'"):
        run(painter, segmenter, layers=["layot"])


def test_empty_layers(painter, segmenter):
    with pytest.raises(ValueError, match="at least one layer"):
        run(painter, segmenter, layers=[])


class FlatGenerator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 12)

    def forward(self, z: Tensor) -> Tensor:
        return self.fc(z)


def test_generator_returning_a_non_image(segmenter):
    match = r"dry run with `latent_shape`=.*must return images \(B, 3, H, W\); got \(8, 12\)"  # the first batch
    with pytest.raises(ValueError, match=match):
        dissect(FlatGenerator(), ["fc"], segmenter, latent_shape=(4,), num_samples=8,
                progress=False)


def test_layer_that_is_not_a_feature_map(segmenter):
    # (B, U, h, w) maps and (B, U) vectors are units; a (B, 3, 16) sequence of tokens is not
    with pytest.raises(ValueError, match=r"layer '1' output has shape \(8, 3, 16\)"):
        tokens = nn.Sequential(nn.Linear(4, 48), nn.Unflatten(1, (3, 16)), nn.Unflatten(2, (4, 4)), nn.Tanh())
        dissect(tokens, ["1"], segmenter, latent_shape=(4,), num_samples=8, progress=False)


def test_linear_layer_units_are_whole_image_maps(world, segmenter):
    """A (B, U) output is dissected as 1x1 maps: a unit is on or off for the whole image."""
    import numpy as np

    from tests import reference

    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3 * 32 * 32), nn.Unflatten(1, (3, 32, 32)),
                        nn.Tanh())
    result = dissect(gen, ["1"], segmenter, latent_shape=(6,), num_samples=24, batch_size=8, progress=False,
                     quantile=0.8, chance_baseline=False, interpretable="paper")
    layer = result["1"]
    assert layer.num_units == 12
    bank = LatentBank(24, (6,), seed=1)
    with torch.no_grad():
        acts = gen[:2](bank.latents).numpy()[:, :, None, None]
        seg = segmenter(gen(bank.latents)).numpy()
    thresholds = np.array([u.level for u in layer.units])
    counted = reference.counts(acts, seg, thresholds, segmenter.vocabulary.num_concepts,
                               segmenter.vocabulary.unlabeled_index)
    expected = reference.iou(counted["intersection"], counted["unit_area"], counted["concept_area"])
    np.testing.assert_allclose(layer.iou.numpy(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("corrupt_batch", [0, 1])
def test_segmenter_labels_outside_vocabulary(painter, segmenter, corrupt_batch):
    bad = CountingSegmenter(segmenter, corrupt_batch=corrupt_batch)
    with pytest.raises(ValueError, match="outside its vocabulary"):
        run(painter, bad, num_samples=128)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("num_samples", 0, "num_samples"),
        ("batch_size", -1, "batch_size"),
        ("top_k", 0, "top_k"),
        ("num_levels", 0, "num_levels"),
        ("threshold_mode", "median", "threshold_mode"),
        ("quantile", 1.0, "quantile"),
        ("quantile", float("nan"), "quantile"),
        ("iou_threshold", 1.5, "iou_threshold"),
        ("num_visualized_units", -1, "num_visualized_units"),
        ("level_selection_samples", 0, "level_selection_samples"),
        ("relative_accuracy", 0.0, "relative_accuracy"),
    ],
)
def test_bad_config_values(painter, segmenter, field, value, match):
    with pytest.raises(ValueError, match=match):
        run(painter, segmenter, **{field: value})


@pytest.mark.parametrize(("field", "value"), [("batch_size", 2.5), ("num_samples", True), ("seed", "a")])
def test_config_values_of_the_wrong_type_are_type_errors(painter, segmenter, field, value):
    with pytest.raises(TypeError, match=f"`{field}` must be an int"):
        run(painter, segmenter, **{field: value})


def test_unknown_setting_is_named(painter, segmenter):
    with pytest.raises(TypeError, match="num_sample"):
        run(painter, segmenter, num_sample=10)


def test_latent_shape_or_sampler_required(painter, segmenter):
    with pytest.raises(ValueError, match="latent_shape"):
        dissect(painter, ["layout"], segmenter, num_samples=8, progress=False)


def test_defaults_page_matches_the_code():
    from pathlib import Path

    from lightning_dissect.callbacks.generator import DissectionCallback
    from lightning_dissect.cli import build_parser
    from lightning_dissect.config import CALLBACK_DEFAULTS, CLI_DEFAULTS, defaults_table

    page = (Path(__file__).resolve().parents[1] / "docs" / "defaults.md").read_text()
    assert defaults_table() in page
    # the entry points really use those values
    callback = DissectionCallback(["x"])
    for name, (value, _) in CALLBACK_DEFAULTS.items():
        assert getattr(callback.config, name) == value, name
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["dissect"]
    cli = {a.dest: a.default for a in sub._actions}
    assert cli["num_visualized_units"] == CLI_DEFAULTS["num_visualized_units"][0]
    for name in ("num_samples", "batch_size", "top_k", "quantile", "num_levels", "iou_threshold", "seed",
                 "iqr_threshold", "min_concept_fraction", "relative_accuracy", "level_selection_samples"):
        assert cli[name] == DissectionConfig.__dataclass_fields__[name].default, name


def test_unit_range_images_for_a_symmetric_segmenter_are_refused_with_the_fix(world):
    from lightning_dissect.engine.generator import GeneratorRunner
    from lightning_dissect.engine.runner import DryRunError
    from lightning_dissect.segmenters import adapt_input

    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(4, 3 * 16 * 16), nn.Unflatten(1, (3, 16, 16)), nn.Sigmoid())  # [0, 1] images
    segmenter = SyntheticSceneSegmenter(world)
    runner = GeneratorRunner(gen)
    bank = LatentBank(2, (4,), seed=1)
    with pytest.raises(DryRunError, match=r"lie in \[0, 1\].*adapt_input\(segmenter, value_range=\(0, 1\)\)"):
        runner.preflight(bank, ["2"], segmenter)
    with pytest.raises(ValueError, match=r"generate=lambda g, z: g\(z\) \* 2 - 1"):
        dissect(gen, ["2"], segmenter, latent_shape=(4,), num_samples=8, progress=False)
    # a declared input range is trusted: both fixes the message names work
    runner.preflight(bank, ["2"], adapt_input(segmenter, value_range=(0, 1)))
    runner.preflight(bank, ["2"], adapt_input(segmenter, value_range=(-1, 1)))
    result = dissect(gen, ["2"], segmenter, latent_shape=(4,), num_samples=8, progress=False,
                     generate=lambda g, z: g(z) * 2 - 1)
    assert result["2"].num_units == 3


def test_a_fresh_tanh_generator_with_positive_biases_is_not_refused(world):
    # untrained: tiny weights, positive output biases -> every value in (0, 0.1), still [-1, 1] output
    gen = nn.Sequential(nn.Linear(4, 3 * 16 * 16), nn.Unflatten(1, (3, 16, 16)), nn.Tanh())
    with torch.no_grad():
        gen[0].weight.mul_(1e-3)
        gen[0].bias.uniform_(0.01, 0.06)
    images = gen(torch.randn(8, 4))
    assert float(images.min()) > 0 and float(images.max()) < 0.1
    result = dissect(gen, ["2"], SyntheticSceneSegmenter(world), latent_shape=(4,), num_samples=8, progress=False)
    assert result["2"].num_units == 3


# ------------------------------------------------------------ one rule per setting
_BAD_SETTINGS = [
    ("num_samples", 2.5, TypeError), ("num_samples", 0, ValueError), ("num_samples", True, TypeError),
    ("batch_size", "8", TypeError), ("seed", "a", TypeError), ("seed", -1, ValueError),
    ("threshold_mode", "max", ValueError), ("threshold_mode", 1, TypeError),
    ("quantile", 1.0, ValueError), ("quantile", float("nan"), ValueError), ("quantile", "0.9", ValueError),
    ("quantile", [0.9], TypeError),
    ("quantile_over", "pixels", ValueError), ("unit_area", "image", ValueError), ("unit_area", 1, TypeError),
    ("preset", "netdissect-lite", ValueError), ("preset", 2, TypeError),
    ("num_levels", 0, ValueError), ("level_selection_samples", 0, ValueError),
    ("level_selection_samples", 1.5, TypeError), ("iou_threshold", -0.1, ValueError),
    ("iou_threshold", True, TypeError), ("interpretable", "strict", ValueError),
    ("chance_ratio", 0.5, ValueError), ("chance_ratio", "2", TypeError), ("iqr_threshold", 1.0, ValueError),
    ("min_excess", 1.5, ValueError), ("min_excess", "0.1", TypeError), ("max_p_value", -0.1, ValueError),
    ("chance_groups", 1, ValueError), ("chance_groups", 17, ValueError), ("chance_groups", 2.5, TypeError),
    ("iqr_threshold", None, TypeError),
    ("min_concept_fraction", 2, ValueError), ("top_k", 0, ValueError), ("num_visualized_units", -1, ValueError),
    ("chance_baseline", 1, TypeError), ("relative_accuracy", 0, ValueError), ("progress", "no", TypeError),
    ("device", 0, TypeError),
]


def test_every_config_field_is_validated():
    from dataclasses import fields

    checked = {name for name, _, _ in _BAD_SETTINGS}
    assert checked == {f.name for f in fields(DissectionConfig)}  # no field skipped
    for name, value, error in _BAD_SETTINGS:
        with pytest.raises(error, match=f"`{name}`"):
            DissectionConfig(**{name: value}).validate()


def test_validate_normalises_numpy_numbers():
    import numpy as np

    config = DissectionConfig(num_samples=np.int64(8), quantile=np.float32(0.5), progress=np.bool_(False)).validate()
    assert (type(config.num_samples), type(config.quantile), type(config.progress)) == (int, float, bool)


def test_every_entry_point_refuses_an_unknown_setting_with_the_same_type():
    from lightning_dissect.callbacks.base import callback_config
    from lightning_dissect.config import merge_settings
    from lightning_dissect.dissection import resolve_config

    for call in (
        lambda: callback_config({}, {"topk": 3}),
        lambda: resolve_config(None, {"topk": 3}),
        lambda: merge_settings(None, ("the options", {"topk": 3})),
    ):
        with pytest.raises(TypeError, match=r"unknown setting\(s\) \['topk'\] \(did you mean 'top_k'\?\)"):
            call()


def test_quantile_defaults_come_from_the_one_defaults_table():
    import inspect

    from lightning_dissect.interventions import average_causal_effect, insertion_effect, unit_statistics
    from lightning_dissect.metrics import UnitQuantiles

    for function, parameter in ((average_causal_effect, "quantile"), (insertion_effect, "quantile"),
                                (unit_statistics, "quantile"), (UnitQuantiles, "quantiles")):
        assert inspect.signature(function).parameters[parameter].default == DissectionConfig.quantile
    # no signature writes the number itself
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "lightning_dissect"
    written = [p.name for p in package.rglob("*.py") if "= 0.99," in p.read_text() or "= 0.99\n" in p.read_text()]
    assert written == ["config.py"], written


class _NaNUnits(nn.Module):
    """Marks unit 0 NaN where it is negative; the images stay finite (the next layer ignores it)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([torch.where(x[:, :1] < 0, float("nan"), x[:, :1]), x[:, 1:]], 1)


def test_nan_activations_are_reported_with_the_layer_name(segmenter):
    gen = nn.Sequential(
        nn.Linear(8, 4 * 8 * 8), nn.Unflatten(1, (4, 8, 8)), _NaNUnits(), nn.Identity(),
    )

    class Finite(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = gen
            self.paint = nn.Upsample(size=32)

        def forward(self, z: Tensor) -> Tensor:
            x = self.body(z).nan_to_num(0.0)[:, 1:]
            return self.paint(torch.tanh(x))

    with pytest.raises(ValueError, match=r"activations of layer 'body.2'.*NaN"):
        dissect(Finite(), ["body.2"], segmenter, latent_shape=(8,), num_samples=8, progress=False)


def test_iou_iqr_is_the_same_whatever_the_thread_count(painter, segmenter):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(painter, segmenter, num_samples=64, threshold_mode="iqr", num_levels=12)
        torch.set_num_threads(3)
        three = run(painter, segmenter, num_samples=64, threshold_mode="iqr", num_levels=12)
    finally:
        torch.set_num_threads(threads)
    assert [u.iou_iqr for u in one["layout"].units] == [u.iou_iqr for u in three["layout"].units]
    assert one.to_dict()["layers"] == three.to_dict()["layers"]
    assert any(u.iou_iqr > 0 for u in one["layout"].units)


class _TwoArguments(nn.Module):
    """A generator of several arguments, e.g. ``G(z, y)`` (BigGAN takes a class vector too)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3 * 16 * 16)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        return torch.tanh(self.lin(torch.cat([z, y], 1))).view(-1, 3, 16, 16)


@pytest.mark.parametrize(
    ("sampler", "call"),
    [
        (lambda n, g: (torch.randn(n, 4, generator=g), torch.randn(n, 2, generator=g)), r"generator\(\*latents\)"),
        (lambda n, g: {"z": torch.randn(n, 4, generator=g), "y": torch.randn(n, 2, generator=g)},
         r"generator\(\*\*latents\)"),
    ],
)
def test_structured_latents_for_several_arguments_get_the_call_that_works(sampler, call):
    from lightning_dissect.engine.generator import GeneratorRunner
    from lightning_dissect.engine.runner import DryRunError

    runner = GeneratorRunner(_TwoArguments())
    with pytest.raises(DryRunError, match=rf"pass generate=lambda generator, latents: {call} \(that call works"):
        runner.choose_latents(["lin"], None, [], seed=1, sampler=sampler)
    # and the call it suggests does work
    spread = (lambda g, z: g(**z)) if "\\*\\*" in call else (lambda g, z: g(*z))
    assert GeneratorRunner(_TwoArguments(), generate=spread).choose_latents(["lin"], None, [], seed=1,
                                                                            sampler=sampler) is None


def test_a_generator_with_margins_is_told_to_crop_its_layers(segmenter):
    import warnings

    from lightning_dissect.engine.generator import GeneratorRunner
    from lightning_dissect.engine.hooks import Selector

    class Synthesis(nn.Module):  # StyleGAN3 keeps `margin_size` on its synthesis network
        margin_size = 2

        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Sequential(nn.Linear(8, 3 * 12 * 12), nn.Unflatten(1, (3, 12, 12)))

        def forward(self, z: Tensor) -> Tensor:
            return torch.tanh(self.block(z)[..., 2:-2, 2:-2])

    with pytest.warns(UserWarning, match=r"margin_size=2\): layers \['block'\] are dissected whole.*cropping"):
        GeneratorRunner(Synthesis()).choose_latents(["block"], segmenter, [(8,)], seed=1)
    cropping = Selector(lambda out: out[..., 2:-2, 2:-2], lambda out, t: out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a layer with a selector is taken as handled
        GeneratorRunner(Synthesis(), selector=cropping).choose_latents(["block"], segmenter, [(8,)], seed=1)


@pytest.mark.parametrize("num_samples, batch_size", [(9, 2), (64, 8), (17, 5), (5, 8), (3, 2)])
def test_every_rank_runs_the_batches_of_a_single_process(num_samples, batch_size):
    """Whatever the world size, the batches of all ranks together are the batches of one process."""
    from lightning_dissect.engine.latents import batch_shard

    single = [list(range(start, min(start + batch_size, num_samples))) for start in range(0, num_samples, batch_size)]
    for world_size in (1, 2, 3, 4):
        shards = [batch_shard(num_samples, rank, world_size, batch_size).tolist() for rank in range(world_size)]
        assert [i for shard in shards for i in shard] == list(range(num_samples))  # contiguous, in rank order
        assert all(shards) or num_samples < world_size  # every rank works (given a sample each)
        if len(single) >= world_size:
            batches = [shard[i : i + batch_size] for shard in shards for i in range(0, len(shard), batch_size)]
            assert batches == single
            counts = [math.ceil(len(shard) / batch_size) for shard in shards]
            assert max(counts) - min(counts) <= 1  # at most one batch more


class _BatchCentred(nn.Module):
    """A generator whose images depend on the composition of the batch (the batch mean is subtracted)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 2 * 4 * 4), nn.Unflatten(1, (2, 4, 4)), nn.Conv2d(2, 3, 1))

    def forward(self, z: Tensor) -> Tensor:
        x = self.net(z)
        return torch.tanh(x - x.mean(0, keepdim=True)) if len(z) > 1 else torch.tanh(x)


def test_ranks_compute_what_one_process_computes_to_the_last_bit():
    """Each rank's share, run batch by batch, gives every sample's maps exactly as one process does."""
    from lightning_dissect.engine.generator import GeneratorRunner
    from lightning_dissect.engine.latents import batch_shard

    torch.manual_seed(0)
    runner = GeneratorRunner(_BatchCentred(), batch_size=2, distributed=False)
    bank = LatentBank(9, (6,), seed=3)

    def maxima(indices_per_rank: list[Tensor]) -> dict[int, Tensor]:
        found = {}
        with runner.session():
            for indices in indices_per_rank:
                for batch in runner.batches(bank, indices, layers=["net.2"]):
                    for j, i in enumerate(batch.indices.tolist()):
                        found[i] = batch.activations["net.2"][j].amax((1, 2))
        return found

    one = maxima([torch.arange(9)])
    for world_size in (2, 3, 4):
        ranks = maxima([batch_shard(9, rank, world_size, 2) for rank in range(world_size)])
        assert all(torch.equal(one[i], ranks[i]) for i in range(9)), world_size
    # the shares of the previous release (balanced sample by sample) put samples 4 and 5 in other batches
    from lightning_dissect.engine.latents import shard_indices

    balanced = maxima([shard_indices(9, rank, 2) for rank in range(2)])
    assert not all(torch.equal(one[i], balanced[i]) for i in range(9))


class _NoisyGenerator(nn.Module):
    """Draws noise in ``forward`` (its batches must be read with their own noise seed)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4 * 8 * 8), nn.Unflatten(1, (4, 8, 8)), nn.ReLU())
        self.to_rgb = nn.Conv2d(4, 3, 1)

    def forward(self, z: Tensor) -> Tensor:
        maps = self.body(z)
        return torch.tanh(self.to_rgb(maps + 0.5 * torch.randn_like(maps)))


def test_dry_run_batch_taken_by_pass_one_gives_the_result_of_a_fresh_read(segmenter):
    """The dry run reads pass 1's first batch and pass 1 takes it: the result of a run without the dry run."""
    torch.manual_seed(0)
    gen = _NoisyGenerator().eval()
    options = dict(latent_shape=(4,), num_samples=40, batch_size=16, progress=False, top_k=3)
    checked = dissect(gen, ["body.2"], segmenter, **options).to_dict()
    fresh = dissect(gen, ["body.2"], segmenter, dry_run=False, **options).to_dict()
    assert checked == fresh


@pytest.mark.parametrize("cache_bytes", [0, None])
def test_a_kept_pre_flight_batch_serves_only_the_read_of_the_same_samples(cache_bytes):
    from lightning_dissect.engine.generator import GeneratorRunner

    torch.manual_seed(0)
    runner = GeneratorRunner(_NoisyGenerator(), batch_size=4)
    if cache_bytes is not None:  # no batch cache: only the pre-flight's kept batch is reused
        runner.cache_bytes = cache_bytes
    bank = LatentBank(8, (4,), seed=3)
    calls = []
    handle = runner.network.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        with runner.session():
            first, second = runner.split(torch.arange(8))
            runner.preflight(bank, ["body.2"], indices=first, keep=True)
            kept = runner.read(bank, first, ["body.2"])
            again = runner.read(bank, first, ["body.2"])  # kept once only: generated again (or cached)
            runner.preflight(bank, ["body.2"], indices=first, keep=True)
            other = runner.read(bank, second, ["body.2"])  # another batch: generated, the kept one dropped
            after = runner.read(bank, first, ["body.2"])
    finally:
        handle.remove()
    # with the batch cache, the session's batches are generated once: the two pre-flights and `second`
    assert calls == ([4, 4, 4, 4, 4] if cache_bytes == 0 else [4, 4, 4])
    assert torch.equal(kept.images, again.images) and torch.equal(kept.images, after.images)
    assert torch.equal(kept.activations["body.2"], again.activations["body.2"])
    assert torch.equal(other.indices, second) and not torch.equal(other.images, kept.images)


@pytest.mark.parametrize("order", ["ascending", "shuffled"])
def test_topk_merges_batches_like_a_sort_of_all_values(order):
    """Ties everywhere (values from 4 levels): the k largest per unit, ties to the smaller index, in any batch order."""
    from lightning_dissect.dissection.topk import TopK

    gen = torch.Generator().manual_seed(5)
    values = torch.randint(0, 4, (3, 40), generator=gen).float()
    batches = list(torch.arange(40).split(7))
    if order == "shuffled":
        batches = [batches[i] for i in (3, 0, 5, 1, 4, 2)]
    top = TopK(3, k=9)
    for idx in batches:
        top.update(values[:, idx], idx)
    for unit in range(3):
        row = values[unit].tolist()
        expected = sorted(range(40), key=lambda i: (-row[i], i))[:9]
        assert top.indices[unit].tolist() == expected
        assert top.values[unit].tolist() == [row[i] for i in expected]


def test_generator_batch_cache_lives_one_session_and_skips_edits():
    """Within a session an unedited batch is generated once; edits, new sessions and the budget generate."""
    from lightning_dissect.engine.generator import GeneratorRunner
    from lightning_dissect.engine.hooks import LayerEdit

    runner = GeneratorRunner(_NoisyGenerator(), batch_size=4)
    bank = LatentBank(8, (4,), seed=3)
    idx = torch.arange(4)
    calls = []
    handle = runner.network.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        with runner.session():
            first = runner.read(bank, idx, ["body.2"])
            first.labels = torch.zeros(4, 8, 8, dtype=torch.int64)  # a caller's labels stay its own
            again = runner.read(bank, idx, ["body.2"])
            assert len(calls) == 1 and again.labels is None
            assert torch.equal(first.activations["body.2"], again.activations["body.2"])
            edited = runner.read(bank, idx, ["body.2"], edits={"body.2": LayerEdit(alpha=1.0, value=0.0)})
            assert len(calls) == 2 and float(edited.activations["body.2"].abs().max()) == 0.0
            assert runner.read(bank, idx, ["body.2"]).activations["body.2"].abs().max() > 0  # not the edited one
            assert len(calls) == 2
        with runner.session():  # a new session (the generator may have trained): generated again
            fresh = runner.read(bank, idx, ["body.2"])
        assert len(calls) == 3 and torch.equal(fresh.images, first.images)  # the batch's own noise seed
        runner.cache_bytes = 4 * 4 * 8 * 8 * 4  # less than the batch's images and maps
        with runner.session():
            runner.read(bank, idx, ["body.2"])
            runner.read(bank, idx, ["body.2"])
        assert len(calls) == 5
    finally:
        handle.remove()
