"""Tokens and the audit trail (admins only: the router requires an admin token for every route)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from landmarks.serve.deps import get_actor, get_service, require_admin
from landmarks.serve.schemas import AuditOut, NewTokenOut, StoreId, TokenIn, TokenOut
from landmarks.serve.service import Actor, Service
from landmarks.serve.settings import JSON_BODY_BYTES

router = APIRouter(tags=["access"], dependencies=[Depends(require_admin)])


@router.get("/tokens", response_model=list[TokenOut])
def tokens(service: Service = Depends(get_service)) -> list[TokenOut]:
    return [TokenOut(**t.__dict__) for t in service.tokens()]


@router.post("/tokens", response_model=NewTokenOut, max_body_size=JSON_BODY_BYTES)
def create_token(body: TokenIn, actor: Actor = Depends(get_actor), service: Service = Depends(get_service)) -> NewTokenOut:
    """A new token; its secret is in this answer only."""
    token_id, secret = service.create_token(body.role, body.name, actor)
    return NewTokenOut(**service.token(token_id).__dict__, token=secret)


@router.delete("/tokens/{token_id}", response_model=TokenOut)
def revoke_token(token_id: StoreId, actor: Actor = Depends(get_actor), service: Service = Depends(get_service)) -> TokenOut:
    service.revoke_token(token_id, actor)
    return TokenOut(**service.token(token_id).__dict__)


@router.get("/audit", response_model=list[AuditOut])
def audit(limit: int = Query(200, ge=1, le=5000), service: Service = Depends(get_service)) -> list[AuditOut]:
    """Every change: who, what, when (newest first)."""
    return [AuditOut(**row) for row in service.audit(limit)]
