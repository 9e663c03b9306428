"""Layer layouts: tokens ``(B, prefix + h·w, D)`` and channels-last ``(B, H, W, C)`` outputs as units.

The painted ViT-shaped reader is the ground truth: its token ``d`` at patch ``(i, j)`` is the mask of
concept ``d`` pooled to the patch grid, behind a class token, so unit ``d`` must get IoU 1 with
concept ``d``, read as tokens or in channels-last form. Conversions are checked against plain
loops over token indices; edits against NumPy; every other entry point against the same network
read channels-first.
"""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from lightning_dissect import dissect, dissect_images
from lightning_dissect.engine.hooks import LayerEdit, capture_layers, edit_layers
from lightning_dissect.engine.images import ImageSet
from lightning_dissect.engine.layouts import LayerLayout, LayoutError, parse_layouts, token_grids
from lightning_dissect.interventions import ablate, intervene
from lightning_dissect.result import DissectionResult
from lightning_dissect.vocabulary import ConceptVocabulary

VOCAB = ConceptVocabulary(("unlabeled", "red", "green", "blue"), ("none", "colour", "colour", "colour"))
PATCH, GRID = 4, 6
SIZE = PATCH * GRID


def painted_scenes(n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose every patch is pure red, green or blue; the segmentation at the patch grid."""
    gen = torch.Generator().manual_seed(seed)
    grid = torch.randint(1, 4, (n, GRID, GRID), generator=gen)
    pixels = grid.repeat_interleave(PATCH, 1).repeat_interleave(PATCH, 2)
    images = F.one_hot(pixels - 1, 3).permute(0, 3, 1, 2).float()
    return images, grid


class PatchEmbed(nn.Module):
    patch_size = PATCH

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, PATCH)


class PaintedViT(nn.Module):
    """Unit ``d`` of ``blocks`` (tokens) and of ``grid`` (channels-last) is concept ``d`` pooled to the patches.

    Unit 0 (the unlabeled concept) is zero; the class token in front is far above every patch token.
    """

    def __init__(self) -> None:
        super().__init__()
        self.embed = PatchEmbed()
        self.blocks = nn.Identity()
        self.grid = nn.Identity()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.embed(x)  # (B, 3, h, w): channel k - 1 is concept k's mask pooled to the patch
        units = torch.cat([torch.zeros_like(pooled[:, :1]), pooled], 1)
        patches = units.flatten(2).transpose(1, 2)  # (B, h·w, 4), patches row by row
        cls = patches.mean(1, keepdim=True) + 5.0
        tokens = self.blocks(torch.cat([cls, patches], 1))
        b, _, d = tokens.shape
        grid = self.grid(tokens[:, 1:].reshape(b, GRID, GRID, d))
        return self.head(grid.mean((1, 2)))


def reference_maps(tokens: np.ndarray, prefix: int, h: int, w: int) -> np.ndarray:
    """``(B, D, h, w)`` from ``(B, prefix + h·w, D)`` by a loop over token indices."""
    b, _, d = tokens.shape
    out = np.zeros((b, d, h, w), tokens.dtype)
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = tokens[:, prefix + i * w + j, :]
    return out


# ---------------------------------------------------------------------- pure functions
@pytest.mark.parametrize("prefix,h,w", [(0, 3, 3), (1, 2, 4), (5, 4, 3)])
def test_token_maps_match_a_loop_and_write_back_exactly(prefix, h, w):
    tokens = torch.randn(2, prefix + h * w, 5, generator=torch.Generator().manual_seed(prefix))
    layout = LayerLayout.tokens(prefix=prefix, grid=(h, w))
    maps = layout.to_maps(tokens)
    np.testing.assert_array_equal(maps.numpy(), reference_maps(tokens.numpy(), prefix, h, w))
    assert torch.equal(layout.from_maps(maps, tokens), tokens)
    edited = layout.from_maps(maps * 0 + 7, tokens)
    assert torch.equal(edited[:, :prefix], tokens[:, :prefix])
    assert bool((edited[:, prefix:] == 7).all())


def test_channels_last_maps_match_a_loop():
    x = torch.randn(2, 3, 4, 5)
    maps = LayerLayout.channels_last().to_maps(x)
    expected = np.zeros((2, 5, 3, 4), np.float32)
    for c in range(5):
        expected[:, c] = x.numpy()[..., c]
    np.testing.assert_array_equal(maps.numpy(), expected)
    assert torch.equal(LayerLayout.channels_last().from_maps(maps, x), x)


@pytest.mark.parametrize(
    "count,size,patch,expected",
    [
        (197, (224, 224), None, (1, 14, 14)),  # ViT-B/16: class token + 14x14
        (197, (224, 224), 16, (1, 14, 14)),
        (261, (224, 224), 14, (5, 16, 16)),  # DINOv2 with 4 register tokens
        (1 + 12 * 16, (192, 256), 16, (1, 12, 16)),  # a rectangular grid
        (49, (224, 224), 32, (0, 7, 7)),  # no prefix (DiT, Swin tokens)
        (198, (224, 224), 16, (2, 14, 14)),  # DeiT: class + distillation tokens
    ],
)
def test_token_grids_of_real_shapes(count, size, patch, expected):
    assert token_grids(count, size, patch) == [expected]
    layout = LayerLayout().resolve((2, count, 8), image_size=size, patch_size=patch)
    assert (layout.kind, layout.prefix, layout.grid) == ("tokens", expected[0], expected[1:])


def test_ambiguous_or_impossible_tokens_are_refused_naming_the_option():
    with pytest.raises(LayoutError, match=r"several ways.*prefix=1 and a 5x5 grid.*prefix=10 and a 4x4 grid"):
        LayerLayout().resolve((2, 26, 8), image_size=(40, 40), layer="blocks.1")
    with pytest.raises(LayoutError, match=r"selector=LayerLayout.tokens\(prefix=\.\.\., grid=\(h, w\)\).*--layout "
                                          r"blocks.1=tokens:prefix=1"):
        LayerLayout().resolve((2, 26, 8), image_size=(40, 40), layer="blocks.1")
    # declared, it is read as declared
    assert LayerLayout.tokens(prefix=10).resolve((2, 26, 8), image_size=(40, 40)).grid == (4, 4)
    assert LayerLayout.tokens(grid=(5, 5)).resolve((2, 26, 8)).prefix == 1
    with pytest.raises(LayoutError, match=r"shape \(2, 7, 8\): not \(B, U, h, w\) maps, nor a grid of tokens"):
        LayerLayout().resolve((2, 7, 8), image_size=(32, 32), patch_size=8)
    with pytest.raises(LayoutError, match=r"26 tokens, which is not 2 prefix tokens \+ a 5x5 grid"):
        LayerLayout.tokens(prefix=2, grid=(5, 5)).resolve((2, 26, 8))
    with pytest.raises(LayoutError, match="not .B, H, W, C. maps as declared"):
        LayerLayout.channels_last().resolve((2, 26, 8))


def test_channels_axis_from_the_image_aspect_and_the_modules():
    square = (224, 224)
    assert LayerLayout().resolve((2, 56, 56, 96), image_size=square).kind == "channels-last"  # Swin
    assert LayerLayout().resolve((2, 14, 14, 384), image_size=square).kind == "channels-last"
    assert LayerLayout().resolve((2, 96, 56, 56), image_size=square).kind == "channels-first"
    assert LayerLayout().resolve((2, 8, 16, 32), image_size=(64, 128)).kind == "channels-first"
    # the shape cannot tell (an 8x8x8 output): the layer's own modules do
    norm_last = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    assert LayerLayout().resolve((2, 8, 8, 8), image_size=(32, 32), module=norm_last).kind == "channels-last"
    assert LayerLayout().resolve((2, 8, 8, 8), image_size=(32, 32), module=nn.Conv2d(3, 8, 1)).kind == "channels-first"
    # a linear map (a style affine in a convolutional block) is no sign: the convention, channels-first
    styled = nn.ModuleDict({"affine": nn.Linear(16, 8)})
    assert LayerLayout().resolve((2, 8, 8, 8), image_size=(32, 32), module=styled).kind == "channels-first"


def test_channels_last_looking_output_without_evidence_warns_naming_the_option():
    with pytest.warns(UserWarning, match=r"looks channels-last.*LayerLayout.channels_last\(\).*--layout "
                                         r"stage=channels-last"):
        layout = LayerLayout().resolve((2, 14, 14, 384), layer="stage")  # no image size, no modules
    assert layout.kind == "channels-first"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LayerLayout().resolve((2, 384, 14, 14), layer="conv")


def test_specs_parse_and_round_trip():
    for spec in ("channels-first", "channels-last", "tokens", "tokens:prefix=5", "tokens:prefix=1,grid=12x16"):
        assert LayerLayout.parse(spec).spec == spec
    assert parse_layouts(["blocks.1=tokens:prefix=1", "stage=channels-last"]) == {
        "blocks.1": LayerLayout.tokens(prefix=1), "stage": LayerLayout.channels_last(),
    }  # fmt: skip
    for bad in ("rows", "tokens:prefix=x", "tokens:size=3", "channels-last:prefix=1"):
        with pytest.raises(ValueError):
            LayerLayout.parse(bad)
    with pytest.raises(ValueError, match="not both"):
        parse_layouts(["tokens", "x=channels-last"])


# ---------------------------------------------------------------------- the painted reader
@pytest.fixture(scope="module")
def scenes():
    images, grid = painted_scenes()
    return TensorDataset(images, grid)


def check_painted(layer):
    assert layer.num_units == 4
    for d in range(1, 4):
        assert layer.units[d].label == VOCAB.names[d]
        assert layer.units[d].iou == pytest.approx(1.0)


def test_painted_vit_tokens_get_iou_one(scenes):
    result = dissect_images(PaintedViT(), ["blocks", "grid"], scenes, vocabulary=VOCAB, batch_size=5, quantile=0.5,
                            progress=False)
    check_painted(result["blocks"])
    check_painted(result["grid"])  # the same layer in channels-last form: recognised from its shape
    assert result["blocks"].layout == f"tokens:prefix=1,grid={GRID}x{GRID}"
    assert result["grid"].layout == "channels-last"
    np.testing.assert_array_equal(result["blocks"].iou.numpy(), result["grid"].iou.numpy())
    loaded = DissectionResult.from_json(result.to_json())
    assert loaded["blocks"].layout == result["blocks"].layout
    console = Console(file=io.StringIO(), width=200)
    console.print(result.summary())
    assert f"read as tokens:prefix=1,grid={GRID}x{GRID}" in " ".join(console.file.getvalue().split())


def test_declared_layouts_give_the_same_result(scenes):
    declared = {"blocks": LayerLayout.tokens(prefix=1, grid=(GRID, GRID)), "grid": LayerLayout.channels_last()}
    result = dissect_images(PaintedViT(), ["blocks", "grid"], scenes, vocabulary=VOCAB, batch_size=5, quantile=0.5,
                            selector=declared, progress=False)
    check_painted(result["blocks"])
    check_painted(result["grid"])


def test_a_wrong_declaration_is_refused_before_any_pass(scenes):
    with pytest.raises(ValueError, match=r"37 tokens, which is not 2 prefix tokens \+ a 6x6 grid"):
        dissect_images(PaintedViT(), ["blocks"], scenes, vocabulary=VOCAB, progress=False,
                       selector=LayerLayout.tokens(prefix=2, grid=(6, 6)))


def test_old_result_files_without_layouts_load(scenes):
    result = dissect_images(PaintedViT(), ["blocks"], scenes, vocabulary=VOCAB, quantile=0.5, progress=False)
    data = json.loads(result.to_json())
    del data["layers"]["blocks"]["layout"]
    assert DissectionResult.from_dict(data)["blocks"].layout is None


# ---------------------------------------------------------------------- edits in the layer's own layout
def test_ablating_token_units_edits_the_patches_and_keeps_the_class_token():
    images, _ = painted_scenes(4)
    net = PaintedViT()
    with capture_layers(net, ["blocks"]) as plain:
        net(images)
    with intervene(net, {"blocks": ablate([1, 3], num_units=4)}), capture_layers(net, ["blocks", "grid"]) as cut:
        net(images)
    expected = plain["blocks"].numpy().copy()
    expected[:, 1:, [1, 3]] = 0.0  # the patch tokens of units 1 and 3; the class token untouched
    np.testing.assert_array_equal(cut["blocks"].numpy(), expected)
    np.testing.assert_array_equal(cut["grid"].numpy(), expected[:, 1:].reshape(4, GRID, GRID, 4))


def test_a_masked_edit_on_tokens_follows_the_patch_grid():
    images, _ = painted_scenes(2)
    net = PaintedViT()
    region = torch.zeros(SIZE, SIZE)
    region[:PATCH * 2, :] = 1.0  # the top two rows of patches
    with capture_layers(net, ["blocks"]) as plain:
        net(images)
    edit = LayerEdit(alpha=torch.tensor([0.0, 1.0, 1.0, 1.0]), value=9.0, mask=region)
    with edit_layers(net, {"blocks": edit}), capture_layers(net, ["blocks"]) as got:
        net(images)
    expected = plain["blocks"].numpy().copy()
    for i in range(2):
        for j in range(GRID):
            expected[:, 1 + i * GRID + j, 1:] = 9.0
    np.testing.assert_allclose(got["blocks"].numpy(), expected)


def test_ablating_zero_units_changes_nothing_and_channels_last_edits_too():
    images, _ = painted_scenes(3)
    net = PaintedViT()
    base = net(images)
    with intervene(net, {"blocks": ablate([], num_units=4)}):
        assert torch.equal(net(images), base)
    with intervene(net, {"grid": ablate([2], num_units=4)}):
        cut = net(images)
    pooled = F.avg_pool2d(images, PATCH)
    means = pooled.mean((2, 3)).numpy()  # per concept, mean over the grid
    feats = np.concatenate([np.zeros((3, 1)), means], 1)
    feats[:, 2] = 0.0
    expected = feats @ net.head.weight.detach().numpy().T + net.head.bias.detach().numpy()
    np.testing.assert_allclose(cut.detach().numpy(), expected, atol=1e-6)


# ---------------------------------------------------------------------- generators with token layers
class AsTokens(nn.Module):
    """Turns ``(B, U, h, w)`` maps into ``(B, 1 + h·w, U)`` tokens (layer ``tokens``) and back."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Identity()

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        b, u, h, w = maps.shape
        cls = maps.mean((2, 3))[:, None] - 3.0
        tokens = self.tokens(torch.cat([cls, maps.flatten(2).transpose(1, 2)], 1))
        return tokens[:, 1:].transpose(1, 2).reshape(b, u, h, w)


class AsChannelsLast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.grid = nn.Identity()

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.grid(maps.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_a_generator_token_layer_dissects_as_its_maps():
    from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
    from tests.helpers.painting import PaintingGenerator

    world = SceneWorld(32)
    gen = PaintingGenerator(world, ["tree", "house", "water"])
    seg = SyntheticSceneSegmenter(world)
    options = dict(latent_shape=(gen.latent_dim,), num_samples=24, batch_size=12, progress=False)
    plain = dissect(gen, ["layout"], seg, **options)
    gen.layout = AsTokens()
    tokens = dissect(gen, ["layout.tokens"], seg, **options)
    gen.layout = AsChannelsLast()
    last = dissect(gen, ["layout.grid"], seg, **options)
    assert tokens["layout.tokens"].layout == "tokens:prefix=1,grid=8x8"
    assert last["layout.grid"].layout == "channels-last"
    for other in (tokens["layout.tokens"], last["layout.grid"]):
        assert other.num_units == plain["layout"].num_units
        np.testing.assert_allclose(other.iou.numpy(), plain["layout"].iou.numpy(), atol=1e-6)
        assert [u.label for u in other.units] == [u.label for u in plain["layout"].units]


def test_causal_units_on_a_token_layer_match_the_maps():
    from lightning_dissect.interventions import causal_units
    from lightning_dissect.interventions._toy import sky_grass

    gen, seg = sky_grass()  # unit 0 of layer "1" paints sky, unit 1 grass
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.3], [0.2, 0.8], [0.6, 0.5], [0.1, 0.3]])
    options = dict(iou=torch.tensor([0.5, 0.3]), batch_size=3, steps=3, sizes=[1], num_examples=0)
    plain = causal_units(gen, "1", "sky", seg, z, **options)
    as_tokens = nn.Sequential(gen[0], gen[1], AsTokens(), *gen[2:])
    tokens = causal_units(as_tokens, "2.tokens", "sky", seg, z, **options)
    torch.testing.assert_close(tokens.alpha, plain.alpha, atol=1e-5, rtol=0)
    assert tokens.top_units(1) == [0]
    assert tokens.comparison[0].ablated_alpha == plain.comparison[0].ablated_alpha


