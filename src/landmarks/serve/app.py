"""The web service: a page and a REST API over one Recognizer and the run's store (FastAPI "bigger applications":
one router per concern, the Service shared through ``Depends(get_service)``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY

from landmarks.recognize.recognizer import Recognizer
from landmarks.serve.admin import startup_notes
from landmarks.serve.live import mount_live
from landmarks.serve.middleware import (
    SecurityHeaders,
    TokenFirst,
    content_security_policy,
    inline_script_hashes,
)
from landmarks.serve.routers import access, recognition, references, review
from landmarks.serve.service import Service
from landmarks.serve.settings import MB, ServiceError, Settings
from landmarks.store import Store

log = logging.getLogger(__name__)


def _purge_loop(service: Service, stop: threading.Event) -> None:
    """Delete expired uploads every ``purge_every_seconds`` until the app stops."""
    while not stop.wait(service.settings.purge_every_seconds):
        try:
            removed = service.purge_uploads()
            if removed:
                log.info("deleted %d expired uploads", removed)
        except Exception:
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

    app = FastAPI(title="landmarks", lifespan=lifespan, max_body_size=settings.max_request_bytes,  # counted as it streams in
                  description="Recognise landmarks in photos; suggest corrections and new landmarks; review them (admins).")

    @app.exception_handler(ServiceError)
    async def refused(request: Request, error: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": error.detail}, error.status, headers=error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        limit = request.scope.get(MAX_BODY_SIZE_SCOPE_KEY)
        if error.status_code == 413 and limit is not None:  # FastAPI's body limit: say which, in a sentence
            return JSONResponse({"detail": f"The request is larger than {limit / MB:g} MB."}, 413)
        return await http_exception_handler(request, error)

    routers = [recognition.router, references.router, review.router, access.router]
    app.add_middleware(TokenFirst, fastapi_app=app, routers=routers)  # 401 before the body is read
    page = (resources.files("landmarks") / "serve" / "static" / "index.html").read_text()
    policy = content_security_policy(inline_script_hashes(page))
    app.add_middleware(SecurityHeaders, policy=policy)  # on every answer the app's middleware sends

    @app.exception_handler(Exception)  # a 500 is sent outside the middleware: it carries the headers itself
    async def failed(request: Request, error: Exception) -> JSONResponse:
        log.error("failed on %s %s", request.method, request.url.path, exc_info=error)
        return JSONResponse({"detail": "The service failed on this request; its log says why."}, 500,
                            headers=SecurityHeaders(app, policy).headers_for(request.url.path))

    for router in routers:
        app.include_router(router)
    mount_live(app, run_dir)  # /live: the device bundle (landmarks.export.web) with the service's references
    return app


def uvicorn_config(app: FastAPI, host: str, port: int, settings: Settings):
    """uvicorn's config for the service: proxy headers (X-Forwarded-For) are trusted only with ``--proxy-headers``, and
    then only from ``--forwarded-allow-ips``; by default the client is the socket's peer, whatever the headers say
    (uvicorn on its own trusts them from 127.0.0.1, so a client on the same host could pick its address)."""
    import uvicorn  # the server only where one is started

    return uvicorn.Config(app, host=host, port=port, log_level="warning", proxy_headers=settings.proxy_headers,
                          forwarded_allow_ips=settings.forwarded_allow_ips)


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
    uvicorn.Server(uvicorn_config(create_app(run_dir, backend, recognizer, settings), host, port, settings)).run()
