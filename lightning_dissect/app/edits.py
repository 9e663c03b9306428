"""A paint edit as data: strokes (draw / erase units in a region) that replay to the same pixels.

A :class:`PaintEdit` is what the paint page exports as JSON: the generator it was made on, the
sample's seed and latent shape, and the strokes in the order they were painted. Each
:class:`Stroke` names one layer, the units it edits, the values it writes and its region (a binary
mask at image resolution, run-length encoded). :func:`replay_edit` turns it back into images
through the library's own edits: a ``"draw"`` stroke is :func:`~lightning_dissect.interventions.insert`,
an ``"erase"`` stroke :func:`~lightning_dissect.interventions.ablate` with the region, applied in
stroke order with :func:`~lightning_dissect.interventions.intervene`. The page renders every edit
with the same function, so a replayed edit gives the pixels the page showed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_dissect._utils.io import atomic_write_text
from lightning_dissect.engine.generator import Generate, GeneratorRunner
from lightning_dissect.engine.hooks import OutputSelector
from lightning_dissect.engine.latents import LatentBank, LatentSampler, noise_seed
from lightning_dissect.interventions import ablate, insert, intervene

__all__ = ["EDIT_FORMAT", "MODES", "PaintEdit", "Stroke", "decode_mask", "encode_mask", "replay_edit", "sample_bank"]

#: The ``"format"`` entry of an edit document.
EDIT_FORMAT = "lightning-dissect paint edit"
#: Stroke modes: ``"draw"`` inserts the units in the region, ``"erase"`` ablates them there.
MODES = ("draw", "erase")


def encode_mask(mask: Tensor) -> dict[str, Any]:
    """A binary ``(H, W)`` mask as ``{"size": [H, W], "runs": [...]}``.

    ``runs`` are the lengths of alternating runs of 0 and 1 in row-major order, starting with a run
    of 0 (possibly empty). Values above 0.5 count as 1.

    Examples:
        >>> encode_mask(torch.tensor([[0, 1, 1], [1, 0, 0]]))
        {'size': [2, 3], 'runs': [1, 3, 2]}
        >>> bool((decode_mask(encode_mask(torch.eye(4))) == torch.eye(4)).all())
        True
    """
    if not isinstance(mask, Tensor) or mask.ndim != 2:
        raise ValueError(f"`mask` must be an (H, W) tensor, got {getattr(mask, 'shape', type(mask).__name__)}")
    flat = (mask.detach().float().cpu() > 0.5).flatten().to(torch.int8)
    if flat.numel() == 0:
        return {"size": list(mask.shape), "runs": []}
    change = torch.nonzero(flat[1:] != flat[:-1]).flatten() + 1
    bounds = torch.cat([torch.tensor([0]), change, torch.tensor([flat.numel()])])
    runs = (bounds[1:] - bounds[:-1]).tolist()
    if int(flat[0]) == 1:
        runs = [0, *runs]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "runs": [int(r) for r in runs]}


def decode_mask(data: Mapping[str, Any], size: Sequence[int] | None = None, *, name: str = "mask") -> Tensor:
    """The ``float32 (H, W)`` 0/1 mask of :func:`encode_mask`'s dictionary.

    Args:
        data: ``{"size": [H, W], "runs": [...]}``.
        size: The ``(H, W)`` the mask must have (the image's); ``None`` accepts any.
        name: What to call the mask in error messages.

    Raises:
        ValueError: A malformed dictionary, runs that do not cover ``H·W`` pixels, or a size other
            than ``size``.

    Examples:
        >>> decode_mask({"size": [2, 2], "runs": [0, 1, 3]}).tolist()
        [[1.0, 0.0], [0.0, 0.0]]
    """
    if not isinstance(data, Mapping) or "size" not in data or "runs" not in data:
        raise ValueError(f"`{name}` must be an object with 'size' [H, W] and 'runs' (run lengths)")
    shape = data["size"]
    if (
        not isinstance(shape, (list, tuple)) or len(shape) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    ):
        raise ValueError(f"`{name}`: 'size' must be two positive integers [H, W], got {shape!r}")
    if size is not None and tuple(shape) != tuple(size):
        raise ValueError(
            f"`{name}` is {shape[0]}x{shape[1]} pixels but the image is {size[0]}x{size[1]}: paint the region at the "
            "image's size"
        )
    runs = data["runs"]
    if not isinstance(runs, (list, tuple)) or not all(
        isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in runs
    ):
        raise ValueError(f"`{name}`: 'runs' must be a list of non-negative integers")
    total = shape[0] * shape[1]
    if sum(runs) != total:
        raise ValueError(f"`{name}`: the runs cover {sum(runs)} pixels, not {shape[0]}x{shape[1]} = {total}")
    values = torch.arange(len(runs)) % 2
    flat = torch.repeat_interleave(values, torch.tensor(runs, dtype=torch.long))
    return flat.view(shape[0], shape[1]).to(torch.float32)


@dataclass
class Stroke:
    """One brush stroke: edit ``units`` of ``layer`` inside ``mask``.

    Attributes:
        mode: ``"draw"`` (insert the units' ``values`` in the region) or ``"erase"`` (ablate them
            there: write 0).
        layer: The layer edited.
        units: The units edited (sorted, unique).
        mask: ``(H, W)`` 0/1 region at the image's resolution (pooled to the layer's by the edit).
        strength: Draw: the multiple of each unit's insertion value written (1: the value
            :func:`~lightning_dissect.interventions.insert` uses, the 0.99 quantile); ignored by erase.
        values: Draw: the value written per unit of ``units`` (``strength`` × the insertion value);
            stored so a replay needs no statistics. Empty for erase.
        concept: The concept the units were chosen for (``None``: a unit set given by hand).
    """

    mode: str
    layer: str
    units: list[int]
    mask: Tensor
    strength: float = 1.0
    values: list[float] = field(default_factory=list)
    concept: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {self.mode!r}")
        if not self.units:
            raise ValueError("`units` is empty: a stroke edits at least one unit")
        if self.mode == "draw" and len(self.values) != len(self.units):
            raise ValueError(f"`values`: a draw stroke needs one value per unit ({len(self.units)}), got "
                             f"{len(self.values)}")

    def layer_edit(self, num_units: int) -> Any:
        """The :class:`~lightning_dissect.hooks.LayerEdit` of this stroke on a layer of ``num_units`` units."""
        if self.mode == "erase":
            return ablate(self.units, num_units, mask=self.mask)
        value = torch.zeros(num_units)
        value[torch.tensor(self.units, dtype=torch.long)] = torch.tensor(self.values, dtype=torch.float32)
        return insert(self.units, num_units, value, self.mask)

    def to_dict(self) -> dict[str, Any]:
        """The stroke as JSON-ready data."""
        return {
            "mode": self.mode, "layer": self.layer, "concept": self.concept, "units": list(self.units),
            "strength": float(self.strength), "values": [float(v) for v in self.values],
            "mask": encode_mask(self.mask),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], size: Sequence[int] | None = None) -> Stroke:
        """A stroke from :meth:`to_dict`'s data (the mask checked against ``size``)."""
        return cls(
            mode=str(data["mode"]), layer=str(data["layer"]), units=[int(u) for u in data["units"]],
            mask=decode_mask(data["mask"], size), strength=float(data.get("strength", 1.0)),
            values=[float(v) for v in data.get("values", [])], concept=data.get("concept"),
        )


