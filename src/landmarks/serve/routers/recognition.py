"""Recognising photos, the landmarks, corrections and enrolment (deleting and moving: ``routers.references``)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import HTMLResponse

from landmarks.data.catalog import NO_LANDMARK, NO_LANDMARK_NAME
from landmarks.recognize.geo import Location
from landmarks.recognize.recognizer import Prediction, Recognizer
from landmarks.serve.deps import get_actor, get_service, require_suggester
from landmarks.serve.schemas import (CandidateOut, EnrolOut, FeedbackIn, FeedbackOut, HealthOut, LandmarkInfo, LandmarkOut,
                                     NeighbourOut, PredictionOut, WhoAmIOut)
from landmarks.serve.service import Actor, Service
from landmarks.serve.settings import JSON_BODY_BYTES, ServiceError

router = APIRouter()


def prediction_out(upload_id: str, prediction: Prediction, top_k: int, min_confidence: float,
                   info: dict | None = None) -> PredictionOut:
    message = (f"{prediction.name}: {prediction.confidence:.0%} likely to be right." if prediction.known
               else f"No known landmark: the best guess, {prediction.name}, is {prediction.confidence:.0%} likely to be "
                    f"right, and this service names a landmark from {min_confidence:.0%}.")
    return PredictionOut(
        upload_id=upload_id, known=prediction.known,
        landmark_id=prediction.landmark_id if prediction.known else NO_LANDMARK,
        name=prediction.name if prediction.known else NO_LANDMARK_NAME, confidence=prediction.confidence,
        candidates=[CandidateOut(**c.__dict__) for c in prediction.candidates[:top_k]],
        neighbours=[NeighbourOut(**n.__dict__) for n in prediction.neighbours], message=message,
        info=LandmarkInfo(**(info or {})) if prediction.known else LandmarkInfo(),
    )


def confidence_note(recognizer: Recognizer) -> str:
    """What a confidence means for this run, in words (the page shows it)."""
    threshold = f"Below {recognizer.config.min_confidence:.0%} the answer is \"no known landmark\"."
    if recognizer.calibration is None:
        return f"Confidence is the fused kNN and classifier score (this run is not calibrated). {threshold}"
    return (f"Confidence is the estimated chance that the answer is right, calibrated after training on photos the "
            f"model never learned from. {threshold} The threshold was chosen so that at least "
            f"{recognizer.config.target_precision:.0%} of the landmarks it names on those photos are right "
            f"(with {recognizer.config.precision_certainty:.0%} certainty).")


def access_note(service: Service) -> str:
    if service.settings.open:
        return "Open service (--open): anyone may correct, enrol and delete, without a token."
    anonymous = " Visitors without a token may suggest too." if service.settings.allow_anonymous_suggestions else ""
    return ("Anyone may recognise photos. Contributors (token) suggest corrections and new landmarks, which an admin "
            f"reviews; admins (token) enrol, approve, reject and delete.{anonymous}")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> str:
    return (resources.files("landmarks") / "serve" / "static" / "index.html").read_text()


@router.get("/health", response_model=HealthOut)
def health(service: Service = Depends(get_service)) -> HealthOut:
    settings = service.settings
    return HealthOut(status="ok", open=settings.open, access=access_note(service), retention=settings.retention_note(),
                     min_confidence=service.min_confidence,
                     confidence=confidence_note(service.recognizer),
                     anonymous_suggestions=settings.allow_anonymous_suggestions,
                     limits={"predict_per_minute": settings.predict_per_minute,
                             "suggestions_per_hour": settings.suggestions_per_hour,
                             "max_pending_per_client": settings.max_pending_per_client,
                             "keep_uploads_hours": settings.keep_uploads_hours, "max_uploads": settings.max_uploads,
                             "max_upload_mb": settings.max_upload_bytes / 2**20,
                             "max_request_mb": settings.max_request_bytes / 2**20,
                             "max_json_mb": JSON_BODY_BYTES / 2**20},
                     **service.health())


@router.get("/me", response_model=WhoAmIOut)
def who_am_i(actor: Actor = Depends(get_actor)) -> WhoAmIOut:
    """The role and name behind the request's token (the page's sign-in checks a pasted token with it)."""
    return WhoAmIOut(role=actor.role, name=actor.name, token_id=actor.token_id)


@router.post("/predict", response_model=PredictionOut)
def predict(photo: UploadFile = File(...), top_k: int = Form(3),
            latitude: float | None = Form(None, ge=-90, le=90, description="where the photo was taken (WGS84)"),
            longitude: float | None = Form(None, ge=-180, le=180, description="with latitude"),
            actor: Actor = Depends(get_actor), service: Service = Depends(get_service)) -> PredictionOut:
    """Top landmarks of a photo. With latitude and longitude (or EXIF GPS in the photo), landmarks farther than
    recognize.geo_radius_km lose confidence (landmarks.recognize.geo)."""
    if (latitude is None) != (longitude is None):
        raise ServiceError(422, "Give both latitude and longitude, or neither.")
    location = Location(latitude, longitude) if latitude is not None else None
    data = service.sizes.read(photo)
    upload_id, prediction = service.predict(data, photo.filename or "the upload", actor, location)
    return prediction_out(upload_id, prediction, max(1, min(top_k, 10)), service.min_confidence,
                          service.info_of(prediction.landmark_id))


@router.post("/feedback", response_model=FeedbackOut, max_body_size=JSON_BODY_BYTES)
def feedback(body: FeedbackIn, actor: Actor = Depends(require_suggester), service: Service = Depends(get_service)) -> FeedbackOut:
    """An admin's correction applies at once; a contributor's becomes a suggestion for review."""
    return FeedbackOut(**service.feedback(body.upload_id, body.landmark_id, body.add_to_index, actor))


@router.get("/landmarks", response_model=list[LandmarkOut])
def landmarks(service: Service = Depends(get_service)) -> list[LandmarkOut]:
    return [LandmarkOut(**{**entry, "info": LandmarkInfo(**entry["info"])}) for entry in service.landmark_entries()]


@router.post("/landmarks", response_model=EnrolOut)
def enrol(name: str = Form(..., min_length=1, max_length=200), photos: list[UploadFile] = File(...),
          actor: Actor = Depends(require_suggester), service: Service = Depends(get_service)) -> EnrolOut:
    """A new landmark from a few photos (admins: recognised from the next request on; others: suggestions)."""
    service.may_suggest(actor)
    service.check_photo_count(len(photos))
    read = [(upload.filename or "a photo", service.sizes.read(upload, upload.filename or "a photo")) for upload in photos]
    return EnrolOut(**service.enrol(name, read, actor))
