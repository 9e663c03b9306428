"""The paint app: edits against a NumPy reference, replay to identical pixels, the HTTP API, the CLI.

The generator is the painting generator of ``tests/helpers/painting.py``: unit ``k`` of ``"layout"``
*is* concept ``k`` (unit 0 paints "tree"), so what a draw or an erase must do is known exactly.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from lightning_dissect.app import PaintEdit, Painter, PaintError, encode_mask, replay_edit
from lightning_dissect.app.edits import decode_mask, sample_bank
from lightning_dissect.visual.visualize import to_uint8
from tests.helpers.paint_app import (
    SIZE,
    decode_data_url,
    fractions,
    make_generator,
    painting_setup,
    runs_to_mask,
    tree_sample,
)

fastapi = pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from lightning_dissect.app.server import create_app  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    return painting_setup()


@pytest.fixture(scope="module")
def painter(setup):
    return Painter(setup.generator, setup.result, setup.segmenter, statistics_samples=64)


@pytest.fixture(scope="module")
def client(painter):
    return TestClient(create_app(painter, max_request_bytes=256 * 1024))


def box(top: int, left: int, height: int, width: int) -> torch.Tensor:
    m = torch.zeros(SIZE, SIZE)
    m[top:top + height, left:left + width] = 1
    return m


def draw(mask: torch.Tensor, **extra) -> dict:
    return {"mode": "draw", "layer": "layout", "concept": "tree", "mask": encode_mask(mask), **extra}


# ------------------------------------------------------------------ the edit, against NumPy
def reference_edit(setup, seed: int, strokes: list[tuple[str, list[int], np.ndarray, np.ndarray | None]]):
    """The edited image by hand: layout maps edited with NumPy, then painted by the generator."""
    gen = setup.generator
    z = sample_bank(seed, (gen.latent_dim,)).latents
    maps = gen.unit_maps(z)[0].numpy().astype(np.float64)  # (U, 8, 8)
    low = maps.shape[-1]
    for mode, units, mask, values in strokes:
        cell = SIZE // low
        pooled = mask.reshape(low, cell, low, cell).mean(axis=(1, 3))  # area pooling
        for k, u in enumerate(units):
            value = 0.0 if mode == "erase" else values[k]
            maps[u] = maps[u] * (1 - pooled) + value * pooled
    images, _ = gen.paint(torch.from_numpy(maps).float()[None])
    return images[0]


def test_draw_and_erase_match_a_numpy_edit_of_the_unit_maps(setup, painter):
    seed, tree = tree_sample(setup)
    rows, cols = np.nonzero(tree)
    erase = box(max(rows.min() - 6, 0), max(cols.min() - 6, 0), np.ptp(rows) + 13, np.ptp(cols) + 13)
    paint = box(40, 4, 14, 20)
    out = painter.render({"seed": seed, "concept": "tree", "strokes": [
        draw(paint, strength=1.5), {"mode": "erase", "layer": "layout", "units": [0], "mask": encode_mask(erase)}]})
    values = out["edit"].strokes[0].values
    expected = reference_edit(setup, seed, [("draw", [0], paint.numpy(), values), ("erase", [0], erase.numpy(), None)])
    assert torch.allclose(out["edited_raw"], expected, atol=1e-5)


def test_default_strength_writes_the_insertion_value_of_insert(setup, painter):
    """Strength 1 writes each unit's 0.99 quantile over the statistics latents (NumPy quantile)."""
    stroke = painter.stroke(draw(box(0, 0, 8, 8), size=2))
    iou = setup.result.layers["layout"].iou[:, setup.world.vocabulary.index("tree")].numpy()
    assert stroke.units == sorted(np.lexsort((np.arange(iou.size), -iou))[:2].tolist())  # top two by IoU
    assert stroke.units[0] == 0
    bank = torch.randn(64, setup.generator.latent_dim, generator=torch.Generator().manual_seed(1))
    maps = setup.generator.unit_maps(bank).numpy()
    for unit, value in zip(stroke.units, stroke.values):
        reference = np.quantile(maps[:, unit].ravel(), 0.99)
        assert value == pytest.approx(reference, rel=0.02)
    doubled = painter.stroke(draw(box(0, 0, 8, 8), size=2, strength=2.0))
    assert doubled.values == pytest.approx([2 * v for v in stroke.values])


