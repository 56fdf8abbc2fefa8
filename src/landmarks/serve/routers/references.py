"""What the service knows, changed by hand: enrolled landmarks deleted, reference photos listed, removed and moved
(admins only: the router requires an admin token for every route)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from landmarks.serve.deps import get_actor, get_service, require_admin
from landmarks.serve.schemas import (STORE_INT_MAX, STORE_INT_MIN, DeletedLandmarkOut, MoveIn, ReferenceOut, RemovedOut,
                                     StoreId)
from landmarks.serve.service import Actor, Service
from landmarks.serve.settings import JSON_BODY_BYTES

router = APIRouter(tags=["references"], dependencies=[Depends(require_admin)])


@router.delete("/landmarks/{landmark_id}", response_model=DeletedLandmarkOut)
def delete_landmark(landmark_id: StoreId, actor: Actor = Depends(get_actor),
                    service: Service = Depends(get_service)) -> DeletedLandmarkOut:
    """An enrolled landmark and its photos: unknown at once and after a restart."""
    return DeletedLandmarkOut(**service.delete_landmark(landmark_id, actor))


@router.get("/landmarks/{landmark_id}/references", response_model=list[ReferenceOut])
def references(landmark_id: StoreId, service: Service = Depends(get_service)) -> list[ReferenceOut]:
    return [ReferenceOut(image_id=i, source=s) for i, s in service.references_of(landmark_id)]


@router.delete("/references/{image_id}", response_model=RemovedOut)
def delete_reference(image_id: str, landmark_id: int | None = Query(None, ge=STORE_INT_MIN, le=STORE_INT_MAX,
                                                                    description="only this landmark's reference"),
                     actor: Actor = Depends(get_actor), service: Service = Depends(get_service)) -> RemovedOut:
    """One photo out of the references, trained or added; it stays removed after a restart."""
    return RemovedOut(**service.delete_reference(image_id, landmark_id, actor))


@router.put("/references/{image_id}", response_model=RemovedOut, max_body_size=JSON_BODY_BYTES)
def move_reference(image_id: str, body: MoveIn, actor: Actor = Depends(get_actor),
                   service: Service = Depends(get_service)) -> RemovedOut:
    """A reference photo moved to another landmark: no longer a reference of the one it was."""
    return RemovedOut(**service.move_reference(image_id, body.landmark_id, actor))