# ---------------------------------------------------------------------- images in the wrong layout
def test_channels_last_images_are_refused_first_with_the_fix():
    images, grid = painted_scenes(4)
    last = images.permute(0, 2, 3, 1).contiguous()
    with pytest.raises(ValueError, match=r"look channels-last \(N, H, W, C\).*permute\(0, 3, 1, 2\)"):
        ImageSet(last)
    # before the segmentation sizes are compared
    with pytest.raises(ValueError, match=r"item 0 of shape \(24, 24, 3\) look channels-last.*permute\(2, 0, 1\)"):
        dissect_images(PaintedViT(), ["blocks"], TensorDataset(last, grid), vocabulary=VOCAB, progress=False)


def test_channels_last_generator_images_are_refused_with_the_fix():
    from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter

    gen = nn.Sequential(nn.Linear(4, 16 * 16 * 3), nn.Unflatten(1, (16, 16, 3)), nn.Tanh())
    match = r"generator's images of shape \(\d+, 16, 16, 3\) look channels-last.*generate="
    with pytest.raises(ValueError, match=match):
        dissect(gen, ["0"], SyntheticSceneSegmenter(SceneWorld(16)), latent_shape=(4,), num_samples=4,
                progress=False)


# ---------------------------------------------------------------------- the command line
def test_command_line_layout_option_and_the_report(tmp_path):
    from PIL import Image

    from lightning_dissect.cli import main

    images, grid = painted_scenes(6)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(6):
        pixels = (images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "images" / f"scene{i}.png")
        Image.fromarray(grid[i].numpy().astype(np.uint8), mode="L").save(tmp_path / "labels" / f"scene{i}.png")
    (tmp_path / "concepts.txt").write_text("\n".join(VOCAB.names) + "\n")
    common = ["dissect", "--network", "tests.test_layouts:PaintedViT", "--images", str(tmp_path / "images"),
              "--segmentations", str(tmp_path / "labels"), "--concepts", str(tmp_path / "concepts.txt"),
              "--quantile", "0.5", "--quiet"]
    out = tmp_path / "out"
    assert main([*common, "--layers", "blocks", "grid", "--layout", "blocks=tokens:prefix=1",
                 "grid=channels-last", "--output", str(out)]) == 0
    saved = json.loads((out / "dissect.json").read_text())
    assert saved["layers"]["blocks"]["layout"] == "tokens:prefix=1,grid=6x6"
    assert saved["layers"]["grid"]["layout"] == "channels-last"
    for name in ("blocks", "grid"):
        assert saved["layers"][name]["num_units"] == 4
        assert [u["iou"] for u in saved["layers"][name]["units"][1:]] == pytest.approx([1.0, 1.0, 1.0])
    report = next(out.glob("*.html")).read_text()
    assert "layout read in" in report and "tokens:prefix=1,grid=6x6" in report
    # a wrong declaration is one clear line naming the layer
    code = main([*common, "--layers", "blocks", "--layout", "tokens:prefix=3", "--output", str(tmp_path / "bad")])
    assert code != 0
    assert main([*common, "--layers", "blocks", "--layout", "nope=tokens", "--output", str(tmp_path / "bad2")]) != 0


