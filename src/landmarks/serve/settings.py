"""The service's settings (the `landmarks serve` flags) and the one place that limits the size of what is sent."""

from __future__ import annotations

from fastapi import UploadFile
from pydantic import BaseModel, Field

MB = 1024 * 1024
JSON_BODY_BYTES = 1 * MB  # the body of a JSON route (POST /feedback, /tokens, PUT /references/{id})


class ServiceError(Exception):
    """A request the service refuses: an HTTP status, one sentence, and headers (e.g. Retry-After)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


class Settings(BaseModel):
    """How open the service is, what it keeps and for how long, and its abuse limits (0 = no limit)."""

    open: bool = Field(False, description="anyone may change the references, as before tokens existed (a laptop demo)")
    allow_anonymous_suggestions: bool = Field(False, description="visitors without a token may suggest (for review)")
    keep_uploads_hours: float = Field(24.0, ge=0, description="a predicted photo is kept this long for feedback; 0: not kept")
    max_uploads: int = Field(1000, ge=0, description="at most this many predicted photos are kept (oldest dropped first)")
    predict_per_minute: float = Field(60.0, ge=0, description="POST /predict per client and minute (0: unlimited)")
    suggestions_per_hour: float = Field(30.0, ge=0, description="suggesting requests per client and hour (0: unlimited)")
    max_pending_per_client: int = Field(50, ge=0, description="photos a client may have waiting for review (0: unlimited)")
    max_upload_bytes: int = Field(10 * MB, gt=0, description="one photo")
    max_request_bytes: int = Field(64 * MB, gt=0, description="a whole request (photos), counted as it streams in")
    max_decode_pixels: int = Field(25_000_000, gt=0, description="the pixels one photo may be decoded at (a JPEG is "
                                   "decoded at 1/2-1/8 scale first, so any JPEG under PIL's 89-MP bomb limit fits)")
    max_concurrent_decodes: int = Field(4, gt=0, description="photos decoded at once; the others wait")
    kept_photo_side_px: int = Field(2048, gt=0, description="a kept photo is scaled down to this longest side")
    max_uploads_mb: float = Field(500.0, ge=0, description="kept predicted photos in all, in MB (oldest dropped first)")
    max_enrol_photos: int = Field(50, gt=0, description="photos in one POST /landmarks")
    proxy_headers: bool = Field(False, description="trust X-Forwarded-For/-Proto from forwarded_allow_ips (behind a proxy)")
    forwarded_allow_ips: str = Field("127.0.0.1", description="with proxy_headers: the proxies' addresses (comma-separated, or *)")
    purge_every_seconds: float = Field(60.0, gt=0, description="how often expired uploads are deleted")

    @property
    def keeps_uploads(self) -> bool:
        return self.keep_uploads_hours > 0 and self.max_uploads > 0

    def retention_note(self) -> str:
        """What is kept and for how long, in words (the page and /health show it)."""
        if self.keeps_uploads:
            uploads = (f"A photo you check is kept for at most {self.keep_uploads_hours:g} hours (and only the latest "
                       f"{self.max_uploads:,} photos), so that you can correct the answer; then it is deleted.")
        else:
            uploads = "A photo you check is not kept."
        return (f"{uploads} A photo you send as a correction or suggestion is kept with it until an admin rejects it "
                "(then the photo is deleted) or, once approved, for as long as it is a reference photo. Kept photos "
                "are stored without their metadata (no EXIF, no GPS position).")


class SizeLimits:
    """The size of each photo (while reading it); the whole request is limited by ``landmarks.serve.middleware.BodyLimit``."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def read(self, upload: UploadFile, name: str | None = None) -> bytes:
        """The photo's bytes; refuses an empty one, and one over the limit without reading past it."""
        limit = self.settings.max_upload_bytes
        name = name or upload.filename or "the upload"
        data = upload.file.read(limit + 1)
        if len(data) > limit:
            raise ServiceError(413, f"{name} is larger than {limit / MB:g} MB.")
        if not data:
            raise ServiceError(400, f"{name} is empty.")
        return data
