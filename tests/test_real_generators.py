"""Generators written the way third parties write them: StyleGAN-style and Lightning's GAN template.

Every check is against a reference computed here with plain forward hooks and NumPy (the
generators are in ``tests/helpers/third_party.py``).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dissect import DissectionCallback, dissect
from lightning_dissect.cli import main
from lightning_dissect.dissection.strips import render_unit_images
from lightning_dissect.engine.hooks import Selector
from lightning_dissect.engine.latents import LatentBank
from lightning_dissect.functional.upsample import upsample_bilinear
from lightning_dissect.interventions import ablation_check, ablation_effect, insertion_effect, unit_statistics
from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter, adapt_input
from lightning_dissect.visual.visualize import overlay_mask, to_uint8
from tests.helpers import third_party as tp

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = dict(num_samples=24, batch_size=8, top_k=3, threshold_mode="quantile", quantile=0.9,
                iou_threshold=0.0, num_visualized_units=0, progress=False, seed=3)


def _own_hook(module: nn.Module, store: list, pick=lambda out: out):
    """A plain forward hook that records ``pick(output)`` (the reference's own capture)."""
    return module.register_forward_hook(lambda _m, _i, out: store.append(pick(out).detach().clone()))


def _zero_units(module: nn.Module, units, index=None, key=None):
    """A plain forward hook that zeroes ``units`` of the block's tensor (tuple item or dict key)."""

    def hook(_m, _i, out):
        if index is not None:
            x = out[index].clone()
            x[:, units] = 0
            items = list(out)
            items[index] = x
            return tuple(items)
        if key is not None:
            x = out[key].clone()
            x[:, units] = 0
            return {**out, key: x}
        x = out.clone()
        x[:, units] = 0
        return x

    return module.register_forward_hook(hook)


def _fraction(labels: torch.Tensor, concept: int) -> float:
    return float((labels.numpy() == concept).mean())


# ====================================================================== StyleGAN-style
@pytest.fixture(scope="module")
def style():
    generator = tp.stylegan(0)
    segmenter = tp.segmenter_01()
    layers = ["synthesis.blocks.1", "synthesis.blocks.2"]
    result = dissect(generator, layers, segmenter, latent_sampler=tp.style_sampler, generate=tp.style_generate,
                     selector=0, **SETTINGS)
    bank = LatentBank(SETTINGS["num_samples"], seed=SETTINGS["seed"], sampler=tp.style_sampler)
    return generator, segmenter, layers, result, bank


def _style_reference(generator, bank, layer):
    """Images and ``(N, U, h, w)`` block features of every latent, with a plain hook (noise given: deterministic)."""
    store: list = []
    handle = _own_hook(dict(generator.named_modules())[layer], store, pick=lambda out: out[0])
    try:
        with torch.no_grad():
            images = tp.style_generate(generator.eval(), bank.latents)
    finally:
        handle.remove()
    return images, store[0]


def test_stylegan_structured_latents_ranked_top_images(style):
    generator, _, layers, result, bank = style
    for layer in layers:
        _, feats = _style_reference(generator, bank, layer)
        peak = feats.amax((2, 3))  # (N, U)
        dissected = result.layers[layer]
        assert dissected.num_units == tp.CHANNELS
        for unit in dissected.units:
            ranked = [int(t["index"]) for t in unit.top_images]
            expected = torch.argsort(peak[:, unit.unit], descending=True)[: SETTINGS["top_k"]].tolist()
            assert ranked == expected
            np.testing.assert_allclose([t["maxact"] for t in unit.top_images],
                                       peak[expected, unit.unit].numpy(), rtol=1e-5, atol=1e-6)


def test_stylegan_int_selector_ablation_matches_hook_reference(style):
    generator, segmenter, layers, result, bank = style
    layer = layers[0]
    block = dict(generator.named_modules())[layer]
    images, _ = _style_reference(generator, bank, layer)
    base_labels = segmenter(images)
    concept = int(torch.bincount(base_labels.flatten())[1:].argmax()) + 1
    units = [0, 1, 2]
    handle = _zero_units(block, units, index=0)
    try:
        with torch.no_grad():
            ablated_labels = segmenter(tp.style_generate(generator, bank.latents))
    finally:
        handle.remove()
    effect = ablation_effect(generator, layer, units, concept, segmenter, bank.latents,
                             generate=tp.style_generate, selector=0, batch_size=8)
    assert effect.baseline == pytest.approx(_fraction(base_labels, concept), abs=1e-6)
    assert effect.ablated == pytest.approx(_fraction(ablated_labels, concept), abs=1e-6)
    assert effect.ablated != effect.baseline  # the edit reached the image through the tuple

    records = ablation_check(generator, result, segmenter, bank.latents, top_n=2, generate=tp.style_generate,
                             selector=0, batch_size=8, num_controls=0)
    record = records[layer][0]
    handle = _zero_units(block, record.units, index=0)
    try:
        with torch.no_grad():
            labels = segmenter(tp.style_generate(generator, bank.latents))
    finally:
        handle.remove()
    c = segmenter.vocabulary.index(record.concept)
    assert record.ablated == pytest.approx(_fraction(labels, c), abs=1e-6)
    assert record.baseline == pytest.approx(_fraction(base_labels, c), abs=1e-6)


def test_stylegan_tuple_latents_give_the_same_dissection(style):
    generator, segmenter, layers, result, _ = style
    again = dissect(generator, layers[:1], segmenter, latent_sampler=tp.style_tuple_sampler,
                    generate=tp.style_tuple_generate, selector=0, **SETTINGS)
    # the same draws in the same order: the same units, levels and top images
    for a, b in zip(result.layers[layers[0]].units, again.layers[layers[0]].units):
        assert (a.level, a.label, a.top_images) == (b.level, b.label, b.top_images)


def test_noise_in_forward_strips_show_ranked_images_and_rng_is_untouched(tmp_path, capsys):
    generator = tp.stylegan(1)
    segmenter = tp.segmenter_01()
    layer = "synthesis.blocks.2"
    with torch.no_grad():  # the generator really draws noise from the global RNG
        z = torch.zeros(1, tp.Z_DIM)
        assert not torch.equal(generator(z), generator(z))

    state = torch.get_rng_state()
    result = dissect(generator, [layer], segmenter, latent_shape=(tp.Z_DIM,), selector=0, **SETTINGS)
    assert torch.equal(torch.get_rng_state(), state)
    bank = LatentBank(SETTINGS["num_samples"], (tp.Z_DIM,), seed=SETTINGS["seed"])

    # what render_unit_images regenerates, seen by plain hooks: inputs, images and block features
    inputs, images, feats = [], [], []
    hooks = [generator.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].clone())),
             _own_hook(generator, images),
             _own_hook(dict(generator.named_modules())[layer], feats, pick=lambda out: out[0])]
    try:
        strips = render_unit_images(generator, result, bank, (0.0, 1.0), num_units=3, selector=0)
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(torch.get_rng_state(), state)
    seen = {}
    for zs, ims, fs in zip(inputs, images, feats):
        for row in range(zs.shape[0]):
            index = int(torch.nonzero((bank.latents == zs[row]).all(1))[0])
            seen[index] = (ims[row], fs[row])
    assert len(strips[layer]) == 3
    for unit, strip in strips[layer].items():
        record = result.layers[layer].units[unit]
        assert strip.shape[0] == len(record.top_images) == SETTINGS["top_k"]
        for tile, top in zip(strip, record.top_images):
            image, feat = seen[int(top["index"])]
            assert float(feat[unit].max()) == pytest.approx(top["maxact"], rel=1e-5, abs=1e-6)
            mask = upsample_bilinear(feat[unit][None], image.shape[-2:])[0] > record.level
            assert torch.equal(tile, overlay_mask(to_uint8(image, (0.0, 1.0)), mask))

    latents = bank.latents[:8]
    ablation_check(generator, result, segmenter, latents, top_n=2, selector=0, batch_size=4)
    assert torch.equal(torch.get_rng_state(), state)
    unit_statistics(generator, layer, latents, selector=0, batch_size=4)
    assert torch.equal(torch.get_rng_state(), state)
    code = main(["dissect", "--generator", "tests.helpers.third_party:stylegan", "--layers", layer,
                 "--latent-dim", str(tp.Z_DIM), "--selector", "0",
                 "--segmenter", "tests.helpers.third_party:segmenter_01",
                 "--num-samples", "8", "--batch-size", "4", "--summary-units", "0", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert torch.equal(torch.get_rng_state(), state)


# ====================================================================== dict outputs and selectors
class _DictGAN(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.save_hyperparameters({"latent_dim": tp.Z_DIM})
        self.generator = tp.DictGenerator()
        self.steps = 0

    def training_step(self, batch):
        self.steps += 1
        return self.generator(torch.randn(4, tp.Z_DIM)).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader(n=16, shape=(3, 16, 16), batch_size=8):
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.rand(n, *shape, generator=g) * 2 - 1), batch_size=batch_size)


def _trainer(tmp_path, callback, **kwargs):
    return pl.Trainer(default_root_dir=tmp_path, max_epochs=1, callbacks=[callback], logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)


def test_selector_on_dict_block_captures_and_ablates():
    generator = tp.DictGenerator()
    segmenter = SyntheticSceneSegmenter(SceneWorld(16), max_distance=float("inf"))
    selector = Selector(lambda out: out["features"], lambda out, x: {**out, "features": x})
    result = dissect(generator, ["block1", "block2"], segmenter, latent_shape=(tp.Z_DIM,), selector=selector,
                     **SETTINGS)
    assert result.layers["block1"].num_units == tp.CHANNELS

    z = torch.randn(16, tp.Z_DIM, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        base = segmenter(generator(z))
        handle = _zero_units(generator.block1, [0, 3, 5], key="features")
        try:
            ablated = segmenter(generator(z))
        finally:
            handle.remove()
    concept = int(torch.bincount(base.flatten())[1:].argmax()) + 1
    effect = ablation_effect(generator, "block1", [0, 3, 5], concept, segmenter, z, selector=selector, num_controls=0)
    assert effect.baseline == pytest.approx(_fraction(base, concept), abs=1e-6)
    assert effect.ablated == pytest.approx(_fraction(ablated, concept), abs=1e-6)

    # a plain callable captures the same units...
    plain = dissect(generator, ["block1"], segmenter, latent_shape=(tp.Z_DIM,),
                    selector=lambda out: out["features"], **SETTINGS)
    assert [u.level for u in plain.layers["block1"].units] == [u.level for u in result.layers["block1"].units]


def _features(out):  # a plain callable selector: capture only
    return out["features"]


def test_plain_callable_selector_refused_at_fit_start_with_ablation_check(tmp_path):
    module = _DictGAN()
    callback = DissectionCallback(["block1"], SyntheticSceneSegmenter(SceneWorld(16)), selector=_features,
                                  ablation_check=True, num_samples=8, batch_size=4, ablation_samples=4)
    with pytest.raises(RuntimeError, match=r"dry run failed: TypeError: editing a layer.*plain callable.*Selector"):
        _trainer(tmp_path, callback, max_steps=2).fit(module, _loader())
    assert module.steps == 0  # refused before the first training step, never mid-training

    # without the ablation check a capture-only selector is fine
    module = _DictGAN()
    callback = DissectionCallback(["block1"], SyntheticSceneSegmenter(SceneWorld(16)), selector=_features,
                                  ablation_check=False, num_samples=8, batch_size=4, on_error="raise")
    _trainer(tmp_path, callback, max_steps=2).fit(module, _loader())
    assert module.steps == 2 and callback.last_result is not None


# ====================================================================== Lightning's GAN template
def _grey_segmenter():
    return adapt_input(SyntheticSceneSegmenter(SceneWorld(28), max_distance=float("inf")), channels=1)


def _grey_loader():
    return _loader(16, (1, 28, 28), 8)


LINEAR_LAYERS = ["model.1", "model.4"]  # the LeakyReLUs: block outputs after the activation


def test_template_callback_linear_units_are_whole_image_switches(tmp_path):
    module = tp.BasicGAN()
    segmenter = _grey_segmenter()
    callback = DissectionCallback(LINEAR_LAYERS, segmenter, num_samples=16, batch_size=8, threshold_mode="quantile",
                                  quantile=0.75, iou_threshold=0.0, num_visualized_units=2, top_k=2,
                                  ablation_check=True, ablation_samples=8, on_error="raise")
    _trainer(tmp_path, callback).fit(module, _grey_loader())
    result = callback.last_result
    assert result is not None and set(callback.last_ablations) == set(LINEAR_LAYERS)

    # reference: the same latents, the trained generator, a plain hook; a (B, U) unit is on or off for the whole image
    seed, n = result.settings["seed"], 16
    z = torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))
    gen = module.generator.eval()
    store: list = []
    handles = [_own_hook(dict(gen.named_modules())[name], store) for name in LINEAR_LAYERS]
    with torch.no_grad():
        labels = segmenter(gen(z)).numpy()
    for h in handles:
        h.remove()
    num_concepts = segmenter.vocabulary.num_concepts
    pixels = np.stack([(labels == c).reshape(n, -1).sum(1) for c in range(num_concepts)], 1)  # (N, C)
    total = labels[0].size
    for name, acts in zip(LINEAR_LAYERS, store):
        dissected = result.layers[name]
        assert acts.ndim == 2 and dissected.num_units == acts.shape[1]
        for unit in dissected.units[:6]:
            on = (acts[:, unit.unit] > unit.level).numpy()
            inter = pixels[on].sum(0)
            union = on.sum() * total + pixels[~on].sum(0)
            iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
            np.testing.assert_allclose(dissected.iou[unit.unit, 1:].numpy(), iou[1:], atol=1e-5)


