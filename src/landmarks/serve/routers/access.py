"""Tokens and the audit trail (admins only)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from landmarks.serve.deps import get_service, require_admin
from landmarks.serve.schemas import AuditOut, NewTokenOut, StoreId, TokenIn, TokenOut
from landmarks.serve.service import Actor, Service
from landmarks.serve.settings import JSON_BODY_BYTES

router = APIRouter(tags=["access"])


@router.get("/tokens", response_model=list[TokenOut])
def tokens(actor: Actor = Depends(require_admin), service: Service = Depends(get_service)) -> list[TokenOut]:
    return [TokenOut(**t.__dict__) for t in service.store.tokens()]


@router.post("/tokens", response_model=NewTokenOut, max_body_size=JSON_BODY_BYTES)
def create_token(body: TokenIn, actor: Actor = Depends(require_admin), service: Service = Depends(get_service)) -> NewTokenOut:
    """A new token; its secret is in this answer only."""
    token_id, secret = service.create_token(body.role, body.name, actor)
    token = next(t for t in service.store.tokens() if t.token_id == token_id)
    return NewTokenOut(**token.__dict__, token=secret)


@router.delete("/tokens/{token_id}", response_model=TokenOut)
def revoke_token(token_id: StoreId, actor: Actor = Depends(require_admin), service: Service = Depends(get_service)) -> TokenOut:
    service.revoke_token(token_id, actor)
    return TokenOut(**next(t for t in service.store.tokens() if t.token_id == token_id).__dict__)


@router.get("/audit", response_model=list[AuditOut])
def audit(limit: int = Query(200, ge=1, le=5000), actor: Actor = Depends(require_admin),
          service: Service = Depends(get_service)) -> list[AuditOut]:
    """Every change: who, what, when (newest first)."""
    return [AuditOut(**row) for row in service.store.audit(limit)]
