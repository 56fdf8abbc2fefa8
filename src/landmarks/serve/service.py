"""The service's logic, apart from HTTP: who may do what, suggestions and their review, enrolment, undo, uploads.

Every change follows one order: checked against memory, written to the store in one transaction (with its audit
row) while ``changes`` is held, then applied to the in-memory index under the write side of ``index_lock``. A search
(and the lookup of what its positions mean) holds the read side, so it never runs while the index changes, and a
restart replays exactly what memory held.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass
from collections.abc import Iterable
from typing import Any

import numpy as np

from landmarks.data.catalog import NO_LANDMARK
from landmarks.data.images import decode_image_bytes, without_metadata
from landmarks.errors import ImageError
from landmarks.recognize.centres import reference_fingerprint
from landmarks.recognize.confidence import teaching_outlook
from landmarks.recognize.geo import Location, read_exif_location
from landmarks.recognize.recognizer import Prediction, Recognizer
from landmarks.serve.limits import RateLimiter, ReadWriteLock
from landmarks.serve.settings import ServiceError, Settings, SizeLimits
from landmarks.store import ReferenceChanges, Store, Suggestion, Token, Upload, image_id_of

log = logging.getLogger(__name__)

PHOTO_PREFIX = "photo"  # reference ids of photos sent to the service: photo-<sha1 of the bytes>


@dataclass(frozen=True)
class Actor:
    """Who sends a request: role admin, contributor or anonymous; ``client`` keys the rate limits."""

    role: str
    name: str
    token_id: int | None
    client: str

    @property
    def label(self) -> str:
        """How the audit trail and the review queue name this actor."""
        return f"{self.name} (token {self.token_id})" if self.token_id is not None else self.name


class Service:
    """The Recognizer, the store and the rules between them (see the module docstring for the order of a change)."""

    def __init__(self, recognizer: Recognizer, store: Store, settings: Settings | None = None):
        self.recognizer = recognizer
        self.store = store
        self.settings = settings or Settings()
        self.sizes = SizeLimits(self.settings)
        self.index_lock = ReadWriteLock()
        self.changes = threading.Lock()
        self.decoding = threading.BoundedSemaphore(self.settings.max_concurrent_decodes)
        self.predict_limit = RateLimiter(self.settings.predict_per_minute, 60.0, "predictions")
        self.suggest_limit = RateLimiter(self.settings.suggestions_per_hour, 3600.0, "suggestions")
        self.enrolled: dict[int, str] = store.reference_changes().enrolled
        self.added: set[tuple[str, int]] = {(r.image_id, r.landmark_id) for r in store.added_references()}
        stored = store.taught_centres()  # the store catches up with centres Recognizer.load imprinted again
        self._imprint([i for i in recognizer.centres if i not in stored or stored[i].fingerprint !=
                       reference_fingerprint(recognizer.reference_ids_of(i))])

    # -- reading -------------------------------------------------------------------------------------
    def decode(self, data: bytes, name: str) -> np.ndarray:
        """The photo at the model's size; at most ``max_concurrent_decodes`` photos are decoded at once."""
        with self.decoding:
            try:
                return decode_image_bytes(data, self.recognizer.input_size_px, name, self.settings.max_decode_pixels)
            except ImageError as error:
                raise ServiceError({"too_large": 413, "not_image": 415}.get(error.kind, 400), str(error)) from None

    def kept_photo(self, data: bytes, name: str) -> bytes:
        """What is stored of a photo: without its metadata, at most ``kept_photo_side_px`` on its longest side."""
        with self.decoding:
            try:
                return without_metadata(data, name, self.settings.kept_photo_side_px, self.settings.max_decode_pixels)
            except ImageError as error:
                raise ServiceError({"too_large": 413, "not_image": 415}.get(error.kind, 400), str(error)) from None

    def _purge(self, tx) -> int:
        settings = self.settings
        return tx.purge_uploads(settings.keep_uploads_hours * 3600, settings.max_uploads, int(settings.max_uploads_mb * 2**20))

    def predict(self, data: bytes, filename: str, actor: Actor, location: Location | None = None) -> tuple[str, Prediction]:
        """(upload id, prediction); the photo is kept as an upload when the settings say so ("" when not).
        ``location``: where the photo was taken (the geo prior), else its EXIF GPS when it has one."""
        if actor.role != "admin":
            self.predict_limit.take(actor.client)
        pixels = self.decode(data, filename)
        location = location or read_exif_location(data)
        embeddings, logits = self.recognizer.embed(pixels[None])
        with self.index_lock.read():
            prediction = self.recognizer.score(embeddings, logits, locations=[location])[0]
        if not self.settings.keeps_uploads:
            return "", prediction
        upload = Upload(secrets.token_hex(8), time.time(), actor.client, image_id_of(data, PHOTO_PREFIX),
                        prediction.landmark_id, prediction.name, prediction.confidence, embeddings[0],
                        self.kept_photo(data, filename))
        with self.store.transaction() as tx:
            tx.add_upload(upload)
            self._purge(tx)
        return upload.upload_id, prediction

    def purge_uploads(self, now: float | None = None) -> int:
        """Delete the uploads past their time, over the count or over the bytes (the service calls this every minute)."""
        with self.store.transaction(now) as tx:
            return self._purge(tx)

    def landmarks(self) -> list[tuple[int, str, int, bool]]:
        """(landmark id, name, reference photos, enrolled after training), by name."""
        with self.index_lock.read():
            index = self.recognizer.index
            rows = [(i, n, index.count_of(i) if index is not None else 0, i in self.enrolled)
                    for i, n in self.recognizer.names.items()]
        return sorted(rows, key=lambda row: row[1].lower())

    def landmark_entries(self) -> list[dict[str, Any]]:
        """``landmarks()`` with what /landmarks shows of each: its facts, class centres and teaching outlook."""
        calibration = self.recognizer.calibration
        entries = []
        for landmark_id, name, references, enrolled in self.landmarks():
            outlook = teaching_outlook(calibration, references, enrolled)
            entries.append({"landmark_id": landmark_id, "name": name, "references": references, "enrolled": enrolled,
                            "info": self.recognizer.info_of(landmark_id), "expected_coverage": outlook.expected_coverage,
                            "class_centres": len(self.recognizer.centres.get(landmark_id, ())),
                            "note": outlook.sentence() if enrolled else None})
        return entries

    def info_of(self, landmark_id: int) -> dict[str, Any]:
        """A landmark's facts (location, link) for an answer."""
        return self.recognizer.info_of(landmark_id)

    @property
    def min_confidence(self) -> float:
        return self.recognizer.config.min_confidence

    def health(self) -> dict[str, Any]:
        with self.index_lock.read():
            landmarks = len(self.recognizer.names)
            references = len(self.recognizer.index) if self.recognizer.index is not None else 0
        return {"landmarks": landmarks, "references": references, "feedback": self.store.feedback_count(),
                "pending_suggestions": self.store.pending_count(), "uploads_kept": self.store.upload_count()}

    def references_of(self, landmark_id: int) -> list[tuple[str, str]]:
        """(image id, source) of a landmark's reference photos: trained, or how they were added."""
        self._require_landmark(landmark_id)
        sources = {r.image_id: r.source for r in self.store.added_references(landmark_id)}
        with self.index_lock.read():
            index = self.recognizer.index
            ids = [] if index is None else [index.image_ids[p] for p in np.flatnonzero(index.landmark_ids == landmark_id)]
        return [(i, sources.get(i, "trained")) for i in ids]

    # -- who may do what -----------------------------------------------------------------------------
    def may_suggest(self, actor: Actor) -> None:
        """Refuse (401) an anonymous visitor unless anonymous suggestions are allowed."""
        if actor.role == "anonymous" and not self.settings.allow_anonymous_suggestions:
            raise ServiceError(401, "Suggesting needs a contributor or admin token (Authorization: Bearer <token>).",
                               {"WWW-Authenticate": "Bearer"})

    def _may_add_suggestions(self, actor: Actor, count: int) -> None:
        """The rate limit, then the pending cap: checked early (before any work) and again under ``changes``."""
        self.suggest_limit.take(actor.client)
        self._check_pending_cap(actor, count)

    def _check_pending_cap(self, actor: Actor, count: int) -> None:
        cap = self.settings.max_pending_per_client
        pending = self.store.pending_count(actor.client)
        if cap and pending + count > cap:
            raise ServiceError(429, f"You have {pending} photos waiting for review (at most {cap}); "
                                    "wait until an admin has looked at them.", {"Retry-After": "3600"})

    # -- changes -------------------------------------------------------------------------------------
    def _require_landmark(self, landmark_id: int) -> str:
        name = self.recognizer.names.get(landmark_id)
        if name is None:
            raise ServiceError(404, f"No landmark with id {landmark_id}.")
        return name

    def _positions(self, image_id: str) -> list[tuple[int, int]]:
        """(position, landmark id) of every reference of a photo."""
        index = self.recognizer.index
        if index is None:
            return []
        return [(p, int(index.landmark_ids[p])) for p, i in enumerate(index.image_ids) if i == image_id]

    def _assign(self, tx, image_id: str, embedding: np.ndarray, photo: bytes | None, landmark_id: int, source: str,
                actor: Actor) -> tuple[bool, list[int]]:
        """Store part of making a photo a reference of one landmark only (a photo moved from A to B is no longer
        a reference of A): (added, landmarks it was moved away from). Apply ``_assigned(...)`` with ``_apply``."""
        current = {l for _, l in self._positions(image_id)}
        moved_from = sorted(current - {landmark_id})
        for other in moved_from:
            tx.remove_reference(image_id, other, trained=(image_id, other) not in self.added, removed_by=actor.label)
        add = landmark_id != NO_LANDMARK and landmark_id not in current
        if add:
            tx.add_references([(image_id, embedding, photo)], landmark_id, source, actor.label)
        return add, moved_from

    def _assigned(self, image_id: str, embedding: np.ndarray, landmark_id: int, add: bool,
                  moved_from: list[int]) -> ReferenceChanges:
        """The reference changes ``_assign`` stored, to ``_apply``."""
        return ReferenceChanges(removed={(image_id, l) for l in moved_from},
                                added=[(image_id, landmark_id, embedding)] if add else [])

    def _apply(self, changes: ReferenceChanges) -> None:
        """Stored changes reach the running Recognizer the way they reach it when it loads: ``apply_changes``."""
        with self.index_lock.write():
            self.recognizer.apply_changes(changes)
            self.enrolled.update(changes.enrolled)
            for landmark_id in changes.deleted:
                self.enrolled.pop(landmark_id, None)
            self.added.difference_update(changes.removed)
            self.added.update((image_id, landmark_id) for image_id, landmark_id, _ in changes.added)
            for landmark_id in changes.deleted:
                self.recognizer.centres.pop(landmark_id, None)
        self._imprint([*changes.enrolled, *(l for _, l in changes.removed), *(l for _, l, _ in changes.added)])

    def _imprint(self, landmark_ids: Iterable[int]) -> None:
        """Imprint again the class centres of the taught landmarks among ``landmark_ids`` (their photos changed) and
        store them. They follow the references' own transaction: a crash in between leaves centres whose
        fingerprint no longer matches the photos, which ``Recognizer.load`` imprints again."""
        taught = sorted({int(i) for i in landmark_ids if self.recognizer.is_taught(int(i))})
        if not taught or not self.recognizer.imprints:
            return
        with self.index_lock.write():
            imprinted = {i: self.recognizer.imprint(i) for i in taught}
        with self.store.transaction() as tx:
            for landmark_id, centres in imprinted.items():
                if centres is None:
                    tx.drop_centres(landmark_id)
                else:
                    tx.set_centres(centres)

    def feedback(self, upload_id: str, landmark_id: int, add_to_index: bool, actor: Actor) -> dict[str, Any]:
        """An admin's correction applies at once; a contributor's (or an allowed visitor's) becomes a suggestion."""
        self.may_suggest(actor)
        upload = self.store.upload(upload_id)
        if upload is None:
            raise ServiceError(404, f"No upload with id {upload_id!r} (uploads are kept {self.settings.keep_uploads_hours:g} "
                                    "hours); predict the photo again.")
        if landmark_id != NO_LANDMARK:
            self._require_landmark(landmark_id)
        admin = actor.role == "admin"
        if not admin and add_to_index and landmark_id != NO_LANDMARK:
            self._may_add_suggestions(actor, 1)
        elif not admin:
            self.suggest_limit.take(actor.client)  # feedback that only records counts against the same limit
        with self.changes:
            if not admin and add_to_index and landmark_id != NO_LANDMARK:
                self._check_pending_cap(actor, 1)  # again, now that no other request of this client can add one
            with self.store.transaction() as tx:
                added, moved_from, suggestion_id = False, [], None
                if admin and add_to_index:
                    added, moved_from = self._assign(tx, upload.image_id, upload.embedding, upload.photo, landmark_id,
                                                     "feedback", actor)
                    outcome = "applied" if added or moved_from else "recorded"
                elif add_to_index and landmark_id != NO_LANDMARK:
                    suggestion_id = tx.add_suggestion(
                        upload.image_id, upload.photo, upload.embedding,
                        (upload.predicted_landmark_id, upload.predicted_name, upload.confidence),
                        landmark_id, None, actor.label, actor.client)
                    outcome = "pending"
                else:
                    outcome = "recorded"
                feedback_id = tx.add_feedback(upload.image_id, upload.predicted_landmark_id, landmark_id, outcome, actor.label)
                tx.audit(actor.label, "feedback", upload_id=upload_id, image_id=upload.image_id, landmark_id=landmark_id,
                         predicted_landmark_id=upload.predicted_landmark_id, outcome=outcome, suggestion_id=suggestion_id,
                         moved_from=moved_from)
            self._apply(self._assigned(upload.image_id, upload.embedding, landmark_id, added, moved_from))
        return {"feedback_id": feedback_id, "added_to_index": added, "status": outcome, "suggestion_id": suggestion_id}

    def check_photo_count(self, count: int) -> None:
        if count > self.settings.max_enrol_photos:
            raise ServiceError(413, f"At most {self.settings.max_enrol_photos} photos per enrolment.")

    def enrol(self, name: str, photos: list[tuple[str, bytes]], actor: Actor) -> dict[str, Any]:
        """A landmark (new, or known by this name) from photos: at once for an admin, as suggestions otherwise."""
        self.may_suggest(actor)
        name = name.strip()
        if not name:
            raise ServiceError(422, "The landmark needs a name.")
        self.check_photo_count(len(photos))
        decoded, image_ids, kept_photos, skipped = [], [], [], []
        for filename, data in photos:
            try:
                decoded.append(self.decode(data, filename))
            except ServiceError as error:
                skipped.append(f"{filename}: {error.detail}")
                continue
            image_ids.append(image_id_of(data, PHOTO_PREFIX))
            kept_photos.append(self.kept_photo(data, filename))
        if not decoded:
            raise ServiceError(415, "None of the photos could be read: " + "; ".join(skipped))
        admin = actor.role == "admin"
        if not admin:
            self._may_add_suggestions(actor, len(decoded))
        embeddings, logits = self.recognizer.embed(np.stack(decoded))
        first = {}  # the same photo twice in one request counts once
        for position, image_id in enumerate(image_ids):
            first.setdefault(image_id, position)
        with self.changes:
            existing = {n.lower(): i for i, n in self.recognizer.names.items()}
            known_id = existing.get(name.lower())
            if not admin:
                self._check_pending_cap(actor, len(first))  # again, now that no other request can add one
                with self.index_lock.read():  # what the model says of each photo, for the reviewer
                    said = [(p.landmark_id, p.name, p.confidence) for p in self.recognizer.score(embeddings, logits)]
                with self.store.transaction() as tx:
                    ids = [tx.add_suggestion(image_ids[p], kept_photos[p], embeddings[p], said[p], known_id,
                                             None if known_id is not None else name, actor.label, actor.client)
                           for p in first.values()]
                    tx.audit(actor.label, "suggest_landmark", name=name, landmark_id=known_id, suggestion_ids=ids)
                return {"landmark_id": known_id, "name": name, "photos_added": 0, "skipped": skipped, "status": "pending",
                        "suggestion_ids": ids}
            landmark_id = known_id if known_id is not None else self._next_landmark_id()
            with self.store.transaction() as tx:
                if known_id is None:
                    tx.add_landmark(landmark_id, name, actor.label)
                applied = [(p, *self._assign(tx, image_ids[p], embeddings[p], kept_photos[p], landmark_id, "enrol", actor))
                           for p in first.values()]
                tx.audit(actor.label, "enrol", landmark_id=landmark_id, name=name, new=known_id is None,
                         image_ids=[image_ids[p] for p, added, _ in applied if added])
            changes = ReferenceChanges(enrolled={landmark_id: name} if known_id is None else {})
            for p, added, moved_from in applied:
                assigned = self._assigned(image_ids[p], embeddings[p], landmark_id, added, moved_from)
                changes.removed |= assigned.removed
                changes.added += assigned.added
            self._apply(changes)
        return {"landmark_id": landmark_id, "name": self.recognizer.names[landmark_id],
                "photos_added": sum(added for _, added, _ in applied), "skipped": skipped, "status": "applied",
                "suggestion_ids": []}

    def _next_landmark_id(self) -> int:
        return max(self.recognizer.next_landmark_id(), self.store.max_landmark_id() + 1)

    def suggestion(self, suggestion_id: int) -> Suggestion:
        found = self.store.suggestion(suggestion_id)
        if found is None:
            raise ServiceError(404, f"No suggestion with id {suggestion_id}.")
        return found

    def approve(self, suggestion_id: int, actor: Actor) -> dict[str, Any]:
        """The suggested photo joins the references at once (a suggested new landmark is created first)."""
        with self.changes:
            suggestion = self.suggestion(suggestion_id)
            if suggestion.status != "pending":
                raise ServiceError(409, f"Suggestion {suggestion_id} was already {suggestion.status}.")
            if suggestion.landmark_id is not None:
                if suggestion.landmark_id not in self.recognizer.names:
                    raise ServiceError(409, f"Landmark {suggestion.landmark_id} no longer exists; reject the suggestion.")
                landmark_id, new_name = suggestion.landmark_id, None
            else:
                existing = {n.lower(): i for i, n in self.recognizer.names.items()}
                landmark_id = existing.get(str(suggestion.landmark_name).lower())
                new_name = suggestion.landmark_name if landmark_id is None else None
                if landmark_id is None:
                    landmark_id = self._next_landmark_id()
            with self.store.transaction() as tx:
                if new_name is not None:
                    tx.add_landmark(landmark_id, new_name, actor.label)
                photo = tx.suggestion_photo(suggestion_id)
                added, moved_from = self._assign(tx, suggestion.image_id, suggestion.embedding, photo, landmark_id,
                                                 "suggestion", actor)
                tx.decide_suggestion(suggestion_id, "approved", actor.label, landmark_id)
                tx.audit(actor.label, "approve", suggestion_id=suggestion_id, landmark_id=landmark_id, new_landmark=new_name,
                         image_id=suggestion.image_id, suggested_by=suggestion.suggested_by, moved_from=moved_from)
            changes = self._assigned(suggestion.image_id, suggestion.embedding, landmark_id, added, moved_from)
            if new_name is not None:
                changes.enrolled[landmark_id] = new_name
            self._apply(changes)
        return {"suggestion_id": suggestion_id, "status": "approved", "landmark_id": landmark_id,
                "name": self.recognizer.names[landmark_id]}

    def reject(self, suggestion_id: int, actor: Actor) -> dict[str, Any]:
        """The suggestion is closed and its photo deleted; nothing reaches the references."""
        with self.changes:
            suggestion = self.suggestion(suggestion_id)
            if suggestion.status != "pending":
                raise ServiceError(409, f"Suggestion {suggestion_id} was already {suggestion.status}.")
            with self.store.transaction() as tx:
                tx.decide_suggestion(suggestion_id, "rejected", actor.label, None)
                tx.audit(actor.label, "reject", suggestion_id=suggestion_id, image_id=suggestion.image_id,
                         suggested_by=suggestion.suggested_by, landmark_id=suggestion.landmark_id,
                         landmark_name=suggestion.landmark_name)
        return {"suggestion_id": suggestion_id, "status": "rejected", "landmark_id": None, "name": None}

    def delete_landmark(self, landmark_id: int, actor: Actor) -> dict[str, Any]:
        """An enrolled landmark and all its reference photos; unknown at once and after a restart."""
        with self.changes:
            name = self._require_landmark(landmark_id)
            if landmark_id not in self.enrolled:
                raise ServiceError(409, f"{name} ({landmark_id}) was trained into the model and cannot be deleted here; "
                                        "remove its photos with DELETE /references/{image_id}, or retrain without it.")
            with self.index_lock.read():
                index = self.recognizer.index
                positions = np.flatnonzero(index.landmark_ids == landmark_id) if index is not None else np.zeros(0, np.int64)
                pairs = [(index.image_ids[p], landmark_id) for p in positions]
            with self.store.transaction() as tx:
                for image_id, _ in pairs:  # trained photos moved to it are remembered as removed from it
                    if (image_id, landmark_id) not in self.added:
                        tx.remove_reference(image_id, landmark_id, trained=True, removed_by=actor.label)
                tx.delete_landmark(landmark_id, name, actor.label)
                tx.audit(actor.label, "delete_landmark", landmark_id=landmark_id, name=name, references=len(pairs))
            self._apply(ReferenceChanges(deleted={landmark_id: name}, removed=set(pairs)))
        return {"landmark_id": landmark_id, "name": name, "references_removed": len(pairs)}

    def delete_reference(self, image_id: str, landmark_id: int | None, actor: Actor) -> dict[str, Any]:
        """One photo out of the references (of every landmark, or of ``landmark_id``), trained or added."""
        with self.changes:
            with self.index_lock.read():
                found = [(p, l) for p, l in self._positions(image_id) if landmark_id is None or l == landmark_id]
            if not found:
                raise ServiceError(404, f"No reference photo {image_id!r}" + (f" of landmark {landmark_id}." if landmark_id is not None else "."))
            landmarks = sorted({l for _, l in found})
            with self.store.transaction() as tx:
                for l in landmarks:
                    tx.remove_reference(image_id, l, trained=(image_id, l) not in self.added, removed_by=actor.label)
                tx.audit(actor.label, "delete_reference", image_id=image_id, landmark_ids=landmarks)
            self._apply(ReferenceChanges(removed={(image_id, l) for l in landmarks}))
        return {"image_id": image_id, "landmark_ids": landmarks}

    def move_reference(self, image_id: str, landmark_id: int, actor: Actor) -> dict[str, Any]:
        """A reference photo (trained or added) moved to another landmark: no longer a reference of the old one."""
        with self.changes:
            self._require_landmark(landmark_id)
            with self.index_lock.read():
                found = self._positions(image_id)
                if not found:
                    raise ServiceError(404, f"No reference photo {image_id!r}.")
                embedding = self.recognizer.index.vectors([found[0][0]])[0]
            source_landmark = found[0][1]
            photo = self.store.reference_photo(image_id, source_landmark)
            with self.store.transaction() as tx:
                added, moved_from = self._assign(tx, image_id, embedding, photo, landmark_id, "move", actor)
                tx.audit(actor.label, "move_reference", image_id=image_id, landmark_id=landmark_id, moved_from=moved_from)
            self._apply(self._assigned(image_id, embedding, landmark_id, added, moved_from))
        return {"image_id": image_id, "landmark_ids": [landmark_id], "moved_from": moved_from}

    # -- tokens, review queue and audit (admins) ------------------------------------------------------
    def token_for(self, secret: str) -> Token | None:
        """The active token with this secret (None when unknown or revoked)."""
        return self.store.token_for(secret)

    def tokens(self) -> list[Token]:
        return self.store.tokens()

    def token(self, token_id: int) -> Token:
        found = next((t for t in self.store.tokens() if t.token_id == token_id), None)
        if found is None:
            raise ServiceError(404, f"No token with id {token_id}.")
        return found

    def audit(self, limit: int) -> list[dict[str, Any]]:
        """Every change: who, what, when (newest first)."""
        return self.store.audit(limit)

    def suggestions(self, status: str | None, limit: int) -> list[tuple[Suggestion, str]]:
        """Suggestions in this state (None: all), each with the suggested landmark's name."""
        return [(s, s.landmark_name or self.recognizer.names.get(s.landmark_id, str(s.landmark_id)))
                for s in self.store.suggestions(status, limit)]

    def suggestion_photo(self, suggestion_id: int) -> bytes:
        data = self.store.suggestion_photo(suggestion_id)
        if data is None:
            raise ServiceError(404, f"Suggestion {suggestion_id} has no photo (unknown, or rejected).")
        return data

    def create_token(self, role: str, name: str, actor: Actor) -> tuple[int, str]:
        with self.store.transaction() as tx:
            token_id, secret = tx.add_token(role, name)
            tx.audit(actor.label, "create_token", token_id=token_id, role=role, name=name)
        return token_id, secret

    def revoke_token(self, token_id: int, actor: Actor) -> None:
        with self.store.transaction() as tx:
            if not tx.revoke_token(token_id):
                raise ServiceError(404, f"No active token with id {token_id}.")
            tx.audit(actor.label, "revoke_token", token_id=token_id)
