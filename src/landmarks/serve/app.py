"""The web service: a page and a REST API over one Recognizer, with feedback and enrolment that survive restarts."""

from __future__ import annotations

import hashlib
import logging
import threading
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import AsyncIterator

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from landmarks.data.images import decode_image_bytes
from landmarks.errors import ImageError
from landmarks.recognize.recognizer import NO_LANDMARK, Prediction, Recognizer
from landmarks.serve.feedback import FeedbackStore

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_ENROL_PHOTOS = 50
MAX_REQUEST_BYTES = 64 * 1024 * 1024  # a whole request (an enrolment's photos together), refused before it is read


class CandidateOut(BaseModel):
    landmark_id: int
    name: str
    score: float


class NeighbourOut(BaseModel):
    image_id: str
    landmark_id: int
    similarity: float


class PredictionOut(BaseModel):
    upload_id: str = Field(description="id to quote in POST /feedback")
    known: bool = Field(description="false: no known landmark (confidence below the threshold)")
    landmark_id: int
    name: str
    confidence: float
    candidates: list[CandidateOut]
    neighbours: list[NeighbourOut]
    message: str


class FeedbackIn(BaseModel):
    upload_id: str
    landmark_id: int = Field(description="the landmark the photo shows, or -1 for none")
    add_to_index: bool = Field(True, description="also add the photo to the references")


class FeedbackOut(BaseModel):
    feedback_id: int
    added_to_index: bool


class LandmarkOut(BaseModel):
    landmark_id: int
    name: str
    references: int
    enrolled: bool


class EnrolOut(BaseModel):
    landmark_id: int
    name: str
    photos_added: int
    skipped: list[str]


class HealthOut(BaseModel):
    status: str
    landmarks: int
    references: int
    feedback: int


class Service:
    """The Recognizer plus the store; index changes are serialised by a lock."""

    def __init__(self, recognizer: Recognizer, store: FeedbackStore):
        self.recognizer = recognizer
        self.store = store
        self.lock = threading.Lock()
        self.enrolled: set[int] = set()
        self.added: set[tuple[str, int]] = set()  # (image_id, landmark_id) of the references added at serve time
        for landmark_id, name in store.landmarks().items():
            recognizer.names[landmark_id] = name
            self.enrolled.add(landmark_id)
        dim = recognizer.index.dim if recognizer.index is not None else None
        stored = store.references()
        rows = [r for r in stored if dim is None or len(r[2]) == dim]
        if len(rows) < len(stored):
            log.warning("skipped %d stored references whose embedding size does not match the model", len(stored) - len(rows))
        for landmark_id in sorted({r[1] for r in rows}):
            mine = [r for r in rows if r[1] == landmark_id]
            self.add_references(np.stack([r[2] for r in mine]), [r[0] for r in mine], landmark_id)
        if rows:
            log.info("restored %d references added at serve time", len(rows))

    def new_references(self, image_ids: list[str], landmark_id: int) -> list[int]:
        """Positions in ``image_ids`` of the photos not yet a reference of this landmark (first of duplicates)."""
        seen = set(self.added)
        fresh = []
        for position, image_id in enumerate(image_ids):
            if (image_id, landmark_id) not in seen:
                seen.add((image_id, landmark_id))
                fresh.append(position)
        return fresh

    def add_references(self, embeddings: np.ndarray, image_ids: list[str], landmark_id: int, name: str | None = None) -> None:
        """Into the in-memory index (call with ``lock`` held, after the store has them)."""
        self.recognizer.add_references(embeddings, image_ids, landmark_id, name)
        self.added.update((i, landmark_id) for i in image_ids)

    def decode(self, data: bytes, name: str) -> np.ndarray:
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"{name} is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB.")
        if not data:
            raise HTTPException(400, f"{name} is empty.")
        try:
            return decode_image_bytes(data, self.recognizer.input_size_px, name)
        except ImageError as error:
            status = {"too_large": 413, "not_image": 415}.get(error.kind, 400)
            raise HTTPException(status, str(error)) from None


def read_limited(upload: UploadFile) -> bytes:
    """The upload's bytes, refusing more than the limit without reading it all."""
    data = upload.file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise HTTPException(413, f"{upload.filename or 'the upload'} is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB.")
    return data


def _prediction_out(upload_id: str, prediction: Prediction, top_k: int) -> PredictionOut:
    message = (
        f"{prediction.name} ({prediction.confidence:.0%})" if prediction.known
        else "No known landmark: the best guess is too uncertain."
    )
    return PredictionOut(
        upload_id=upload_id, known=prediction.known,
        landmark_id=prediction.landmark_id if prediction.known else NO_LANDMARK,
        name=prediction.name if prediction.known else "(no known landmark)", confidence=prediction.confidence,
        candidates=[CandidateOut(**c.__dict__) for c in prediction.candidates[:top_k]],
        neighbours=[NeighbourOut(**n.__dict__) for n in prediction.neighbours], message=message,
    )