def test_template_wrong_latent_size_message(tmp_path):
    module = tp.BasicGAN()
    module.hparams.latent_dim = 5  # the generator was built for 8
    callback = DissectionCallback(LINEAR_LAYERS, _grey_segmenter(), num_samples=8, batch_size=4, ablation_check=False)
    with pytest.raises(RuntimeError) as info:
        _trainer(tmp_path, callback, max_steps=1).fit(module, _grey_loader())
    message = str(info.value)
    first = message.splitlines()[0]
    # every layout failed in the forward: a matmul error leads (the last attempt's), and every attempt is listed;
    # the (d,) attempt shows the size mismatch itself: 5 latents given, the first Linear takes 8
    assert first.startswith("DissectionCallback dry run failed: RuntimeError: mat1 and mat2 shapes cannot be")
    assert "latent shape (5,): RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x5 and 8x16)" in message
    assert "latent shape (5, 1, 1): RuntimeError" in message
    # (B, U) Linear outputs are dissectable: no layer-shape complaint
    assert "feature maps" not in message


def test_layer_shape_problem_leads_when_the_forward_succeeds():
    class Sequence3d(nn.Module):  # a (B, U, L) output (a sequence model's layer)
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 4 * 6)
            self.seq = nn.Unflatten(1, (4, 6))
            self.out = nn.Linear(24, 3 * 16 * 16)

        def forward(self, z):
            return torch.tanh(self.out(self.seq(self.fc(z)).flatten(1))).view(-1, 3, 16, 16)

    from lightning_dissect.engine.generator import GeneratorRunner
    from lightning_dissect.engine.runner import DryRunError

    runner = GeneratorRunner(Sequence3d())
    banks = [LatentBank(2, (8,)), LatentBank(2, (8, 1, 1))]
    with pytest.raises(DryRunError) as info:
        runner.preflight(banks, ["seq"], describe=lambda b: f"shape {tuple(b.latents.shape[1:])}")
    first = str(info.value).splitlines()[0]
    assert first.startswith("dry run failed: LayerShapeError: layer 'seq' output has shape (2, 4, 6)")