# ---------------------------------------------------------------------- both callbacks
def test_both_callbacks_dissect_token_layers_during_training(tmp_path):
    import lightning.pytorch as pl

    from lightning_dissect import DissectionCallback, ImageDissectionCallback
    from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
    from tests.helpers.tiny_gan import TinyGAN, scene_loader

    world = SceneWorld(16)
    pl.seed_everything(0)
    model = TinyGAN()
    model.generator.layer1.append(AsTokens())  # (B, 1 + 8·8, 16) tokens, read back as maps
    model.discriminator[1] = nn.Sequential(nn.LeakyReLU(0.2), AsTokens())
    generator_cb = DissectionCallback(["layer1.3.tokens"], SyntheticSceneSegmenter(world), num_samples=16,
                                      batch_size=8, num_visualized_units=0, ablation_samples=8, ablation_top_n=2,
                                      quantile=0.9)
    val_images, val_labels = world.render(12, seed=7)
    reader_cb = ImageDissectionCallback(["1.1.tokens"], network="discriminator", vocabulary=world.vocabulary,
                                        value_range=(-1, 1), name="discriminator", num_visualized_units=0,
                                        quantile=0.9)
    trainer = pl.Trainer(max_epochs=1, default_root_dir=tmp_path, logger=False, callbacks=[generator_cb, reader_cb],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         accelerator="cpu", num_sanity_val_steps=0, limit_train_batches=2)
    trainer.fit(model, scene_loader(32, batch_size=16),
                torch.utils.data.DataLoader(TensorDataset(val_images, val_labels), batch_size=6))
    generated = generator_cb.last_result["layer1.3.tokens"]
    assert generated.num_units == 16 and generated.layout == "tokens:prefix=1,grid=8x8"
    read = reader_cb.last_result["1.1.tokens"]
    assert read.num_units == 8 and read.layout == "tokens:prefix=1,grid=8x8"
    assert generator_cb.history and reader_cb.history


def test_reader_ablation_switches_off_token_units():
    from lightning_dissect.interventions import reader_ablation

    images, grid = painted_scenes(8)
    scenes = TensorDataset(images, grid)
    net = PaintedViT()
    net.head = nn.Linear(4, 1)
    with torch.no_grad():
        net.head.weight.copy_(torch.tensor([[0.0, 1.0, 2.0, 3.0]]))
        net.head.bias.zero_()
    result = dissect_images(net, ["blocks"], scenes, vocabulary=VOCAB, batch_size=4, quantile=0.5, progress=False)
    (effect,) = reader_ablation(net, result["blocks"], scenes, vocabulary=VOCAB, metric="score", top_n=1,
                                concepts=["green"], num_controls=0, batch_size=4)
    assert list(effect.units) == [2]
    fractions = F.one_hot(grid - 1, 3).float().mean((1, 2)).numpy()  # (N, 3): each concept's share of patches
    weights = np.array([1.0, 2.0, 3.0])
    assert effect.baseline == pytest.approx(float((fractions @ weights).mean()), abs=1e-5)
    assert effect.ablated == pytest.approx(float((fractions @ weights - 2.0 * fractions[:, 1]).mean()), abs=1e-5)
