"""The live page at ``/live``: the device bundle of ``landmarks.export.web`` served by the running service.

The files are those ``landmarks export RUN --web DIR`` writes, so the page behaves the same from an exported folder;
here the prototypes and landmarks come from the service's Recognizer (trained references plus what was approved
since), rebuilt when its references change. The page runs the model in the browser: frames never reach the server
unless the user taps "Ask the server" (``POST /predict``). Responses carry the cross-origin isolation headers that
let ONNX Runtime Web run on several threads.

The page's own files (``index.html``, ``live.js``, ``worker.js``, ...) and the runtime are served whatever the run's
state, apart from the bundle, so the page can always say what is happening. A run without a device model (never
exported: ``make demo`` then ``landmarks serve RUN``) gets one on first need: ``landmarks export RUN --quantize int8``
runs once, in a background thread, while ``manifest.json`` answers 503 with a sentence saying so and how long it takes
(the page shows it and asks again). Where the export cannot be done here, one sentence says what to run. No answer
names a path on the server: the details go to the server's log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from landmarks.errors import DataError
from landmarks.export.onnx import export_run
from landmarks.export.web import (
    PAGE_FILES,
    RUNTIME_FILES,
    WebBundle,
    build_bundle,
    device_model,
    page_dir,
    runtime_dir,
)

log = logging.getLogger(__name__)

ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
                     "Cross-Origin-Resource-Policy": "same-origin"}
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript",
               ".css": "text/css", ".json": "application/json", ".wasm": "application/wasm",
               ".onnx": "application/octet-stream", ".bin": "application/octet-stream"}
FRESH = {"manifest.json", "landmarks.json", "prototypes.bin", "index.html", "sw.js"}  # revalidated on every load
# What the first export took (`landmarks export RUN --quantize int8`, 2-core CPU: benchmarks/RESULTS.md, "The live
# page's first export"); the page says so while it waits.
EXPORT_SECONDS_NOTE = ("2 to 3 minutes for a baseline-knn run of landmarks-mini on a busy 2-core CPU, longer for a "
                       "glr run, which also compares int8 with fp32 on its validation photos")
RETRY_SECONDS = 3
EXPORT_COMMAND = "landmarks export RUN_DIR --quantize int8"


class DeviceModelBuilder:
    """Exports the run's device model once, in a background thread, when the live page first needs it."""

    def __init__(self, run_dir: Path, export=export_run):
        self.run_dir = Path(run_dir)
        self.export = export
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.started: float | None = None
        self.seconds: float | None = None
        self.failed = False

    def ready(self) -> bool:
        try:
            device_model(self.run_dir)
            return True
        except DataError:
            return False

    def ensure(self) -> None:
        """Start the export unless the run has a device model or an export already ran (at most once)."""
        with self.lock:
            if self.thread is not None or self.ready():
                return
            self.started = time.monotonic()
            self.thread = threading.Thread(target=self._build, name="live-export", daemon=True)
            self.thread.start()

    def _build(self) -> None:
        log.info("the live page needs a device model: exporting %s (int8)", self.run_dir)
        try:
            self.export(self.run_dir, quantize="int8")
            self.seconds = time.monotonic() - (self.started or time.monotonic())
            log.info("device model for the live page exported in %.0f s", self.seconds)
        except Exception:
            self.failed = True
            log.exception("could not export %s for the live page; run `landmarks export %s --quantize int8`",
                          self.run_dir, self.run_dir)

    def waiting(self) -> JSONResponse:
        """The 503 the page shows while there is no device model: building (and for how long), or what to run."""
        self.ensure()
        if self.failed:
            detail = (f"This run has no device model and the service could not build one (the server's log says why): "
                      f"run `{EXPORT_COMMAND}` on the server, then reload this page.")
            return JSONResponse({"detail": detail, "building": False}, 503)
        elapsed = time.monotonic() - (self.started or time.monotonic())
        detail = (f"Building the device model for this page, once (`{EXPORT_COMMAND}`; {EXPORT_SECONDS_NOTE}): "
                  f"{elapsed:.0f} s so far…")
        return JSONResponse({"detail": detail, "building": True, "elapsed_s": round(elapsed, 1),
                             "retry_after_s": RETRY_SECONDS}, 503, headers={"Retry-After": str(RETRY_SECONDS)})


class LiveBundles:
    """The bundle of the service's current references, rebuilt when they change (one build at a time)."""

    def __init__(self, run_dir: Path, builder: DeviceModelBuilder):
        self.run_dir = Path(run_dir)
        self.builder = builder
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

    def current(self, request: Request) -> WebBundle | None:
        """The bundle, or None while the run has no device model (the builder then says why)."""
        if not self.builder.ready():
            return None
        service = request.app.state.service
        with self.lock:
            with service.index_lock.read():
                key = self.references_key(request)
                if key != self.key or self.bundle is None:
                    predict_url = f"{request.scope.get('root_path', '')}/predict"
                    try:
                        self.bundle = build_bundle(service.recognizer, self.run_dir, predict_url=predict_url)
                    except DataError:
                        log.exception("could not build the live bundle of %s", self.run_dir)
                        raise HTTPException(503, "The live page's bundle could not be built (the server's log says "
                                                 "why).") from None
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


def static_file(name: str) -> Path | None:
    """The page's own files and the runtime's, which need no model: served whatever the run's state."""
    if name in PAGE_FILES:
        return page_dir() / name
    runtime = runtime_dir()
    if runtime is not None and name.startswith("ort/") and name[4:] in RUNTIME_FILES:
        return runtime / name[4:]
    return None


def mount_live(app: FastAPI, run_dir: Path, builder: DeviceModelBuilder | None = None) -> None:
    """Add ``/live`` (the page) and ``/live/<file>`` (the bundle's files, nothing else) to the service's app."""
    builder = builder or DeviceModelBuilder(run_dir)
    bundles = LiveBundles(run_dir, builder)
    app.state.live_builder = builder
    router = APIRouter()

    @router.get("/live", include_in_schema=False)
    def live_redirect(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/live/", status_code=307)

    @router.get("/live/", include_in_schema=False)
    def live_page() -> Response:  # served before the run is exported too: the export starts, the page says so
        builder.ensure()
        return _response("index.html", page_dir() / "index.html")

    @router.get("/live/{name:path}", include_in_schema=False)
    def live_file(name: str, request: Request) -> Response:
        path = static_file(name)  # only the bundle's own names: no path is taken from the request
        if path is not None:
            return _response(name, path)
        if name not in ("manifest.json", "landmarks.json", "prototypes.bin", "model.onnx"):
            raise HTTPException(404, f"/live/{name} is not part of the live page.")
        bundle = bundles.current(request)
        if bundle is None:
            return builder.waiting()
        if name == "manifest.json":
            return _response(name, json.dumps(bundle.manifest, ensure_ascii=False).encode())
        if name not in bundle.files:
            raise HTTPException(404, f"/live/{name} is not part of the live page.")
        return _response(name, bundle.files[name])

    app.include_router(router)