def test_module_called_twice_per_forward_is_reported(tmp_path):
    generator = tp.SharedActivationGenerator()
    with pytest.raises(ValueError, match=r"layers \['act'\] ran \[2\] times in one forward pass.*its own module"):
        dissect(generator, ["act"], _grey_segmenter(), latent_shape=(8,), **SETTINGS)

    class Shared(tp.BasicGAN):
        def __init__(self):
            super().__init__()
            self.generator = tp.SharedActivationGenerator()

    callback = DissectionCallback(["act"], _grey_segmenter(), num_samples=8, batch_size=4, ablation_check=False)
    # the forward itself succeeded: this leads, not the other latent layout's matmul error
    lead = r"^DissectionCallback dry run failed: LayerCallError: layers \['act'\] ran \[2\]"
    with pytest.raises(RuntimeError, match=lead):
        _trainer(tmp_path, callback, max_steps=1).fit(Shared(), _grey_loader())


# ====================================================================== precision and torch.compile
@pytest.mark.parametrize("precision", ["bf16-true", "bf16-mixed"])
def test_template_bf16_round(tmp_path, precision):
    module = tp.BasicGAN()
    dtypes = []

    class Spy(DissectionCallback):
        def _round_body(self, trainer, pl_module):
            dtypes.append(next(pl_module.generator.parameters()).dtype)
            return super()._round_body(trainer, pl_module)

    callback = Spy(LINEAR_LAYERS, _grey_segmenter(), num_samples=16, batch_size=8, threshold_mode="quantile",
                   iou_threshold=0.0, num_visualized_units=1, top_k=2, ablation_check=True, ablation_samples=8,
                   on_error="raise")
    _trainer(tmp_path, callback, precision=precision).fit(module, _grey_loader())
    assert dtypes == [torch.bfloat16 if precision == "bf16-true" else torch.float32]
    result = callback.last_result
    assert result is not None and callback.last_ablations
    for name in LINEAR_LAYERS:
        levels = np.array([u.level for u in result.layers[name].units])
        assert np.isfinite(levels).all()