@dataclass
class PaintEdit:
    """A sample and the strokes painted on it: what the paint page exports and :func:`replay_edit` replays.

    Attributes:
        seed: The sample's seed: its latent is the one latent of ``LatentBank(1, latent_shape, seed)``
            (see :func:`sample_bank`) and its generator noise is seeded as that bank's batch 0.
        latent_shape: Shape of one latent (``None`` with a custom latent sampler).
        image_size: ``[H, W]`` of the generated image (the strokes' masks have this size).
        strokes: The strokes, in the order they are applied.
        generator: How the generator was named (``MODULE:ATTR``), for the record.
        checkpoint: Its checkpoint, for the record.
        widths: ``layer -> number of units`` of the layers the strokes edit.
    """

    seed: int
    latent_shape: list[int] | None
    image_size: list[int]
    strokes: list[Stroke] = field(default_factory=list)
    generator: str | None = None
    checkpoint: str | None = None
    widths: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The edit as JSON-ready data (``"format"``: :data:`EDIT_FORMAT`, ``"version"``: 1)."""
        return {
            "format": EDIT_FORMAT, "version": 1, "generator": self.generator, "checkpoint": self.checkpoint,
            "seed": int(self.seed), "latent_shape": None if self.latent_shape is None else list(self.latent_shape),
            "image_size": list(self.image_size), "widths": dict(self.widths),
            "strokes": [s.to_dict() for s in self.strokes],
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """The edit as JSON text; written to ``path`` when given (atomically, parents created)."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PaintEdit:
        """An edit from :meth:`to_dict`'s data; refuses a document of another format."""
        if not isinstance(data, Mapping) or data.get("format") != EDIT_FORMAT:
            raise ValueError(f"not a paint edit: the document's 'format' must be {EDIT_FORMAT!r}")
        size = [int(s) for s in data["image_size"]]
        shape = data.get("latent_shape")
        return cls(
            seed=int(data["seed"]), latent_shape=None if shape is None else [int(s) for s in shape], image_size=size,
            strokes=[Stroke.from_dict(s, size) for s in data.get("strokes", [])], generator=data.get("generator"),
            checkpoint=data.get("checkpoint"), widths={str(k): int(v) for k, v in data.get("widths", {}).items()},
        )

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> PaintEdit:
        """An edit from JSON text or a ``.json`` file."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))


def sample_bank(seed: int, latent_shape: Sequence[int] | None, sampler: LatentSampler | None = None) -> LatentBank:
    """The one-latent bank of a sample: ``LatentBank(1, latent_shape, seed, sampler)``.

    Examples:
        >>> sample_bank(3, (4,)).latents.shape
        torch.Size([1, 4])
    """
    return LatentBank(1, None if latent_shape is None else tuple(latent_shape), int(seed), sampler)


def _render(
    runner: GeneratorRunner, bank: LatentBank, strokes: Sequence[Stroke], widths: Mapping[str, int]
) -> Tensor:
    """The image of ``bank``'s one latent with ``strokes`` applied in order (hooks removed on exit)."""
    with runner.session(), ExitStack() as stack:
        for stroke in strokes:
            width = widths[stroke.layer]
            stack.enter_context(intervene(runner.model, {stroke.layer: stroke.layer_edit(width)}, runner.selector))
        images, _ = runner.forward(bank[[0]], seed=noise_seed(bank.seed, 0))
    return images.detach()


