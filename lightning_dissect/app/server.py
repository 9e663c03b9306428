"""The paint app's web server: a FastAPI app over a :class:`~lightning_dissect.app.painter.Painter`.

Needs the ``app`` extra (``pip install 'lightning-dissect[app]'``: FastAPI and uvicorn). The page
and its script and style sheet are files of this package; nothing is loaded from the internet. The
server is stateless about edits: a tab keeps its own strokes and sends them with every render, so
tabs are independent sessions and no request can name a file on the server. Every error is a JSON
``{"error": message}`` with a 4xx status (5xx only for a failure of the generator itself), never
an exception page.
"""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations (``Request``, imported
# inside create_app so the module loads without the extra) as objects

import base64
import errno
import json
import socket
import threading
import time
from importlib import resources
from typing import Any

from lightning_dissect.app.painter import Painter, PaintError
from lightning_dissect.visual.visualize import encode_png

__all__ = ["MAX_REQUEST_BYTES", "PaintServer", "create_app", "find_free_port"]

#: The largest request body accepted (a render carries its strokes' masks, run-length encoded).
MAX_REQUEST_BYTES = 4 * 1024 * 1024
#: The page's files, the only files the server sends (name -> media type).
STATIC_FILES = {"index.html": "text/html", "paint.js": "text/javascript", "paint.css": "text/css"}


def _missing_app_extra(err: ImportError) -> ImportError:
    return ImportError(
        f"the paint app needs FastAPI and uvicorn: pip install 'lightning-dissect[app]' ({err})"
    )


def data_url(image: Any) -> str:
    """A ``uint8 (3, H, W)`` image as a ``data:image/png;base64,...`` URL."""
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")


def _json_error(status: int, message: str) -> Any:
    """The JSON error response of the paint app: ``{"error": message}``."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


def _add_error_handlers(app: Any) -> None:
    """Every error of ``app`` answered as one JSON line (bad edits and requests 400, the generator's 500)."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    error = _json_error

    @app.exception_handler(PaintError)
    async def paint_error(_request: Request, err: PaintError) -> JSONResponse:
        return error(400, str(err))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = "no such page" if err.status_code == 404 else str(err.detail)
        return error(err.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, err: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg')}" for e in err.errors()]
        return error(400, "bad request: " + "; ".join(parts))

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, err: Exception) -> JSONResponse:
        return error(500, f"the generator failed on this request: {type(err).__name__}: {err}")


def _static(files: Any, name: str) -> Any:
    """The page's static file ``name`` (never cached: the page and its script change together)."""
    from fastapi.responses import Response

    if name not in STATIC_FILES:
        raise PaintError(f"no such file: {name!r}")
    return Response((files / name).read_bytes(), media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})


def _png(image: Any) -> Any:
    """``image`` as a PNG response (cached: a sample or a strip never changes for one painter)."""
    from fastapi.responses import Response

    return Response(encode_png(image), media_type="image/png", headers={"Cache-Control": "max-age=3600"})


def _render_json(out: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """The JSON answer of ``POST /api/render`` for the painter's ``render`` output ``out``."""
    return {
        "seed": out["edit"].seed, "edit": out["edit"].to_dict(), "stats": out["stats"],
        "original": data_url(out["original"]), "edited": data_url(out["edited"]),
        "segmentation_original": data_url(out["segmentation_original"]),
        "segmentation_edited": data_url(out["segmentation_edited"]),
        "units": [{"layer": s.layer, "units": s.units, "mode": s.mode} for s in out["edit"].strokes],
        "seconds": elapsed,
    }


def create_app(painter: Painter, *, max_request_bytes: int = MAX_REQUEST_BYTES) -> Any:
    """The FastAPI application of the paint page for ``painter``.

    Routes: ``/`` (the page), ``/static/{index.html,paint.js,paint.css}``, ``GET /api/info``,
    ``GET /api/units?layer=``, ``GET /api/concept-units?layer=&concept=&size=``,
    ``GET /api/sample.png?seed=``, ``GET /api/strip.png?layer=&unit=``, ``POST /api/render``.
    """
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, Response
        from starlette.concurrency import run_in_threadpool
    except ImportError as err:  # pragma: no cover - exercised where the extra is missing
        raise _missing_app_extra(err) from err

    app = FastAPI(title="lightning-dissect paint", docs_url=None, redoc_url=None, openapi_url=None)
    files = resources.files("lightning_dissect.app") / "static"

    error = _json_error
    _add_error_handlers(app)

    def static(name: str) -> Response:
        return _static(files, name)

    @app.get("/")
    def index() -> Response:
        return static("index.html")

    @app.get("/static/{name}")
    def static_file(name: str) -> Response:
        if name not in STATIC_FILES:
            return error(404, "no such page")
        return static(name)

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return painter.info()

    @app.get("/api/units")
    def units(layer: str) -> dict[str, Any]:
        return {"layer": layer, "units": painter.units_table(layer)}

    @app.get("/api/concept-units")
    def concept_units(layer: str, concept: str, size: int | None = None) -> dict[str, Any]:
        chosen, source = painter.concept_units(layer, concept, size)
        return {"layer": layer, "concept": concept, "units": chosen, "source": source,
                "default_size": painter.default_size(layer, concept)}

    @app.get("/api/sample.png")
    async def sample(seed: int) -> Response:
        if not 0 <= seed < 2**63:
            raise PaintError(f"`seed` must be a non-negative integer, got {seed}")
        return _png(await run_in_threadpool(painter.sample_uint8, seed))

    @app.get("/api/strip.png")
    async def strip(layer: str, unit: int) -> Response:
        return _png(await run_in_threadpool(painter.strip, layer, unit))

    @app.post("/api/render")
    async def render(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_request_bytes:
            return error(413, f"request too large: {int(declared)} bytes (at most {max_request_bytes})")
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > max_request_bytes:
                return error(413, f"request too large: over {max_request_bytes} bytes")
        try:
            payload = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return error(400, f"the request is not JSON: {err}")
        start = time.perf_counter()
        out = await run_in_threadpool(painter.render, payload)
        elapsed = time.perf_counter() - start
        return JSONResponse(_render_json(out, elapsed))

    return app


def find_free_port(host: str = "127.0.0.1", start: int = 7860, attempts: int = 100) -> int:
    """``start`` if it is free on ``host``, else the next free port (up to ``attempts`` tried).

    Examples:
        >>> 7860 <= find_free_port() < 7960
        True
    """
    for port in range(start, start + attempts):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                probe.bind((host, port))
            except OSError as err:
                if err.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise
            return port
    raise OSError(f"no free port in {start}..{start + attempts - 1} on {host}")


class PaintServer:
    """A running paint server: its ``url``, and :meth:`stop` (a notebook's handle).

    Args:
        app: The application (:func:`create_app`).
        host: Address to bind (``127.0.0.1``: this machine only).
        port: Port; ``None``: 7860 or the next free one.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None) -> None:
        try:
            import uvicorn
        except ImportError as err:  # pragma: no cover
            raise _missing_app_extra(err) from err
        self.host = host
        self.port = find_free_port(host) if port is None else int(port)
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def run(self) -> None:
        """Serve in this thread until interrupted (Ctrl-C)."""
        self._server.run()

    def start(self, timeout: float = 30.0) -> "PaintServer":
        """Serve in a background thread (for a notebook); returns when the server accepts connections."""
        self._thread = threading.Thread(target=self._server.run, name="lightning-dissect-paint", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise OSError(f"the paint server could not start on {self.host}:{self.port}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the paint server did not start within {timeout} s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop the background server."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "PaintServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _repr_html_(self) -> str:
        return f'<a href="{self.url}" target="_blank">{self.url}</a> (lightning-dissect paint)'