def test_replayed_json_gives_identical_pixels(setup, client, tmp_path):
    seed, tree = tree_sample(setup)
    body = {"seed": seed, "concept": "tree", "strokes": [
        draw(box(40, 4, 14, 20), strength=0.8),
        {"mode": "erase", "layer": "layout", "concept": "tree", "mask": encode_mask(torch.from_numpy(tree))},
        {"mode": "draw", "layer": "layout", "units": [1, 3], "mask": encode_mask(box(2, 40, 10, 10))},
    ]}
    response = client.post("/api/render", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    path = tmp_path / "edit.json"
    path.write_text(json.dumps(data["edit"]))
    fresh = make_generator()  # a new instance, as a notebook would load it
    replayed = replay_edit(fresh, path)
    pixels = to_uint8(replayed[0], (-1.0, 1.0)).permute(1, 2, 0).numpy()
    assert np.array_equal(pixels, decode_data_url(data["edited"]))
    edit = PaintEdit.from_json(path)
    assert [s.units for s in edit.strokes] == [[0], [0], [1, 3]]
    assert [s.mode for s in edit.strokes] == ["draw", "erase", "draw"]
    assert edit.seed == seed and edit.latent_shape == [setup.generator.latent_dim]


def test_render_reports_the_fractions_it_shows(setup, client):
    """The page's numbers equal the concept fractions of its own images, segmented again here."""
    region = box(40, 4, 14, 20)
    data = client.post("/api/render", json={"seed": 0, "concept": "tree", "strokes": [draw(region)]}).json()
    tree = setup.world.vocabulary.index("tree")
    mask = runs_to_mask(data["edit"]["strokes"][0]["mask"])
    assert np.array_equal(mask, region.numpy().astype(bool))
    before = fractions(decode_data_url(data["original"]), mask, tree, setup.segmenter)
    after = fractions(decode_data_url(data["edited"]), mask, tree, setup.segmenter)
    stats = data["stats"]
    assert (stats["inside_before"], stats["outside_before"]) == pytest.approx(before)
    assert (stats["inside_after"], stats["outside_after"]) == pytest.approx(after)
    assert after[0] - before[0] > 0.5  # a tree appeared in the stroke
    assert abs(after[1] - before[1]) < 0.03  # and barely anywhere else


def test_tabs_are_independent_sessions(client):
    """Concurrent renders of different strokes give what each gives alone (the generator is locked)."""
    bodies = [{"seed": s, "concept": "tree", "strokes": [draw(box(8 * s, 8, 20, 30))]} for s in range(4)]
    alone = [client.post("/api/render", json=b).json()["edited"] for b in bodies]
    together: dict[int, str] = {}

    def run(i: int) -> None:
        for _ in range(3):
            together[i] = client.post("/api/render", json=bodies[i]).json()["edited"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [together[i] for i in range(4)] == alone
    assert len(set(alone)) == 4


# ------------------------------------------------------------------ browsing
def test_info_units_and_strips(setup, client):
    info = client.get("/api/info").json()
    assert info["image_size"] == [SIZE, SIZE] and info["default_layer"] == "layout"
    concepts = info["layers"][0]["concepts"]
    assert {c["name"] for c in concepts[:5]} == {"tree", "house", "water", "sun", "cloud"}
    assert all(c["units"] == 1 for c in concepts[:5])
    units = client.get("/api/units", params={"layer": "layout"}).json()["units"]
    assert [u["label"] for u in units[:5]] == ["tree", "house", "water", "sun", "cloud"]
    assert units[0]["iou"] == pytest.approx(setup.result.layers["layout"].units[0].iou)
    first = setup.result.layers["layout"].units[0]
    assert units[0]["uncertainty"] == {"p_value": first.p_value, "excess": pytest.approx(first.excess)}
    assert units[0]["alpha"] == {}
    strip = client.get("/api/strip.png", params={"layer": "layout", "unit": 0})
    assert strip.status_code == 200 and strip.headers["content-type"] == "image/png"
    import io

    from PIL import Image

    width, height = Image.open(io.BytesIO(strip.content)).size
    assert height == SIZE and width == 6 * SIZE + 5 * 2  # six top images, 2-pixel gaps
    chosen = client.get("/api/concept-units", params={"layer": "layout", "concept": "water", "size": 1}).json()
    assert chosen["units"] == [2] and chosen["source"] == "iou"
    sample = client.get("/api/sample.png", params={"seed": 3})
    assert sample.status_code == 200
    for name in ("", "static/paint.js", "static/paint.css"):
        page = client.get("/" + name)
        assert page.status_code == 200
        assert "http://" not in page.text and "https://" not in page.text  # nothing from the internet


def test_uncertainty_and_causal_alpha_are_shown_when_present(setup):
    import copy

    from lightning_dissect.interventions import CausalUnits

    result = copy.deepcopy(setup.result)
    unit = result.layers["layout"].units[0]
    unit.p_value = 0.001
    result.layers["layout"].units[1].p_value = None  # a result written before p-values were measured
    width = result.layers["layout"].num_units
    alpha = torch.tensor([0.9, 0.1, 0.0, 0.0, 0.6, 0.0][:width])
    causal = CausalUnits(layer="layout", concept="tree", concept_index=setup.world.vocabulary.index("tree"),
                         alpha=alpha, ranking=alpha.argsort(descending=True), iou=torch.zeros(width),
                         gradient=torch.zeros(width), insertion_value=torch.ones(width), baseline=0.1)
    painter = Painter(setup.generator, result, setup.segmenter, causal=causal, statistics_samples=16)
    rows = painter.units_table("layout")
    assert rows[0]["uncertainty"] == {"p_value": 0.001, "excess": pytest.approx(unit.excess)}
    assert rows[1]["uncertainty"] is None  # not measured (a None p-value shows nothing)
    assert [r["alpha"]["tree"] for r in rows] == pytest.approx(alpha.tolist())
    assert painter.concept_units("layout", "tree") == ([0, 4], "causal")  # α >= 0.5: two units
    assert painter.concept_units("layout", "tree", 1) == ([0], "causal")


# ------------------------------------------------------------------ bad requests
@pytest.mark.parametrize(
    ("stroke", "status", "fragment"),
    [
        ({"mask": {"size": [32, 32], "runs": [1024]}}, 400, "is 32x32 pixels but the image is 64x64"),
        ({"mask": {"size": [64, 64], "runs": [5]}}, 400, "cover 5 pixels"),
        ({"mask": "nope"}, 400, "'size' [H, W] and 'runs'"),
        ({"concept": "dragon"}, 400, "dragon"),
        ({"concept": None, "units": [0, 99]}, 400, "unit 99 is out of range: layer 'layout' has 6 units (0 to 5)"),
        ({"concept": None, "units": []}, 400, "the unit set is empty"),
        ({"concept": None, "units": "3, x"}, 400, "unit indices must be integers"),
        ({"layer": "nope"}, 400, "unknown layer 'nope'"),
        ({"mode": "smudge"}, 400, "`mode` must be one of draw, erase"),
        ({"strength": "lots"}, 400, "`strength` must be a number"),
        ({"size": 0}, 400, "`size` must be an integer in [1, 6]"),
    ],
)
def test_bad_strokes_get_a_clear_message(client, stroke, status, fragment):
    body = {"seed": 0, "strokes": [{**draw(box(0, 0, 4, 4)), **stroke}]}
    response = client.post("/api/render", json=body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert fragment in response.json()["error"], response.json()


def test_bad_requests_never_get_an_exception_page(client):
    huge = client.post("/api/render", content=b"{" + b" " * (300 * 1024) + b"}",
                       headers={"content-type": "application/json"})
    assert huge.status_code == 413 and "request too large" in huge.json()["error"]
    assert "not JSON" in client.post("/api/render", content=b"{nope").json()["error"]
    assert "must be a JSON object" in client.post("/api/render", json=[1, 2]).json()["error"]
    assert "`seed` must be a non-negative integer" in client.post("/api/render", json={"seed": -1}).json()["error"]
    many = {"seed": 0, "strokes": [draw(box(0, 0, 2, 2))] * 65}
    assert "too many strokes" in client.post("/api/render", json=many).json()["error"]
    for path, fragment in [("/api/units?layer=nope", "unknown layer"), ("/api/strip.png?layer=layout&unit=77",
                           "out of range"), ("/api/sample.png?seed=x", "bad request"), ("/api/units", "bad request"),
                           ("/static/../../etc/passwd", "no such page"), ("/api/concept-units?layer=layout&concept=sky"
                           "&size=9", "`size` must be")]:
        response = client.get(path)
        assert 400 <= response.status_code < 500, path
        assert fragment in response.json()["error"], (path, response.json())


def test_mask_codec_round_trips_against_numpy(gen):
    for _ in range(20):
        mask = torch.rand(7, 9, generator=gen) > 0.5
        data = encode_mask(mask)
        assert np.array_equal(runs_to_mask(data), mask.numpy())
        assert torch.equal(decode_mask(data) > 0.5, mask)
    with pytest.raises(ValueError, match="image is 4x4"):
        decode_mask(encode_mask(torch.ones(3, 3)), (4, 4))


def test_painter_refuses_a_segmenter_of_other_concepts(setup):
    from lightning_dissect.engine.images import GroundTruth
    from lightning_dissect.vocabulary import ConceptVocabulary

    other = GroundTruth(ConceptVocabulary(names=("unlabeled", "cat"), categories=("none", "object")))
    with pytest.raises((ValueError, TypeError)):
        Painter(setup.generator, setup.result, other)
    with pytest.raises(PaintError, match="unlabeled class"):
        Painter(setup.generator, setup.result, setup.segmenter, statistics_samples=4).concept_index("unlabeled")


# ------------------------------------------------------------------ the command line
FACTORY = "tests.helpers.painting:make_painting_generator"


@pytest.fixture(scope="module")
def dissection_file(tmp_path_factory):
    from lightning_dissect.dissection import dissect
    from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
    from tests.helpers.painting import make_painting_generator

    gen = make_painting_generator()
    result = dissect(gen, ["layout"], SyntheticSceneSegmenter(SceneWorld(32)), latent_shape=(gen.latent_dim,),
                     num_samples=60, num_visualized_units=0, progress=False,
                     metadata={"generator": FACTORY, "latent_shape": [gen.latent_dim]})
    path = tmp_path_factory.mktemp("paint-cli") / "dissect.json"
    result.to_json(path)
    return path


@pytest.fixture
def no_serving(monkeypatch):
    """``PaintServer.run`` returns at once (the command would serve until Ctrl-C); the app is kept."""
    from lightning_dissect.app import server as server_module

    served = {}

    def run(self):
        served["url"] = self.url

    monkeypatch.setattr(server_module.PaintServer, "run", run)
    return served


def test_cli_serves_a_dissection_file(capsys, dissection_file, no_serving):
    from lightning_dissect.cli import main

    assert main(["paint", "--generator", FACTORY, "--dissection", str(dissection_file), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert no_serving["url"].startswith("http://127.0.0.1:") and f"serving {no_serving['url']}" in out


def test_cli_quick_dissection_and_painter(capsys, no_serving):
    from lightning_dissect.cli import build_parser
    from lightning_dissect.cli.paint import build_painter

    args = build_parser().parse_args(["paint", "--generator", FACTORY, "--layers", "layout", "--num-samples", "40",
                                      "--statistics-samples", "8", "--port", "8123"])
    painter = build_painter(args)
    assert "dissecting layout on 40 samples first" in capsys.readouterr().out
    assert list(painter.result.layers) == ["layout"] and painter.latent_shape == (31,)
    assert painter.generator_name == FACTORY and args.port == 8123 and args.host == "127.0.0.1"
    out = painter.render({"seed": 2, "concept": "tree", "strokes": [
        {"mode": "draw", "layer": "layout", "concept": "tree", "mask": encode_mask(torch.ones(32, 32))}]})
    assert out["stats"]["inside_after"] > 0.5  # tree everywhere the brush went (all of it)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--dissection", "no/such/dissect.json"], "--dissection: file not found"),
        ([], "--layers: give the layers to dissect (or a --dissection file)"),
        (["--layers", "layout", "--causal", "missing.json"], "--causal: file not found"),
        (["--dissection", "DISSECTION", "--layers", "canvas"], "are not in --dissection"),
        (["--dissection", "DISSECTION", "--causal", "CAUSAL"], "of layer 'canvas', which the dissection does not have"),
        (["--dissection", "DISSECTION", "--segmenter", "tests.test_paint:other_segmenter"],
         "does not know the concepts"),
    ],
)
def test_cli_errors_are_one_line(capsys, tmp_path, dissection_file, no_serving, extra, fragment):
    from lightning_dissect.cli import main
    from lightning_dissect.interventions import CausalUnits

    causal = CausalUnits(layer="canvas", concept="tree", concept_index=10, alpha=torch.zeros(3),
                         ranking=torch.arange(3), iou=torch.zeros(3), gradient=torch.zeros(3),
                         insertion_value=torch.ones(3), baseline=0.0)
    causal_path = causal.save_json(tmp_path / "causal.json")
    extra = [str(dissection_file) if e == "DISSECTION" else str(causal_path) if e == "CAUSAL" else e for e in extra]
    assert main(["paint", "--generator", FACTORY, "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err and err.count("\n") == 1, err
    assert "url" not in no_serving


def other_segmenter():
    """A segmenter of other concepts than the dissection's (``--segmenter tests.test_paint:other_segmenter``)."""
    from lightning_dissect.vocabulary import ConceptVocabulary

    class Other:
        vocabulary = ConceptVocabulary(names=("unlabeled", "cat"), categories=("none", "object"))
        value_range = (-1.0, 1.0)

        def __call__(self, images):
            return torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.long)

    return Other()


def test_cli_refuses_a_bad_port(capsys):
    from lightning_dissect.cli import main

    with pytest.raises(SystemExit):
        main(["paint", "--generator", FACTORY, "--port", "99999"])
    assert "expected a port in 1..65535" in capsys.readouterr().err