def create_app(run_dir: Path, backend: str = "auto", recognizer: Recognizer | None = None) -> FastAPI:
    """The FastAPI app; the Recognizer is loaded once, when the app starts."""
    run_dir = Path(run_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = recognizer or Recognizer.load(run_dir, backend=backend)
        app.state.service = Service(loaded, FeedbackStore(run_dir / "feedback.sqlite"))
        yield

    app = FastAPI(title="landmarks", description="Recognise landmarks in photos; correct mistakes; enrol new landmarks.",
                  lifespan=lifespan)

    @app.middleware("http")
    async def refuse_huge_requests(request: Request, call_next):  # before the body is spooled anywhere
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_REQUEST_BYTES:
            return JSONResponse({"detail": f"The request is larger than {MAX_REQUEST_BYTES // (1024 * 1024)} MB."}, 413)
        return await call_next(request)

    def service(request: Request) -> Service:
        return request.app.state.service

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (resources.files("landmarks") / "serve" / "static" / "index.html").read_text()

    @app.get("/health", response_model=HealthOut)
    def health(request: Request) -> HealthOut:
        svc = service(request)
        index = svc.recognizer.index
        return HealthOut(status="ok", landmarks=len(svc.recognizer.names), references=len(index) if index else 0,
                         feedback=svc.store.feedback_count())

    @app.post("/predict", response_model=PredictionOut)
    def predict(request: Request, photo: UploadFile = File(...), top_k: int = Form(3)) -> PredictionOut:
        svc = service(request)
        data = read_limited(photo)
        pixels = svc.decode(data, photo.filename or "the upload")
        embeddings, logits = svc.recognizer.embed(pixels[None])
        prediction = svc.recognizer.score(embeddings, logits)[0]
        upload_id = hashlib.sha1(data).hexdigest()[:16]
        svc.store.record_upload(upload_id, prediction.landmark_id, prediction.confidence, embeddings[0], data)
        return _prediction_out(upload_id, prediction, max(1, min(top_k, 10)))

    @app.post("/feedback", response_model=FeedbackOut)
    def feedback(request: Request, body: FeedbackIn) -> FeedbackOut:
        svc = service(request)
        upload = svc.store.upload(body.upload_id)
        if upload is None:
            raise HTTPException(404, f"No upload with id {body.upload_id!r}; predict the photo first.")
        if body.landmark_id != NO_LANDMARK and body.landmark_id not in svc.recognizer.names:
            raise HTTPException(404, f"No landmark with id {body.landmark_id}.")
        predicted, embedding = upload
        with svc.lock:  # the store first, then memory: a restart replays exactly what memory holds
            image_id = f"upload-{body.upload_id}"
            add = body.add_to_index and body.landmark_id != NO_LANDMARK and bool(svc.new_references([image_id], body.landmark_id))
            feedback_id = svc.store.record_feedback(body.upload_id, predicted, body.landmark_id,
                                                    (image_id, embedding) if add else None)
            if add:
                svc.add_references(embedding[None], [image_id], body.landmark_id)
        return FeedbackOut(feedback_id=feedback_id, added_to_index=add)

    @app.get("/landmarks", response_model=list[LandmarkOut])
    def landmarks(request: Request) -> list[LandmarkOut]:
        svc = service(request)
        index = svc.recognizer.index
        return [
            LandmarkOut(landmark_id=i, name=n, references=index.count_of(i) if index else 0, enrolled=i in svc.enrolled)
            for i, n in sorted(svc.recognizer.names.items(), key=lambda item: item[1].lower())
        ]

    @app.post("/landmarks", response_model=EnrolOut)
    def enrol(request: Request, name: str = Form(..., min_length=1, max_length=200),
                    photos: list[UploadFile] = File(...)) -> EnrolOut:
        svc = service(request)
        name = name.strip()
        if not name:
            raise HTTPException(422, "The landmark needs a name.")
        if len(photos) > MAX_ENROL_PHOTOS:
            raise HTTPException(413, f"At most {MAX_ENROL_PHOTOS} photos per enrolment.")
        decoded, image_ids, skipped = [], [], []
        for upload in photos:
            data = read_limited(upload)
            try:
                decoded.append(svc.decode(data, upload.filename or "a photo"))
                image_ids.append(f"enrol-{hashlib.sha1(data).hexdigest()[:16]}")
            except HTTPException as error:
                skipped.append(f"{upload.filename}: {error.detail}")
        if not decoded:
            raise HTTPException(415, "None of the photos could be read: " + "; ".join(skipped))
        embeddings, _ = svc.recognizer.embed(np.stack(decoded))
        with svc.lock:
            existing = {n.lower(): i for i, n in svc.recognizer.names.items()}
            is_new = name.lower() not in existing
            landmark_id = svc.recognizer.next_landmark_id() if is_new else existing[name.lower()]
            fresh = svc.new_references(image_ids, landmark_id)
            ids = [image_ids[i] for i in fresh]
            svc.store.enrol(landmark_id, name if is_new else None, ids, embeddings[fresh])
            if is_new:
                svc.enrolled.add(landmark_id)
            if fresh:
                svc.add_references(embeddings[fresh], ids, landmark_id, svc.recognizer.names.get(landmark_id, name))
            elif is_new:
                svc.recognizer.names[landmark_id] = name
        return EnrolOut(landmark_id=landmark_id, name=svc.recognizer.names[landmark_id], photos_added=len(fresh),
                        skipped=skipped)

    return app


def serve(run_dir: Path, host: str = "127.0.0.1", port: int = 8000, backend: str = "auto") -> None:
    """Run the service with uvicorn until interrupted."""
    import uvicorn

    from landmarks.recognize.recognizer import Recognizer as _Recognizer

    recognizer = _Recognizer.load(run_dir, backend=backend)  # fail fast, before the server starts
    print(f"landmarks: serving {run_dir} on http://{host}:{port}/ (API docs at /docs)")
    uvicorn.run(create_app(run_dir, backend, recognizer), host=host, port=port, log_level="warning")
