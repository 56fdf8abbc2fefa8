"""The live page at ``/live``: the device bundle of ``landmarks.export.web`` served by the running service.

The files are those ``landmarks export RUN --web DIR`` writes, so the page behaves the same from an exported folder;
here the prototypes and landmarks come from the service's Recognizer (trained references plus what was approved
since), rebuilt when its references change. The page runs the model in the browser: frames never reach the server
unless the user taps "Ask the server" (``POST /predict``). Responses carry the cross-origin isolation headers that
let ONNX Runtime Web run on several threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from landmarks.errors import DataError
from landmarks.export.web import WebBundle, build_bundle, page_dir

log = logging.getLogger(__name__)

ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
                     "Cross-Origin-Resource-Policy": "same-origin"}
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript",
               ".css": "text/css", ".json": "application/json", ".wasm": "application/wasm",
               ".onnx": "application/octet-stream", ".bin": "application/octet-stream"}
FRESH = {"manifest.json", "landmarks.json", "prototypes.bin", "index.html", "sw.js"}  # revalidated on every load


class LiveBundles:
    """The bundle of the service's current references, rebuilt when they change (one build at a time)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.lock = threading.Lock()
        self.key: str | None = None
        self.bundle: WebBundle | None = None

    @staticmethod
    def references_key(request: Request) -> str:
        """Changes whenever a reference or a landmark is added, removed, moved or renamed."""
        recognizer = request.app.state.service.recognizer
        digest = hashlib.sha1(json.dumps(sorted(recognizer.names.items())).encode())
        if recognizer.index is not None:
            digest.update(recognizer.index.landmark_ids.tobytes())
            digest.update(str(len(recognizer.index)).encode())
        return digest.hexdigest()

    def current(self, request: Request) -> WebBundle:
        service = request.app.state.service
        with self.lock:
            with service.index_lock.read():
                key = self.references_key(request)
                if key != self.key or self.bundle is None:
                    predict_url = f"{request.scope.get('root_path', '')}/predict"
                    try:
                        self.bundle = build_bundle(service.recognizer, self.run_dir, predict_url=predict_url)
                    except DataError as error:
                        raise HTTPException(503, str(error)) from None
                    self.key = key
                    log.info("live bundle built: %d prototypes", self.bundle.manifest["prototypes"]["count"])
            return self.bundle


def _response(name: str, content: bytes | Path) -> Response:
    headers = dict(ISOLATION_HEADERS)
    headers["Cache-Control"] = "no-cache" if name in FRESH else "public, max-age=3600"
    media_type = MEDIA_TYPES.get(Path(name).suffix, "application/octet-stream")
    if isinstance(content, Path):
        return FileResponse(content, media_type=media_type, headers=headers)
    return Response(content, media_type=media_type, headers=headers)


def mount_live(app: FastAPI, run_dir: Path) -> None:
    """Add ``/live`` (the page) and ``/live/<file>`` (the bundle's files, nothing else) to the service's app."""
    bundles = LiveBundles(run_dir)
    router = APIRouter()

    @router.get("/live", include_in_schema=False)
    def live_redirect(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/live/", status_code=307)

    @router.get("/live/", include_in_schema=False)
    def live_page() -> Response:  # served even before the run is exported: the page then says what to do
        return _response("index.html", page_dir() / "index.html")

    @router.get("/live/{name:path}", include_in_schema=False)
    def live_file(name: str, request: Request) -> Response:
        bundle = bundles.current(request)
        if name == "manifest.json":
            return _response(name, json.dumps(bundle.manifest, ensure_ascii=False).encode())
        if name not in bundle.files:  # only the bundle's own names: no path is taken from the request
            raise HTTPException(404, f"/live/{name} is not part of the live page.")
        return _response(name, bundle.files[name])

    app.include_router(router)
