"""The paint app's engine, free of any web framework: samples, unit tables, strips and edits.

:class:`Painter` holds a generator, its :class:`~lightning_dissect.result.DissectionResult`, a
segmenter and optional causal unit sets. It answers what the page asks: the samples of seeds, each
layer's units (label, IoU, its uncertainty when the result carries one, α where a causal set
knows it), unit strips, the units of a concept, and renders edits — every one through
:func:`~lightning_dissect.app.edits.replay_edit`'s own code path, so an exported edit replays to
the pixels shown. Requests are checked here and refused with :class:`PaintError` (a message meant
for the user), never with a traceback.

Generator calls are serialised by a lock: the edits are forward hooks on the shared generator,
and two requests (two tabs) must never see each other's hooks.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_dissect.app.edits import MODES, PaintEdit, Stroke, _render, decode_mask, sample_bank
from lightning_dissect.config import DissectionConfig
from lightning_dissect.engine.discovery import find_latent_dim
from lightning_dissect.engine.generator import Generate, GeneratorRunner
from lightning_dissect.engine.hooks import OutputSelector
from lightning_dissect.engine.latents import LatentBank, LatentSampler
from lightning_dissect.interventions import CausalUnits, UnitStatistics, unit_statistics
from lightning_dissect.result import DissectionResult, UnitDissection
from lightning_dissect.segmenters.base import Segmenter
from lightning_dissect.visual.colours import concept_colour
from lightning_dissect.visual.visualize import as_rgb, to_uint8

__all__ = ["DEFAULT_UNITS", "MAX_UNITS", "PaintError", "Painter"]

#: Units a concept's set holds by default at most (GANPaint edited about 20 units of a layer).
DEFAULT_UNITS = 20
#: The largest unit set one stroke may edit by concept.
MAX_UNITS = 512


class PaintError(ValueError):
    """A request the painter refuses; the message says what is wrong and is shown to the user."""


class Painter:
    """Everything the paint page computes, for one generator and its dissection.

    Args:
        generator: The generator (any ``nn.Module``; called as ``generate(generator, latents)``).
        result: Its dissection (the layers, units and labels shown and edited).
        segmenter: The segmenter of the segmenter view (images → labels); its ``value_range`` is
            the generator's image range.
        causal: Causal unit sets (:class:`~lightning_dissect.interventions.CausalUnits`): a concept
            that has one on a layer is edited with its top units by α, and α is shown in the table.
        latent_shape: Shape of one latent; default: the result's ``metadata["latent_shape"]``, else
            ``(d,)`` with ``d`` the generator's ``latent_dim`` / ``z_dim`` / ... attribute.
        latent_sampler: Custom ``(n, torch.Generator) -> latents`` (overrides ``latent_shape``).
        generate: Custom ``(generator, latents) -> images`` call.
        selector: Picks the tensor of tuple/dict layer outputs.
        statistics_samples: Latents over which each layer's insertion values (0.99 quantiles) are
            measured, once per layer.
        quantile: The insertion value's quantile level (:func:`~lightning_dissect.interventions.insert`'s,
            GANPaint's 0.99).
        generator_name: How the generator is named in exported edits (``MODULE:ATTR``).
        checkpoint: Its checkpoint, for exported edits.
        max_strokes: Strokes one render may carry.

    Examples:
        >>> from lightning_dissect.interventions._toy import sky_grass
        >>> from lightning_dissect.dissection import dissect
        >>> from lightning_dissect.app import encode_mask
        >>> gen, segmenter = sky_grass(low=4)  # layer "1": unit 0 paints sky, unit 1 grass
        >>> scenes = lambda n, g: torch.eye(2)[(torch.arange(n) + 1) % 2]  # grass, sky, grass, ...
        >>> result = dissect(gen, ["1"], segmenter, latent_sampler=scenes, num_samples=8, progress=False,
        ...                  num_visualized_units=0)
        >>> painter = Painter(gen, result, segmenter, latent_sampler=scenes, statistics_samples=8)
        >>> top = encode_mask(torch.arange(16).view(-1, 1).expand(16, 16) < 8)  # the top half
        >>> out = painter.render({"seed": 0, "concept": "sky", "strokes": [  # sample 0 is all grass
        ...     {"mode": "erase", "layer": "1", "units": [1], "mask": top},   # grass off up there
        ...     {"mode": "draw", "layer": "1", "units": [0], "mask": top}]})  # sky on
        >>> out["stats"]["inside_before"], out["stats"]["inside_after"], out["stats"]["outside_after"]
        (0.0, 1.0, 0.0)
    """

    def __init__(
        self,
        generator: nn.Module,
        result: DissectionResult,
        segmenter: Segmenter,
        *,
        causal: CausalUnits | Sequence[CausalUnits] = (),
        latent_shape: Sequence[int] | None = None,
        latent_sampler: LatentSampler | None = None,
        generate: Generate | None = None,
        selector: OutputSelector | Mapping[str, OutputSelector] = None,
        statistics_samples: int = 128,
        quantile: float = DissectionConfig.quantile,
        generator_name: str | None = None,
        checkpoint: str | None = None,
        max_strokes: int = 64,
    ) -> None:
        if not isinstance(result, DissectionResult):
            raise TypeError(f"`result` must be a DissectionResult, got {type(result).__name__}")
        if not result.layers:
            raise ValueError("`result` has no dissected layer: nothing to paint with")
        for name in ("vocabulary", "value_range"):
            if not hasattr(segmenter, name):
                raise TypeError(f"`segmenter` must be a segmenter (with `{name}`), got {type(segmenter).__name__}")
        self.runner = GeneratorRunner(generator, generate=generate, selector=selector, batch_size=1)
        self.runner.check_layers(list(result.layers), argument="result.layers")
        self.result = result
        self.segmenter = segmenter
        self.vocabulary = result.vocabulary
        if tuple(segmenter.vocabulary.names) != tuple(self.vocabulary.names):
            raise ValueError("`segmenter`'s vocabulary is not the one the result was dissected with")
        self.value_range = tuple(float(v) for v in segmenter.value_range)
        self.latent_sampler = latent_sampler
        self.latent_shape = _latent_shape(latent_shape, latent_sampler, result, generator)
        self.statistics_samples = int(statistics_samples)
        self.quantile = float(quantile)
        self.generator_name = generator_name or result.metadata.get("generator")
        self.checkpoint = checkpoint or result.metadata.get("checkpoint")
        self.max_strokes = int(max_strokes)
        self.causal: dict[tuple[str, str], CausalUnits] = {}
        for c in [causal] if isinstance(causal, CausalUnits) else list(causal):
            if not isinstance(c, CausalUnits):
                raise TypeError(f"`causal` must hold CausalUnits, got {type(c).__name__}")
            if c.layer not in result.layers:
                raise ValueError(f"`causal`: the causal units of {c.concept!r} are of layer {c.layer!r}, which the "
                                 f"result did not dissect (its layers: {list(result.layers)})")
            self.causal[(c.layer, c.concept)] = c
        self.widths = {name: layer.num_units for name, layer in result.layers.items()}
        self._lock = threading.Lock()
        self._samples: OrderedDict[int, Tensor] = OrderedDict()
        self._statistics: dict[str, UnitStatistics] = {}
        self._strips: OrderedDict[tuple[str, int], Tensor] = OrderedDict()
        self.image_size = tuple(self.sample(0).shape[-2:])

    # ------------------------------------------------------------------ generator calls
    def sample(self, seed: int) -> Tensor:
        """The unedited image ``(C, H, W)`` of the sample ``seed`` (cached)."""
        seed = _seed(seed)
        with self._lock:
            if seed in self._samples:
                self._samples.move_to_end(seed)
                return self._samples[seed]
            image = _render(self.runner, self._bank(seed), [], self.widths)[0].cpu()
            self._samples[seed] = image
            while len(self._samples) > 256:
                self._samples.popitem(last=False)
        return image

    def sample_uint8(self, seed: int) -> Tensor:
        """:meth:`sample` as ``uint8 (3, H, W)``."""
        return _rgb(to_uint8(self.sample(seed), self.value_range))

    def statistics(self, layer: str) -> UnitStatistics:
        """The layer's per-unit statistics (insertion values), measured once on ``statistics_samples`` latents."""
        layer = self._layer(layer)
        with self._lock:
            if layer not in self._statistics:
                bank = LatentBank(self.statistics_samples, self.latent_shape, int(self.result.settings.get("seed", 1)),
                                  self.latent_sampler)
                self._statistics[layer] = unit_statistics(
                    self.runner.generator, layer, bank, quantile=self.quantile, generate=self.runner.generate,
                    selector=self.runner.selector, batch_size=int(self.result.settings.get("batch_size", 32)),
                    distributed=False,
                )  # fmt: skip
            return self._statistics[layer]

    def render(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Render an edit request: the original and edited images, their segmentations and the fractions.

        Args:
            request: ``{"seed": int, "concept": name (measured; optional), "strokes": [stroke, ...]}``
                with each stroke ``{"mode": "draw" | "erase", "layer": name, "concept": name,
                "size": n}`` or ``{..., "units": [i, ...]}``, ``"strength"`` (draw) and ``"mask"``
                (:func:`~lightning_dissect.app.edits.encode_mask`'s form, at the image's size).

        Returns:
            ``{"edit": PaintEdit, "original", "edited": uint8 (3, H, W), "segmentation_original",
            "segmentation_edited": uint8 (3, H, W), "region": (H, W) bool, "stats": {...}}``.

        Raises:
            PaintError: A malformed request (named field, what is wrong).
        """
        if not isinstance(request, Mapping):
            raise PaintError("the request must be a JSON object")
        seed = _seed(request.get("seed", 0))
        strokes_in = request.get("strokes", [])
        if not isinstance(strokes_in, list):
            raise PaintError("`strokes` must be a list")
        if len(strokes_in) > self.max_strokes:
            raise PaintError(f"too many strokes: {len(strokes_in)} (at most {self.max_strokes}); reset the sample")
        strokes = [self.stroke(s, i) for i, s in enumerate(strokes_in)]
        concept = request.get("concept") or next((s.concept for s in reversed(strokes) if s.concept), None)
        edit = PaintEdit(
            seed=seed, latent_shape=None if self.latent_shape is None else list(self.latent_shape),
            image_size=list(self.image_size), strokes=strokes, generator=self.generator_name,
            checkpoint=self.checkpoint, widths={s.layer: self.widths[s.layer] for s in strokes},
        )
        concept_index = self.concept_index(concept) if concept else None
        original = self.sample(seed)
        with self._lock:
            edited = _render(self.runner, self._bank(seed), strokes, self.widths)[0].cpu() if strokes else original
            labels = self._segment(torch.stack([original, edited]))
        region = torch.zeros(self.image_size, dtype=torch.bool)
        for s in strokes:
            region |= s.mask > 0.5
        out: dict[str, Any] = {
            "edit": edit, "original": _rgb(to_uint8(original, self.value_range)),
            "edited": _rgb(to_uint8(edited, self.value_range)), "edited_raw": edited, "region": region,
            "segmentation_original": self.segmentation_image(labels[0], concept_index),
            "segmentation_edited": self.segmentation_image(labels[1], concept_index),
        }
        out["stats"] = None if concept_index is None else _fractions(labels, region, concept_index, concept)
        return out

    # ------------------------------------------------------------------ requests
    def stroke(self, data: Any, index: int = 0) -> Stroke:
        """Check one stroke of a request and resolve its units and values."""
        where = f"stroke {index + 1}"
        if not isinstance(data, Mapping):
            raise PaintError(f"{where}: must be an object")
        mode = data.get("mode", "draw")
        if mode not in MODES:
            raise PaintError(f"{where}: `mode` must be one of {', '.join(MODES)}, got {mode!r}")
        layer = self._layer(data.get("layer"), where)
        concept = data.get("concept") or None
        units_in = data.get("units")
        if units_in is not None and units_in != []:
            units = self.check_units(layer, units_in, where)
        elif units_in == [] and concept is None:
            raise PaintError(f"{where}: the unit set is empty; give unit indices or choose a concept")
        elif concept is not None:
            units, _ = self.concept_units(layer, concept, data.get("size"))
        else:
            raise PaintError(f"{where}: choose a concept or give a unit set")
        strength = data.get("strength", 1.0)
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 100:
            raise PaintError(f"{where}: `strength` must be a number in [0, 100], got {strength!r}")
        try:
            mask = decode_mask(data.get("mask"), self.image_size, name="mask")
        except ValueError as err:
            raise PaintError(f"{where}: {str(err).replace('`', '')}") from None
        values: list[float] = []
        if mode == "draw":
            high = self.statistics(layer).high
            values = [float(v) for v in (float(strength) * high[torch.tensor(units)]).tolist()]
        return Stroke(mode, layer, units, mask, float(strength), values, concept)

    def check_units(self, layer: str, units: Any, where: str = "units") -> list[int]:
        """Unit indices of ``layer`` from a request: a list of ints (or ``"3, 17"``), range-checked."""
        width = self.widths[layer]
        if isinstance(units, str):
            parts = [p for p in units.replace(",", " ").split() if p]
            try:
                units = [int(p) for p in parts]
            except ValueError:
                raise PaintError(f"{where}: unit indices must be integers, got {units!r}") from None
        if not isinstance(units, list) or not all(isinstance(u, int) and not isinstance(u, bool) for u in units):
            raise PaintError(f"{where}: `units` must be a list of unit indices")
        if not units:
            raise PaintError(f"{where}: the unit set is empty; give at least one unit of layer {layer!r}")
        bad = [u for u in units if not 0 <= u < width]
        if bad:
            raise PaintError(f"{where}: unit {bad[0]} is out of range: layer {layer!r} has {width} units "
                             f"(0 to {width - 1})")
        return sorted(set(units))

    def concept_index(self, concept: Any) -> int:
        """The vocabulary index of a concept name (a :class:`PaintError` names the closest names)."""
        if not isinstance(concept, str):
            raise PaintError(f"`concept` must be a concept name, got {concept!r}")
        try:
            index = self.vocabulary.index(concept)
        except KeyError as err:
            raise PaintError(f"concept: {err.args[0]}") from None
        if index == self.vocabulary.unlabeled_index:
            raise PaintError(f"concept: {concept!r} is the unlabeled class, not a concept to paint")
        return index

    def concept_units(self, layer: str, concept: str, size: Any = None) -> tuple[list[int], str]:
        """The units that paint ``concept`` in ``layer``, and where they come from.

        The concept's causal units (top ``size`` by α) when a causal set of this layer and concept
        was given, else its top ``size`` units by IoU. ``size=None``: :meth:`default_size`.

        Returns:
            ``(units sorted, "causal" | "iou")``.
        """
        layer = self._layer(layer)
        index = self.concept_index(concept)
        if size is None:
            size = self.default_size(layer, concept)
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= min(MAX_UNITS, self.widths[layer]):
            raise PaintError(f"`size` must be an integer in [1, {min(MAX_UNITS, self.widths[layer])}] (units of "
                             f"layer {layer!r}), got {size!r}")
        causal = self.causal.get((layer, concept))
        if causal is not None:
            return sorted(causal.top_units(size)), "causal"
        iou = self.result.layers[layer].iou[:, index]
        order = sorted(range(iou.numel()), key=lambda u: (-float(iou[u]), u))
        return sorted(order[:size]), "iou"

    def default_size(self, layer: str, concept: str) -> int:
        """Default unit-set size: the interpretable units labelled ``concept`` (or α ≥ 0.5 in a causal set).

        At least 1, at most :data:`DEFAULT_UNITS`.
        """
        causal = self.causal.get((layer, concept))
        if causal is not None:
            count = int((causal.alpha >= 0.5).sum())
        else:
            count = sum(1 for u in self.result.layers[layer].units if u.interpretable and u.label == concept)
        return max(1, min(DEFAULT_UNITS, count))

    # ------------------------------------------------------------------ browsing
    def info(self) -> dict[str, Any]:
        """What the page needs to start: layers, concepts, defaults (JSON-ready)."""
        layers = []
        for name, layer in self.result.layers.items():
            labelled: dict[str, int] = {}
            for u in layer.units:
                if u.interpretable:
                    labelled[u.label] = labelled.get(u.label, 0) + 1
            best = layer.iou.max(0).values
            concepts = [
                {"name": c, "units": labelled.get(c, 0), "best_iou": float(best[i]),
                 "causal": (name, c) in self.causal, "default_size": self.default_size(name, c)}
                for i, c in enumerate(self.vocabulary.names) if i != self.vocabulary.unlabeled_index
            ]
            concepts.sort(key=lambda c: (-c["causal"], -c["units"], -c["best_iou"], c["name"]))
            layers.append({"name": name, "units": layer.num_units, "interpretable": layer.num_interpretable,
                           "concepts": concepts})
        return {
            "generator": self.generator_name or type(self.runner.model).__name__,
            "checkpoint": self.checkpoint, "image_size": list(self.image_size), "layers": layers,
            "causal": [{"layer": layer, "concept": c} for layer, c in self.causal],
            "strength": 1.0, "quantile": self.quantile, "max_strokes": self.max_strokes,
            "default_layer": next(iter(self.causal), (next(iter(self.result.layers)), None))[0],
        }

    def units_table(self, layer: str) -> list[dict[str, Any]]:
        """One row per unit of ``layer``, JSON-ready.

        Label, category, IoU, its uncertainty (when the result has one), chance IoU, interpretable,
        and α for each causal set of the layer.
        """
        layer = self._layer(layer)
        causal = [c for (name, _), c in self.causal.items() if name == layer]
        rows = []
        for u in self.result.layers[layer].units:
            row = {"unit": u.unit, "label": u.label, "category": u.category, "iou": _finite(u.iou),
                   "chance_iou": _finite(u.chance_iou), "interpretable": bool(u.interpretable),
                   "uncertainty": _uncertainty(u), "strip": bool(u.top_images),
                   "alpha": {c.concept: float(c.alpha[u.unit]) for c in causal}}
            rows.append(row)
        return rows

    def strip(self, layer: str, unit: Any) -> Tensor:
        """The unit's top images with its mask, ``uint8 (3, H, W')`` side by side (cached).

        From the result's own strips when it holds them, else regenerated from the dissection's bank.
        """
        from lightning_dissect.dissection.strips import render_unit_images
        from lightning_dissect.visual.visualize import image_strip

        layer = self._layer(layer)
        (unit,) = self.check_units(layer, [unit] if not isinstance(unit, list) else unit, "unit")
        key = (layer, unit)
        if key in self._strips:
            return self._strips[key]
        tiles = self.result.unit_images.get(layer, {}).get(unit)
        if tiles is None:
            if not self.result.layers[layer].units[unit].top_images:
                raise PaintError(f"unit {unit} of layer {layer!r} has no top images in the dissection")
            settings = self.result.settings
            bank = LatentBank(int(settings.get("num_samples", 1)), self.latent_shape, int(settings.get("seed", 1)),
                              self.latent_sampler)
            with self._lock:
                runner = GeneratorRunner(self.runner.generator, generate=self.runner.generate,
                                         selector=self.runner.selector,
                                         batch_size=int(settings.get("batch_size", 32)), distributed=False)
                tiles = render_unit_images(runner, self.result, bank, self.value_range, units={layer: [unit]})
                tiles = tiles[layer][unit]
        picture = image_strip(list(tiles), gap=2)
        self._strips[key] = picture
        while len(self._strips) > 512:
            self._strips.popitem(last=False)
        return picture

    def segmentation_image(self, labels: Tensor, concept: int | None) -> Tensor:
        """Labels ``(h, w)`` coloured by concept at the image's size; other concepts than ``concept`` faded."""
        names = self.vocabulary.names
        colours = torch.stack([concept_colour(n) for n in names]).float()
        if self.vocabulary.unlabeled_index is not None:
            colours[self.vocabulary.unlabeled_index] = 0
        picture = colours[labels.long().clamp(0, len(names) - 1)]  # (h, w, 3)
        if concept is not None:
            fade = (labels != concept).unsqueeze(-1)
            picture = torch.where(fade, picture * 0.3 + 232 * 0.7, picture)  # the others pale
        picture = picture.permute(2, 0, 1)
        if tuple(picture.shape[-2:]) != self.image_size:
            picture = torch.nn.functional.interpolate(picture[None], size=self.image_size, mode="nearest")[0]
        return picture.round().clamp(0, 255).to(torch.uint8)

    # ------------------------------------------------------------------ helpers
    def _bank(self, seed: int) -> LatentBank:
        return sample_bank(seed, self.latent_shape, self.latent_sampler)

    def _segment(self, images: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.runner.segment(images.to(self.runner.device), self.segmenter, check_images=False).cpu()

    def _layer(self, layer: Any, where: str = "") -> str:
        if layer not in self.result.layers:
            prefix = f"{where}: " if where else ""
            raise PaintError(f"{prefix}unknown layer {layer!r}; the dissected layers are {list(self.result.layers)}")
        return str(layer)


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise PaintError(f"`seed` must be a non-negative integer, got {value!r}")
    return int(value)


def _rgb(image: Tensor) -> Tensor:
    return as_rgb(image)[:3]  # grey as RGB; an alpha channel dropped


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def _uncertainty(unit: UnitDissection) -> dict[str, Any] | None:
    """The unit's swap-test p-value and excess over chance (``None``: a result without them)."""
    if unit.p_value is None:
        return None
    return {"p_value": _finite(unit.p_value), "excess": _finite(unit.excess)}


def _fractions(labels: Tensor, region: Tensor, concept: int, name: str) -> dict[str, Any]:
    """The concept's pixel fraction inside and outside ``region``, before (row 0) and after (row 1)."""
    h, w = labels.shape[-2:]
    if tuple(region.shape) != (h, w):
        region = torch.nn.functional.interpolate(region[None, None].float(), size=(h, w), mode="nearest")[0, 0] > 0.5
    hits = labels == concept  # (2, h, w)
    inside, outside = int(region.sum()), int((~region).sum())

    def share(k: int, where: Tensor, count: int) -> float | None:
        return float(hits[k][where].sum()) / count if count else None

    return {
        "concept": name, "region_pixels": inside, "pixels": h * w,
        "inside_before": share(0, region, inside), "inside_after": share(1, region, inside),
        "outside_before": share(0, ~region, outside), "outside_after": share(1, ~region, outside),
        "overall_before": float(hits[0].float().mean()), "overall_after": float(hits[1].float().mean()),
    }


def _latent_shape(
    latent_shape: Sequence[int] | None, sampler: Any, result: DissectionResult, generator: nn.Module
) -> tuple[int, ...] | None:
    if latent_shape is not None:
        shape = tuple(int(s) for s in latent_shape)
        if not shape or min(shape) < 1:
            raise ValueError(f"`latent_shape` must be positive sizes, got {latent_shape!r}")
        return shape
    if sampler is not None:
        return None
    stored = result.metadata.get("latent_shape")
    if stored:
        return tuple(int(s) for s in stored)
    dim = find_latent_dim(generator)
    if dim:
        return (dim,)
    raise ValueError("cannot tell the latent shape: pass `latent_shape` (or `latent_sampler`); the result's "
                     "metadata has no 'latent_shape' and the generator no latent_dim attribute")