def test_bf16_generator_latents_edits_and_insertion_follow_its_dtype():
    generator = tp.Generator().eval().to(torch.bfloat16)
    segmenter = _grey_segmenter()
    z = torch.randn(8, 8, generator=torch.Generator().manual_seed(2))  # float32 latents
    effect = ablation_effect(generator, "model.4", [0, 1], 1, segmenter, z, num_controls=0)
    inserted = insertion_effect(generator, "model.4", [0, 1], 1, segmenter, z, value=torch.full((32,), 3.0),
                                num_controls=0)
    with torch.no_grad():
        base = segmenter(generator(z.to(torch.bfloat16)).float())
    assert effect.baseline == pytest.approx(_fraction(base, 1), abs=1e-6)
    assert math.isfinite(inserted.inserted)


@pytest.mark.slow  # compiling takes ~15 s on CPU
def test_torch_compiled_generator_dissects_like_the_eager_one():
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is unavailable in this torch build")
    generator = tp.Generator().eval()
    compiled = torch.compile(generator)
    segmenter = _grey_segmenter()
    eager = dissect(generator, LINEAR_LAYERS, segmenter, latent_shape=(8,), **SETTINGS)
    got = dissect(compiled, LINEAR_LAYERS, segmenter, latent_shape=(8,), **SETTINGS)
    for name in LINEAR_LAYERS:
        torch.testing.assert_close(got.layers[name].iou, eager.layers[name].iou, atol=1e-5, rtol=0)
        assert [u.top_images for u in got.layers[name].units] == [u.top_images for u in eager.layers[name].units]


