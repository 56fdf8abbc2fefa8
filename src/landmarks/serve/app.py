"""The web service: a page and a REST API over one Recognizer and the run's store (FastAPI "bigger applications":
one router per concern, the Service shared through ``Depends(get_service)``)."""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from landmarks.recognize.recognizer import Recognizer
from landmarks.serve.admin import startup_notes
from landmarks.serve.live import mount_live
from landmarks.serve.routers import access, recognition, review
from landmarks.serve.service import Service
from landmarks.serve.settings import ServiceError, Settings, SizeLimits
from landmarks.store import Store

log = logging.getLogger(__name__)


def _purge_loop(service: Service, stop: threading.Event) -> None:
    """Delete expired uploads every ``purge_every_seconds`` until the app stops."""
    while not stop.wait(service.settings.purge_every_seconds):
        try:
            removed = service.purge_uploads()
            if removed:
                log.info("deleted %d expired uploads", removed)
        except Exception:  # noqa: BLE001 - a failed purge is retried next time; the service goes on
            log.exception("could not delete expired uploads")


def create_app(run_dir: Path, backend: str = "auto", recognizer: Recognizer | None = None,
               settings: Settings | None = None) -> FastAPI:
    """The FastAPI app; the Recognizer (trained references + the store's changes) is loaded once, when it starts.

    A ``recognizer`` given here must be loaded as ``Recognizer.load`` does by default (with the store's changes)."""
    run_dir = Path(run_dir)
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store.open(run_dir)  # first: it migrates an older feedback.sqlite that the Recognizer then reads
        service = Service(recognizer or Recognizer.load(run_dir, backend=backend), store, settings)
        service.purge_uploads()
        app.state.service = service
        stop = threading.Event()
        purger = threading.Thread(target=_purge_loop, args=(service, stop), name="purge-uploads", daemon=True)
        purger.start()
        try:
            yield
        finally:
            stop.set()
            purger.join(timeout=5)

    app = FastAPI(title="landmarks", lifespan=lifespan,
                  description="Recognise landmarks in photos; suggest corrections and new landmarks; review them (admins).")
    sizes = SizeLimits(settings)

    @app.exception_handler(ServiceError)
    async def refused(request: Request, error: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": error.detail}, error.status, headers=error.headers)

    @app.middleware("http")
    async def refuse_huge_requests(request: Request, call_next):  # before the body is spooled anywhere
        try:
            sizes.check_request(request.headers.get("content-length"))
        except ServiceError as error:
            return JSONResponse({"detail": error.detail}, error.status)
        return await call_next(request)

    app.include_router(recognition.router)
    app.include_router(review.router)
    app.include_router(access.router)
    mount_live(app, run_dir)  # /live: the device bundle (landmarks.export.web) with the service's references
    return app


def serve(run_dir: Path, host: str = "127.0.0.1", port: int = 8000, backend: str = "auto",
          settings: Settings | None = None) -> None:
    """Run the service with uvicorn until interrupted; says how to create an admin token when there is none."""
    import uvicorn  # the server only where one is started

    run_dir = Path(run_dir)
    settings = settings or Settings()
    Store.open(run_dir)  # creates it, or migrates an older feedback.sqlite, before the Recognizer reads it
    recognizer = Recognizer.load(run_dir, backend=backend)  # fail fast, before the server starts
    for line in startup_notes(run_dir, settings):
        print(f"landmarks: {line}")
    print(f"landmarks: serving {run_dir} on http://{host}:{port}/ (API docs at /docs)")
    uvicorn.run(create_app(run_dir, backend, recognizer, settings), host=host, port=port, log_level="warning")
