"""Unit strips: a unit's top images with its thresholded, upsampled map overlaid.

The images and maps come from the frames a dissection pass kept, or, without them, are run again
through the runner's :meth:`~lightning_dissect.engine.runner.ModuleRunner.regenerate`: for a
generator, whole batches of the dissection with their noise seeds, so a generator that draws noise
in ``forward`` shows exactly the images that were ranked.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lightning_dissect.engine.generator import Generate, GeneratorRunner
from lightning_dissect.engine.hooks import OutputSelector
from lightning_dissect.engine.runner import Batch, ModuleRunner, SourceT
from lightning_dissect.functional.upsample import upsample_bilinear
from lightning_dissect.result import DissectionResult, UnitDissection
from lightning_dissect.visual.visualize import as_rgb, overlay_mask, to_uint8

__all__ = ["Frame", "keep_frames", "render_unit_images"]


class Frame(NamedTuple):
    """One sample's image ``(C, H, W)`` and its captured maps ``layer -> (U, h, w)``."""

    image: Tensor
    maps: Mapping[str, Tensor]


def render_unit_images(
    generator: nn.Module | ModuleRunner[SourceT],
    result: DissectionResult,
    bank: SourceT,
    value_range: tuple[float, float],
    *,
    num_units: int = 8,
    generate: Generate | None = None,
    selector: OutputSelector | Mapping[str, OutputSelector] = None,
    device: torch.device | str | None = None,
    batch_size: int | None = None,
    scale: int = 1,
    units: Mapping[str, Sequence[int]] | None = None,
    frames: Mapping[int, Frame] | None = None,
) -> dict[str, dict[int, Tensor]]:
    """Draw the top images of each layer's best units with the unit masks overlaid.

    Args:
        generator: The generator the result was computed on, or the runner of the dissection
            (a :class:`~lightning_dissect.engine.generator.GeneratorRunner` or an
            :class:`~lightning_dissect.engine.reader.ImageRunner`; then ``generate``,
            ``selector``, ``device`` and ``batch_size`` are its own).
        result: The dissection result (its top-image sample indices and thresholds are used).
        bank: The samples of the dissection: its latent bank, or the runner's source.
        value_range: Value range of the images.
        num_units: Units per layer (``LayerDissection.top_units``: interpretable first, best
            first) when ``units`` is not given.
        generate: Custom ``(generator, latents) -> images``.
        selector: Picks the tensor from tuple/dict layer outputs.
        device: Where to run the generator.
        batch_size: Latents per generator call; default: the dissection's (images are then
            regenerated in the batches that were ranked, with the same noise).
        scale: Enlarge every image by this integer factor (nearest).
        units: Explicit ``layer -> unit indices`` to render instead of the top ``num_units``.
        frames: ``latent index -> Frame`` kept by the dissection; the images are generated
            again only when a needed latent is missing from it.

    Returns:
        ``layer -> unit -> uint8 (k, 3, H, W)`` — each unit's top images, outside its thresholded
        upsampled map dimmed, the mask bordered.
    """
    runner: ModuleRunner[Any]
    if isinstance(generator, ModuleRunner):
        runner = generator
    else:
        runner = GeneratorRunner(
            generator, generate=generate, selector=selector, device=device,
            batch_size=batch_size or int(result.settings.get("batch_size", 32)),
        )
    if units is not None:
        wanted = {name: list(chosen) for name, chosen in units.items()}
    else:
        wanted = {name: [u.unit for u in layer.top_units(num_units)] for name, layer in result.layers.items()}
    needed = sorted(
        {int(img["index"]) for name, chosen in wanted.items() for u in chosen
         for img in result.layers[name].units[u].top_images}
    )
    if not needed:
        return {}
    if frames is None or not set(needed) <= set(frames):
        frames = _regenerate(runner, result, bank, needed, list(wanted))
    images_by_index: dict[int, Tensor] = {}
    acts_by_index: dict[str, dict[int, Tensor]] = {name: {} for name in wanted}
    for i in needed:
        # grey generators (1 channel): the strips are RGB (the mask outline is coloured)
        images_by_index[i] = as_rgb(to_uint8(frames[i].image, value_range))
        for name in wanted:
            acts_by_index[name][i] = frames[i].maps[name]
    return {
        name: {u: _strip(result.layers[name].units[u], u, images_by_index, acts_by_index[name], scale) for u in chosen}
        for name, chosen in wanted.items()
    }


def _regenerate(
    runner: ModuleRunner[SourceT], result: DissectionResult, bank: SourceT, needed: Sequence[int], layers: list[str]
) -> dict[int, Frame]:
    """Run the batches that held the ``needed`` samples again and keep their frames."""
    keep = set(needed)
    frames: dict[int, Frame] = {}
    world_size = int(result.settings.get("world_size", 1))
    with runner.session():
        for batch in runner.regenerate(bank, needed, layers=layers, world_size=world_size):
            keep_frames(frames, batch, keep)
    return frames


def keep_frames(frames: dict[int, Frame], batch: Batch, keep: Collection[int]) -> None:
    """Copy the image and captured maps of the batch's samples that are in ``keep`` to the CPU.

    Copies, not views: a view of one sample would keep the whole batch alive (and pickle it whole
    when the frames are gathered across ranks).
    """
    for j, i in enumerate(batch.indices.tolist()):
        if i in keep:
            maps = {name: a[j].detach().to("cpu", torch.float32, copy=True) for name, a in batch.activations.items()}
            frames[i] = Frame(batch.images[j].detach().to("cpu", copy=True), maps)


def _strip(
    record: UnitDissection, unit: int, images: Mapping[int, Tensor], acts: Mapping[int, Tensor], scale: int
) -> Tensor:
    """One unit's top images with its thresholded, upsampled map overlaid, ``(k, 3, H, W)``."""
    tiles = []
    for img in record.top_images:
        i = int(img["index"])
        image = images[i]
        up = upsample_bilinear(acts[i][unit][None], image.shape[-2:])[0]
        tiles.append(overlay_mask(image, up > record.level))
    stacked = torch.stack(tiles)
    if scale > 1:
        stacked = stacked.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    return stacked
