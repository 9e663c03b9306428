"""Paint with units: browse a dissection and edit generated images by switching units on and off.

GANPaint for any generator. :func:`paint` serves a local page (``http://127.0.0.1:7860/``) where
you pick a sample, a concept (or a set of units) and brush a region: *Draw* inserts the concept's
units there (:func:`~lightning_dissect.interventions.insert`), *Erase* ablates them there
(:func:`~lightning_dissect.interventions.ablate`). The segmenter's view of the original and the
edited image shows the concept's pixel fraction inside and outside the region. Edits export as
JSON; :func:`replay_edit` turns one back into the same pixels.

The engine (:class:`Painter`, :class:`PaintEdit`, :func:`replay_edit`) needs only torch; the web
server needs the ``app`` extra: ``pip install 'lightning-dissect[app]'`` (FastAPI, uvicorn).
See ``docs/paint.md``; the command line is ``lightning-dissect paint``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning_dissect.app.edits import EDIT_FORMAT, PaintEdit, Stroke, decode_mask, encode_mask, replay_edit
from lightning_dissect.app.painter import Painter, PaintError

if TYPE_CHECKING:
    from torch import nn

    from lightning_dissect.app.server import PaintServer
    from lightning_dissect.result import DissectionResult

__all__ = [
    "EDIT_FORMAT",
    "PaintEdit",
    "PaintError",
    "Painter",
    "Stroke",
    "decode_mask",
    "encode_mask",
    "paint",
    "replay_edit",
]


def paint(
    generator: nn.Module,
    result: DissectionResult,
    segmenter: Any,
    *,
    causal: Any = (),
    host: str = "127.0.0.1",
    port: int | None = None,
    block: bool = False,
    **options: Any,
) -> PaintServer:
    """Serve the paint page for ``generator`` and its dissection ``result`` (a notebook's entry point).

    Args:
        generator: The generator.
        result: Its :class:`~lightning_dissect.result.DissectionResult`.
        segmenter: The segmenter the result was dissected with (the page's segmenter view).
        causal: :class:`~lightning_dissect.interventions.CausalUnits` (one or several): their
            concepts are painted with their causal units.
        host: Address to bind; the default serves this machine only.
        port: Port; ``None``: 7860 or the next free one.
        block: Serve in this thread until Ctrl-C (the command line); ``False`` serves in a
            background thread and returns at once (a notebook: ``server.stop()`` ends it).
        **options: :class:`Painter` options (``latent_shape``, ``latent_sampler``, ``generate``,
            ``selector``, ``statistics_samples``, ...).

    Returns:
        The :class:`~lightning_dissect.app.server.PaintServer` (``.url``, ``.stop()``).
    """
    from lightning_dissect.app.server import PaintServer, create_app

    painter = Painter(generator, result, segmenter, causal=() if causal is None else causal, **options)
    server = PaintServer(create_app(painter), host=host, port=port)
    if block:
        print(f"paint: serving {server.url} (Ctrl-C stops)", flush=True)
        server.run()
        return server
    server.start()
    print(f"paint: serving {server.url}", flush=True)
    return server

