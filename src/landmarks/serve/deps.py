"""Shared state and who is asking, as FastAPI dependencies: ``get_service``, ``get_actor``, ``require_admin``,
``require_suggester``. ``landmarks.serve.middleware`` runs the same checks before a request's body is read."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import Depends, Request

from landmarks.serve.service import Actor, Service
from landmarks.serve.settings import ServiceError


def get_service(request: Request) -> Service:
    """The app's one Service (built in the app's lifespan)."""
    return request.app.state.service


def actor_of(service: Service, headers: Mapping[str, str], host: str) -> Actor:
    """The sender of a request with these headers from this (socket peer's) address: the token's role and name (401
    for a malformed, unknown or revoked token), else anonymous (or an admin, on a service started with ``--open``)."""
    header = headers.get("authorization")
    if header is None:
        if service.settings.open:
            return Actor("admin", "open access", None, f"ip:{host}")
        return Actor("anonymous", "anonymous", None, f"ip:{host}")
    scheme, _, secret = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ServiceError(401, "The Authorization header must be 'Bearer <token>'.", {"WWW-Authenticate": "Bearer"})
    token = service.token_for(secret.strip())
    if token is None:
        raise ServiceError(401, "The token is unknown or revoked.", {"WWW-Authenticate": "Bearer"})
    return Actor(token.role, token.name or f"{token.role} {token.token_id}", token.token_id, f"token:{token.token_id}")


def get_actor(request: Request, service: Service = Depends(get_service)) -> Actor:
    """The sender (see ``actor_of``)."""
    return actor_of(service, request.headers, request.client.host if request.client else "unknown")


def require_admin(actor: Actor = Depends(get_actor)) -> Actor:
    """401 without a token, 403 with a contributor's."""
    if actor.role == "anonymous":
        raise ServiceError(401, "This needs an admin token (Authorization: Bearer <token>).", {"WWW-Authenticate": "Bearer"})
    if actor.role != "admin":
        raise ServiceError(403, "This needs an admin token; yours is a contributor's.")
    return actor


def require_suggester(actor: Actor = Depends(get_actor), service: Service = Depends(get_service)) -> Actor:
    """401 for a visitor without a token, unless the service allows anonymous suggestions."""
    service.may_suggest(actor)
    return actor
