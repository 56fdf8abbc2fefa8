"""The review queue: admins see pending suggestions (photo, the model's answer, the suggestion, who, when) and decide
(the router requires an admin token for every route)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from landmarks.serve.deps import get_actor, get_service, require_admin
from landmarks.serve.schemas import DecisionOut, StoreId, SuggestionOut
from landmarks.serve.service import Actor, Service
from landmarks.store import SuggestionState

router = APIRouter(prefix="/suggestions", tags=["review"], dependencies=[Depends(require_admin)])


@router.get("", response_model=list[SuggestionOut])
def suggestions(status: SuggestionState | Literal["all"] = "pending", limit: int = Query(200, ge=1, le=1000),
                service: Service = Depends(get_service)) -> list[SuggestionOut]:
    found = service.suggestions(None if status == "all" else status, limit)
    return [SuggestionOut(**{k: v for k, v in s.__dict__.items() if k not in ("embedding", "client", "result_landmark_id")},
                          suggested_name=name, photo_url=f"/suggestions/{s.suggestion_id}/photo") for s, name in found]


@router.get("/{suggestion_id}/photo", response_class=Response)
def photo(suggestion_id: StoreId, service: Service = Depends(get_service)) -> Response:
    """The suggested photo as it was sent (gone once the suggestion is rejected)."""
    return Response(service.suggestion_photo(suggestion_id), media_type="application/octet-stream",
                    headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


@router.post("/{suggestion_id}/approve", response_model=DecisionOut)
def approve(suggestion_id: StoreId, actor: Actor = Depends(get_actor), service: Service = Depends(get_service)) -> DecisionOut:
    """The photo joins the references at once (a suggested new landmark is created)."""
    return DecisionOut(**service.approve(suggestion_id, actor))


@router.post("/{suggestion_id}/reject", response_model=DecisionOut)
def reject(suggestion_id: StoreId, actor: Actor = Depends(get_actor), service: Service = Depends(get_service)) -> DecisionOut:
    """Nothing reaches the references; the photo is deleted."""
    return DecisionOut(**service.reject(suggestion_id, actor))