def replay_edit(
    generator: nn.Module,
    edit: PaintEdit | Mapping[str, Any] | str | Path,
    *,
    latent_sampler: LatentSampler | None = None,
    generate: Generate | None = None,
    selector: OutputSelector | Mapping[str, OutputSelector] = None,
) -> Tensor:
    """Generate the edited image of a paint edit: the pixels the paint page showed.

    Args:
        generator: The generator the edit was made on.
        edit: A :class:`PaintEdit`, its dictionary, its JSON text or a path to its ``.json`` file.
        latent_sampler: The custom latent sampler the page used, if any.
        generate: The custom ``(generator, latents) -> images`` call the page used, if any.
        selector: The selector of tuple/dict layer outputs the page used, if any.

    Returns:
        The edited image ``(1, C, H, W)`` as the generator outputs it.

    Examples:
        >>> gen = nn.Sequential(nn.Linear(4, 2 * 4 * 4), nn.Unflatten(1, (2, 4, 4)), nn.ReLU(),
        ...                     nn.Conv2d(2, 3, 1), nn.Tanh())
        >>> region = torch.zeros(4, 4)
        >>> region[:2] = 1
        >>> edit = PaintEdit(seed=7, latent_shape=[4], image_size=[4, 4], widths={"2": 2},
        ...                  strokes=[Stroke("erase", "2", [0, 1], region)])
        >>> image = replay_edit(gen, edit.to_json())
        >>> image.shape
        torch.Size([1, 3, 4, 4])
        >>> bias = torch.tanh(gen[3].bias).view(3, 1, 1).expand(3, 2, 4)  # both units off: only the bias
        >>> torch.allclose(image[0, :, :2], bias)
        True
    """
    if isinstance(edit, (str, Path)):
        edit = PaintEdit.from_json(edit)
    elif not isinstance(edit, PaintEdit):
        edit = PaintEdit.from_dict(edit)
    runner = GeneratorRunner(generator, generate=generate, selector=selector, batch_size=1)
    missing = sorted({s.layer for s in edit.strokes} - set(edit.widths))
    if missing:
        raise ValueError(f"the edit does not give the width of layers {missing} ('widths')")
    bank = sample_bank(edit.seed, edit.latent_shape, latent_sampler)
    return _render(runner, bank, edit.strokes, edit.widths)
