"""The review queue: admins see pending suggestions (photo, the model's answer, the suggestion, who, when) and decide."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from landmarks.serve.deps import get_service, require_admin
from landmarks.serve.schemas import DecisionOut, StoreId, SuggestionOut
from landmarks.serve.service import Actor, Service
from landmarks.serve.settings import ServiceError
from landmarks.store import SuggestionState

router = APIRouter(prefix="/suggestions", tags=["review"])


@router.get("", response_model=list[SuggestionOut])
def suggestions(status: SuggestionState | Literal["all"] = "pending", limit: int = Query(200, ge=1, le=1000),
                actor: Actor = Depends(require_admin), service: Service = Depends(get_service)) -> list[SuggestionOut]:
    found = service.store.suggestions(None if status == "all" else status, limit)
    return [SuggestionOut(**{k: v for k, v in s.__dict__.items() if k not in ("embedding", "client", "result_landmark_id")},
                          suggested_name=s.landmark_name or service.recognizer.names.get(s.landmark_id, str(s.landmark_id)),
                          photo_url=f"/suggestions/{s.suggestion_id}/photo") for s in found]


@router.get("/{suggestion_id}/photo", response_class=Response)
def photo(suggestion_id: StoreId, actor: Actor = Depends(require_admin), service: Service = Depends(get_service)) -> Response:
    """The suggested photo as it was sent (gone once the suggestion is rejected)."""
    data = service.store.suggestion_photo(suggestion_id)
    if data is None:
        raise ServiceError(404, f"Suggestion {suggestion_id} has no photo (unknown, or rejected).")
    return Response(data, media_type="application/octet-stream",
                    headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


@router.post("/{suggestion_id}/approve", response_model=DecisionOut)
def approve(suggestion_id: StoreId, actor: Actor = Depends(require_admin), service: Service = Depends(get_service)) -> DecisionOut:
    """The photo joins the references at once (a suggested new landmark is created)."""
    return DecisionOut(**service.approve(suggestion_id, actor))


@router.post("/{suggestion_id}/reject", response_model=DecisionOut)
def reject(suggestion_id: StoreId, actor: Actor = Depends(require_admin), service: Service = Depends(get_service)) -> DecisionOut:
    """Nothing reaches the references; the photo is deleted."""
    return DecisionOut(**service.reject(suggestion_id, actor))
