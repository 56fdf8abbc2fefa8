"""The API's request and response bodies (pydantic), as /docs shows them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, Field

from landmarks.store import Role, SuggestionState

# Ids are the store's integers (SQLite: signed 64-bit); a larger one is refused with 422 before it reaches the store.
STORE_INT_MIN, STORE_INT_MAX = -(2**63), 2**63 - 1
StoreId = Annotated[int, Path(ge=STORE_INT_MIN, le=STORE_INT_MAX)]  # an id in a route's path


class CandidateOut(BaseModel):
    landmark_id: int
    name: str
    score: float


class NeighbourOut(BaseModel):
    image_id: str
    landmark_id: int
    similarity: float


class LandmarkInfo(BaseModel):
    """What the run knows of a landmark beyond its name (landmarks.csv's optional columns); None when unknown."""

    latitude: float | None = Field(None, description="WGS84 degrees")
    longitude: float | None = Field(None, description="WGS84 degrees")
    url: str | None = None
    description: str | None = None


class PredictionOut(BaseModel):
    upload_id: str = Field(description="id to quote in POST /feedback (empty when the service keeps no uploads)")
    known: bool = Field(description="false: no known landmark (confidence below the threshold)")
    landmark_id: int
    name: str
    confidence: float
    candidates: list[CandidateOut]
    neighbours: list[NeighbourOut]
    message: str
    info: LandmarkInfo = Field(default_factory=LandmarkInfo, description="the answer's coordinates and link, if known")


class FeedbackIn(BaseModel):
    upload_id: str
    landmark_id: int = Field(ge=STORE_INT_MIN, le=STORE_INT_MAX, description="the landmark the photo shows, or -1 for none")
    add_to_index: bool = Field(True, description="also make the photo a reference of that landmark (admins: at once; "
                                                 "others: a suggestion for review)")


class FeedbackOut(BaseModel):
    feedback_id: int
    added_to_index: bool = Field(description="the photo is a reference from now on")
    status: Literal["applied", "pending", "recorded"] = Field(description="pending: waits for an admin's review")
    suggestion_id: int | None = None


class LandmarkOut(BaseModel):
    landmark_id: int
    name: str
    references: int = Field(description="reference photos: those it was trained or taught from, and approved since")
    enrolled: bool = Field(description="taught in the service after training")
    info: LandmarkInfo = Field(default_factory=LandmarkInfo)
    expected_coverage: float | None = Field(None, description="share of its photos the service is expected to name "
                                            "right and above the threshold (measured by the calibration; None: not)")
    class_centres: int = Field(0, description="taught landmarks: class centres imprinted from its photos")
    note: str | None = Field(None, description="taught from fewer photos than helps: one sentence saying so")


class EnrolOut(BaseModel):
    landmark_id: int | None = Field(description="None for a new landmark that waits for review")
    name: str
    photos_added: int
    skipped: list[str]
    status: Literal["applied", "pending"] = "applied"
    suggestion_ids: list[int] = []


class HealthOut(BaseModel):
    status: str
    open: bool = Field(description="true: anyone may change the references (started with --open)")
    access: str = Field(description="who may change what, in words")
    retention: str = Field(description="what is kept and for how long, in words")
    min_confidence: float = Field(description="answers below this confidence are 'no known landmark'")
    confidence: str = Field(description="what a confidence means for this run, in words")
    landmarks: int
    references: int
    feedback: int
    pending_suggestions: int
    uploads_kept: int
    anonymous_suggestions: bool
    limits: dict[str, float]


class WhoAmIOut(BaseModel):
    role: Role | Literal["anonymous"]
    name: str
    token_id: int | None


class SuggestionOut(BaseModel):
    suggestion_id: int
    created: float = Field(description="seconds since the epoch")
    status: SuggestionState
    image_id: str
    predicted_landmark_id: int | None = Field(description="what the model said of the photo (its best guess)")
    predicted_name: str | None
    confidence: float | None
    landmark_id: int | None = Field(description="suggested: an existing landmark ...")
    landmark_name: str | None = Field(description="... or a new one by this name")
    suggested_name: str = Field(description="the suggested landmark's name, either way")
    suggested_by: str
    decided: float | None
    decided_by: str | None
    photo_url: str


class DecisionOut(BaseModel):
    suggestion_id: int
    status: Literal["approved", "rejected"]
    landmark_id: int | None
    name: str | None


class ReferenceOut(BaseModel):
    image_id: str
    source: str = Field(description="trained, or how it was added: enrol, feedback, suggestion, move, migrated")


class MoveIn(BaseModel):
    landmark_id: int = Field(ge=STORE_INT_MIN, le=STORE_INT_MAX)


class RemovedOut(BaseModel):
    image_id: str
    landmark_ids: list[int]
    moved_from: list[int] = []


class DeletedLandmarkOut(BaseModel):
    landmark_id: int
    name: str
    references_removed: int


class TokenIn(BaseModel):
    role: Role
    name: str = Field("", max_length=200)


class TokenOut(BaseModel):
    token_id: int
    role: Role
    name: str
    created: float
    revoked: float | None


class NewTokenOut(TokenOut):
    token: str = Field(description="the secret: shown this once, stored only as a hash")


class AuditOut(BaseModel):
    audit_id: int
    at: float
    actor: str
    action: str
    details: dict[str, Any]
