"""The service's pure ASGI middleware: what every request and every answer goes through, before any route runs.

- The body limits are FastAPI's own (``max_body_size`` of the app and of the JSON routes, Starlette's
  ``RequestBodyLimitMiddleware``): the bytes of the ``http.request`` messages are counted while the body streams in,
  with or without ``Content-Length``, and reading stops at the limit with 413.
- ``TokenFirst``: a request to a route that needs a token (``require_admin``, ``require_suggester``), sent without a
  valid one, is refused with 401 (403 for a contributor's token on an admin route) before its body is read, by the
  same checks the route's dependencies make (``landmarks.serve.deps``).
- ``SecurityHeaders``: every answer (page, API, error) carries a Content-Security-Policy with ``frame-ancestors
  'none'`` and ``X-Frame-Options: DENY`` (no framing, no clickjacking), ``X-Content-Type-Options: nosniff`` and a
  ``Referrer-Policy``. The policy lets the live page run ONNX Runtime Web (``'wasm-unsafe-eval'``, its worker and
  module imports from ``'self'``, ``blob:`` workers for its threads) and the service's page its one inline script
  (allowed by its sha256, computed when the app is made); ``/docs`` and ``/redoc`` (FastAPI's pages, from a CDN) get
  one of their own.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from landmarks.serve.deps import actor_of, require_admin, require_suggester
from landmarks.serve.settings import ServiceError


def _needs(dependant: Dependant) -> set[Callable]:
    """The token checks among a route's dependencies (at any depth)."""
    found = {dependant.call} & {require_admin, require_suggester}
    for child in dependant.dependencies:
        found |= _needs(child)
    return found


class TokenFirst:
    """401 (or 403) before the body is read, for a route that needs a token (see the module docstring)."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, routers: list[APIRouter]):
        self.app = app
        self.fastapi_app = fastapi_app
        self.routes = [(route, _needs(route.dependant)) for router in routers for route in router.routes
                       if isinstance(route, APIRoute)]
        self.routes = [(route, needs) for route, needs in self.routes if needs]

    def route_needs(self, scope: Scope) -> set[Callable]:
        for route, needs in self.routes:
            if route.matches(scope)[0] == Match.FULL:
                return needs
        return set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = getattr(self.fastapi_app.state, "service", None)
        needs = self.route_needs(scope) if scope["type"] == "http" and service is not None else set()
        if needs:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
            client = scope.get("client")
            try:
                actor = actor_of(service, headers, client[0] if client else "unknown")
                if require_admin in needs:
                    require_admin(actor)
                if require_suggester in needs:
                    service.may_suggest(actor)
            except ServiceError as error:
                response = JSONResponse({"detail": error.detail}, error.status, headers=error.headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def inline_script_hashes(html: str) -> list[str]:
    """CSP sources for the page's inline ``<script>`` blocks (those without ``src``)."""
    return [_sha256_source(body) for body in re.findall(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", html, re.DOTALL)]


def content_security_policy(script_hashes: list[str]) -> str:
    """The policy of every answer but FastAPI's docs pages."""
    script = " ".join(["'self'", "'wasm-unsafe-eval'", *script_hashes])
    return "; ".join([
        "default-src 'self'", f"script-src {script}", "worker-src 'self' blob:", "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:", "media-src 'self' blob: mediastream:", "connect-src 'self' blob: data:",
        "object-src 'none'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'",
    ])


DOCS_POLICY = "; ".join([  # Swagger UI and ReDoc: FastAPI's inline start-up script and the CDN it loads them from
    "default-src 'self'", "script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net",
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com",
    "font-src 'self' https://fonts.gstatic.com", "img-src 'self' data: https://fastapi.tiangolo.com",
    "worker-src 'self' blob:", "object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'",
])
DOCS_PATHS = ("/docs", "/redoc")
SECURITY_HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "strict-origin-when-cross-origin"}


class SecurityHeaders:
    """The security headers on every answer (see the module docstring); a header a route set itself is kept."""

    def __init__(self, app: ASGIApp, policy: str):
        self.app = app
        self.policy = policy

    def headers_for(self, path: str) -> dict[str, str]:
        return {**SECURITY_HEADERS, "Content-Security-Policy": DOCS_POLICY if path.startswith(DOCS_PATHS) else self.policy}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = [(k.lower().encode(), v.encode()) for k, v in self.headers_for(scope.get("path", "")).items()]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", ())}
                message["headers"] = [*message.get("headers", ()), *(h for h in extra if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, with_headers)