# ====================================================================== command line
def test_cli_latent_sampler_generate_selector(tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["dissect", "--generator", "tests.helpers.third_party:stylegan",
                 "--layers", "synthesis.blocks.1,synthesis.blocks.2",
                 "--latent-sampler", "tests.helpers.third_party:style_sampler",
                 "--generate", "tests.helpers.third_party:style_generate", "--selector", "0",
                 "--segmenter", "tests.helpers.third_party:segmenter_01", "--num-samples", "24", "--batch-size", "8",
                 "--seed", "3", "--threshold-mode", "quantile", "--quantile", "0.9", "--top-k", "3",
                 "--summary-units", "0", "--quiet", "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "dissect.json").read_text())
    # the same dissection as the Python API with the same settings
    reference = dissect(tp.stylegan(0), ["synthesis.blocks.1"], tp.segmenter_01(), latent_sampler=tp.style_sampler,
                        generate=tp.style_generate, selector=0, **SETTINGS)
    units = data["layers"]["synthesis.blocks.1"]["units"]
    assert len(units) == tp.CHANNELS
    assert [u["top_images"] for u in units] == [u.top_images for u in reference.layers["synthesis.blocks.1"].units]


def test_cli_plain_wrapper_module_is_used_as_named(capsys):
    # a plain nn.Module is dissected as it is named (only a LightningModule is searched for its
    # generator): its layers are named from the wrapper, and a wrong name gets the close match
    code = main(["dissect", "--generator", "tests.helpers.third_party:ConditionalGAN", "--layers", "fc",
                 "--num-samples", "8", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown layer 'fc'" in err and "'G.fc'" in err
    # following the advice, with a generate= that feeds the wrapper's two-input G, works
    code = main(["dissect", "--generator", "tests.helpers.third_party:ConditionalGAN", "--layers", "G.fc",
                 "--generate", "tests.helpers.third_party:conditional_wrapper_generate", "--image-size", "16",
                 "--num-samples", "8", "--batch-size", "4", "--summary-units", "0", "--quiet"])
    assert code == 0, capsys.readouterr().err


# ====================================================================== the docs page runs
def _python_blocks(text: str) -> list[str]:
    blocks, skip = [], False
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("<!--") and "no-run" in line:
            skip = True
        elif line.strip() == "```python":
            body = []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            if not skip:
                blocks.append("\n".join(body))
            skip = False
        elif line.strip():
            skip = False if not line.strip().startswith("<!--") else skip
        i += 1
    return blocks


@pytest.mark.slow
def test_real_models_page_runs(tmp_path):
    page = (ROOT / "docs" / "real-models.md").read_text()
    blocks = _python_blocks(page)
    assert len(blocks) >= 4
    assert "nvidia/segformer-b0-finetuned-ade-512-512" not in "\n".join(blocks)  # the online block is skipped
    script = tmp_path / "page.py"
    script.write_text("\n\n".join(blocks))
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"units", run.stdout)


warnings.filterwarnings("ignore", ".*does not have many workers.*")
