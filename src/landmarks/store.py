"""What the service knows beside the run folder: hashed tokens, uploads, suggestions, approved references, undo, audit.

One SQLite file, ``RUN/store.sqlite`` (WAL, ``synchronous=FULL``): every change is one transaction, committed before
the request that made it answers, so a crash or ``kill -9`` loses nothing that was answered and leaves nothing
half-written. ``Recognizer.load`` reads ``reference_changes()`` from it, so ``predict``, ``submit``, ``evaluate`` and
the service see the same references: the trained ones, minus the removed ones, plus the approved ones.

A reference is identified by (image_id, landmark_id): the same photo given twice to one landmark is one reference.
Tokens are stored as the SHA-256 of a random secret; the secret is shown once, when it is created. A run folder
served before this store existed (``feedback.sqlite``) is migrated into it on first open.

Kept for how long: uploads (the photo of a ``/predict``) for ``keep_hours`` and at most ``max_uploads`` of them
(``purge_uploads``); the photo of a suggestion or an approved reference until it is rejected or removed (rejected
suggestions drop their photo at once); tokens, enrolled and deleted landmarks and the audit trail for ever.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, get_args

import numpy as np

from landmarks.errors import LandmarksError

log = logging.getLogger(__name__)

STORE_FILE = "store.sqlite"
LEGACY_FILE = "feedback.sqlite"  # the store before roles and review (uploads, feedback, landmarks, added_references)
Role = Literal["admin", "contributor"]
SuggestionState = Literal["pending", "approved", "rejected"]
ROLES: tuple[str, ...] = get_args(Role)
SUGGESTION_STATES: tuple[str, ...] = get_args(SuggestionState)
TOKEN_PREFIX = "lmk_"
SCHEMA_VERSION = 2  # 2: taught_centres

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    token_id INTEGER PRIMARY KEY AUTOINCREMENT, token_hash TEXT NOT NULL UNIQUE, role TEXT NOT NULL,
    name TEXT NOT NULL, created REAL NOT NULL, revoked REAL
);
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY, created REAL NOT NULL, client TEXT, image_id TEXT NOT NULL,
    predicted_landmark_id INTEGER, predicted_name TEXT, confidence REAL, embedding BLOB NOT NULL, photo BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS uploads_by_age ON uploads(created);
CREATE TABLE IF NOT EXISTS suggestions (
    suggestion_id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, status TEXT NOT NULL,
    image_id TEXT NOT NULL, photo BLOB, embedding BLOB NOT NULL,
    predicted_landmark_id INTEGER, predicted_name TEXT, confidence REAL,
    landmark_id INTEGER, landmark_name TEXT, suggested_by TEXT NOT NULL, client TEXT NOT NULL,
    decided REAL, decided_by TEXT, result_landmark_id INTEGER
);
CREATE INDEX IF NOT EXISTS suggestions_by_status ON suggestions(status, client);
CREATE TABLE IF NOT EXISTS added_references (
    image_id TEXT NOT NULL, landmark_id INTEGER NOT NULL, embedding BLOB NOT NULL, photo BLOB, source TEXT NOT NULL,
    created REAL NOT NULL, created_by TEXT NOT NULL, PRIMARY KEY (image_id, landmark_id)
);
CREATE TABLE IF NOT EXISTS removed_references (
    image_id TEXT NOT NULL, landmark_id INTEGER NOT NULL, removed REAL NOT NULL, removed_by TEXT NOT NULL,
    PRIMARY KEY (image_id, landmark_id)
);
CREATE TABLE IF NOT EXISTS enrolled_landmarks (
    landmark_id INTEGER PRIMARY KEY, name TEXT NOT NULL, created REAL NOT NULL, created_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deleted_landmarks (
    landmark_id INTEGER PRIMARY KEY, name TEXT NOT NULL, deleted REAL NOT NULL, deleted_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS taught_centres (
    landmark_id INTEGER PRIMARY KEY, centres BLOB NOT NULL, dims INTEGER NOT NULL, photos INTEGER NOT NULL,
    fingerprint TEXT NOT NULL, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    feedback_id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, image_id TEXT NOT NULL,
    predicted_landmark_id INTEGER, landmark_id INTEGER NOT NULL, outcome TEXT NOT NULL, given_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    audit_id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    details TEXT NOT NULL
);
"""


class StoreError(LandmarksError):
    """The store is unreadable, or a token/suggestion asked for does not exist."""


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def image_id_of(photo: bytes, prefix: str) -> str:
    """A photo's reference id from its content, so that the same photo given twice is one reference."""
    return f"{prefix}-{hashlib.sha1(photo).hexdigest()[:16]}"


def _vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32).copy()


def _blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


@dataclass
class Token:
    token_id: int
    role: str
    name: str
    created: float
    revoked: float | None


@dataclass
class Upload:
    upload_id: str
    created: float
    client: str
    image_id: str
    predicted_landmark_id: int
    predicted_name: str
    confidence: float
    embedding: np.ndarray
    photo: bytes


@dataclass
class Suggestion:
    suggestion_id: int
    created: float
    status: str
    image_id: str
    embedding: np.ndarray
    predicted_landmark_id: int | None
    predicted_name: str | None
    confidence: float | None
    landmark_id: int | None  # a correction: the landmark the photo shows
    landmark_name: str | None  # a new landmark: its name
    suggested_by: str
    client: str
    decided: float | None = None
    decided_by: str | None = None
    result_landmark_id: int | None = None


@dataclass
class AddedReference:
    image_id: str
    landmark_id: int
    embedding: np.ndarray
    source: str
    created: float
    created_by: str
    has_photo: bool


@dataclass
class TaughtCentres:
    """A taught landmark's imprinted class centres (``landmarks.recognize.centres``): (k, dims) unit rows, imprinted
    from ``photos`` reference photos whose ids hash to ``fingerprint``."""

    landmark_id: int
    centres: np.ndarray
    photos: int
    fingerprint: str


@dataclass
class ReferenceChanges:
    """What the store changes in a run folder's references, in the order to apply: remove, then add."""

    enrolled: dict[int, str] = field(default_factory=dict)  # landmarks added after training (not deleted)
    deleted: dict[int, str] = field(default_factory=dict)  # enrolled landmarks deleted since
    removed: set[tuple[str, int]] = field(default_factory=set)  # trained references removed (or moved away)
    added: list[tuple[str, int, np.ndarray]] = field(default_factory=list)  # approved references, oldest first
    centres: dict[int, TaughtCentres] = field(default_factory=dict)  # taught landmarks' imprinted class centres

    def __bool__(self) -> bool:
        return bool(self.enrolled or self.deleted or self.removed or self.added)


SUGGESTION_COLUMNS = ("suggestion_id, created, status, image_id, embedding, predicted_landmark_id, predicted_name, "
                      "confidence, landmark_id, landmark_name, suggested_by, client, decided, decided_by, result_landmark_id")


def _suggestion(row: tuple) -> Suggestion:
    values = list(row)
    values[4] = _vector(values[4])
    return Suggestion(*values)


class Transaction:
    """The writes of one request; committed together when the ``Store.transaction()`` block ends."""

    def __init__(self, db: sqlite3.Connection, now: float):
        self.db = db
        self.now = now

    def audit(self, actor: str, action: str, **details: Any) -> None:
        self.db.execute("INSERT INTO audit (at, actor, action, details) VALUES (?, ?, ?, ?)",
                        (self.now, actor, action, json.dumps(details, sort_keys=True, default=str)))

    def add_token(self, role: str, name: str) -> tuple[int, str]:
        """(token id, secret): the secret is returned here only; the store keeps its hash."""
        if role not in ROLES:
            raise StoreError(f"Role {role!r} is not one of {', '.join(ROLES)}.")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        cursor = self.db.execute("INSERT INTO tokens (token_hash, role, name, created) VALUES (?, ?, ?, ?)",
                                 (hash_token(secret), role, name, self.now))
        return int(cursor.lastrowid), secret

    def revoke_token(self, token_id: int) -> bool:
        """True when a token that was active is now revoked."""
        cursor = self.db.execute("UPDATE tokens SET revoked = ? WHERE token_id = ? AND revoked IS NULL", (self.now, token_id))
        return cursor.rowcount > 0

    def add_upload(self, upload: Upload) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (upload.upload_id, upload.created, upload.client, upload.image_id, upload.predicted_landmark_id,
             upload.predicted_name, upload.confidence, _blob(upload.embedding), upload.photo),
        )

    def purge_uploads(self, keep_seconds: float, max_uploads: int, max_bytes: int | None = None) -> int:
        """Delete uploads older than ``keep_seconds``, all but the newest ``max_uploads``, and the oldest ones whose
        photos take the newest past ``max_bytes`` in all; returns how many."""
        removed = self.db.execute("DELETE FROM uploads WHERE created < ?", (self.now - keep_seconds,)).rowcount
        removed += self.db.execute(
            "DELETE FROM uploads WHERE upload_id NOT IN (SELECT upload_id FROM uploads ORDER BY created DESC, rowid DESC LIMIT ?)",
            (max(0, int(max_uploads)),),
        ).rowcount
        if max_bytes is not None:
            removed += self.db.execute(
                "DELETE FROM uploads WHERE upload_id IN (SELECT upload_id FROM (SELECT upload_id, SUM(LENGTH(photo)) "
                "OVER (ORDER BY created DESC, rowid DESC) AS total FROM uploads) WHERE total > ?)", (int(max_bytes),),
            ).rowcount
        return int(removed)

    def add_suggestion(self, image_id: str, photo: bytes | None, embedding: np.ndarray, predicted: tuple[int, str, float] | None,
                       landmark_id: int | None, landmark_name: str | None, suggested_by: str, client: str) -> int:
        predicted_id, predicted_name, confidence = predicted if predicted else (None, None, None)
        cursor = self.db.execute(
            "INSERT INTO suggestions (created, status, image_id, photo, embedding, predicted_landmark_id, predicted_name, "
            "confidence, landmark_id, landmark_name, suggested_by, client) VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.now, image_id, photo, _blob(embedding), predicted_id, predicted_name, confidence, landmark_id,
             landmark_name, suggested_by, client),
        )
        return int(cursor.lastrowid)

    def decide_suggestion(self, suggestion_id: int, status: str, decided_by: str, result_landmark_id: int | None) -> None:
        """Approve or reject a pending suggestion; a rejected one drops its photo."""
        assert status in SUGGESTION_STATES[1:]
        photo = ", photo = NULL" if status == "rejected" else ""
        self.db.execute(
            f"UPDATE suggestions SET status = ?, decided = ?, decided_by = ?, result_landmark_id = ?{photo} "
            "WHERE suggestion_id = ? AND status = 'pending'",
            (status, self.now, decided_by, result_landmark_id, suggestion_id),
        )

    def suggestion_photo(self, suggestion_id: int) -> bytes | None:
        row = self.db.execute("SELECT photo FROM suggestions WHERE suggestion_id = ?", (suggestion_id,)).fetchone()
        return None if row is None else row[0]

    def add_landmark(self, landmark_id: int, name: str, created_by: str) -> None:
        self.db.execute("INSERT INTO enrolled_landmarks VALUES (?, ?, ?, ?)", (landmark_id, name, self.now, created_by))

    def add_references(self, references: list[tuple[str, np.ndarray, bytes | None]], landmark_id: int, source: str,
                       created_by: str) -> None:
        """(image id, embedding, photo) references of a landmark; one already there is left as it is.

        A trained reference removed earlier and given again is simply no longer removed."""
        for image_id, embedding, photo in references:
            restored = self.db.execute("DELETE FROM removed_references WHERE image_id = ? AND landmark_id = ?",
                                       (image_id, landmark_id)).rowcount
            if restored:
                continue
            self.db.execute("INSERT OR IGNORE INTO added_references VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (image_id, landmark_id, _blob(embedding), photo, source, self.now, created_by))

    def remove_reference(self, image_id: str, landmark_id: int, trained: bool, removed_by: str) -> None:
        """An added reference is deleted (with its photo); a trained one is remembered as removed."""
        self.db.execute("DELETE FROM added_references WHERE image_id = ? AND landmark_id = ?", (image_id, landmark_id))
        if trained:
            self.db.execute("INSERT OR REPLACE INTO removed_references VALUES (?, ?, ?, ?)",
                            (image_id, landmark_id, self.now, removed_by))

    def set_centres(self, centres: TaughtCentres) -> None:
        """A taught landmark's class centres, replacing what it had."""
        rows = np.asarray(centres.centres, dtype=np.float32)
        self.db.execute("INSERT OR REPLACE INTO taught_centres VALUES (?, ?, ?, ?, ?, ?)",
                        (int(centres.landmark_id), _blob(rows), int(rows.shape[1]), int(centres.photos),
                         centres.fingerprint, self.now))

    def drop_centres(self, landmark_id: int) -> None:
        self.db.execute("DELETE FROM taught_centres WHERE landmark_id = ?", (int(landmark_id),))

    def delete_landmark(self, landmark_id: int, name: str, deleted_by: str) -> None:
        """An enrolled landmark, every reference added to it and its class centres."""
        self.db.execute("DELETE FROM enrolled_landmarks WHERE landmark_id = ?", (landmark_id,))
        self.db.execute("DELETE FROM taught_centres WHERE landmark_id = ?", (landmark_id,))
        self.db.execute("DELETE FROM added_references WHERE landmark_id = ?", (landmark_id,))
        self.db.execute("INSERT OR REPLACE INTO deleted_landmarks VALUES (?, ?, ?, ?)", (landmark_id, name, self.now, deleted_by))

    def add_feedback(self, image_id: str, predicted_landmark_id: int | None, landmark_id: int, outcome: str,
                     given_by: str) -> int:
        cursor = self.db.execute(
            "INSERT INTO feedback (created, image_id, predicted_landmark_id, landmark_id, outcome, given_by) "
            "VALUES (?, ?, ?, ?, ?, ?)", (self.now, image_id, predicted_landmark_id, landmark_id, outcome, given_by))
        return int(cursor.lastrowid)


class Store:
    """The SQLite store of one run folder. Writes go through ``transaction()``, one per request."""

    def __init__(self, path: Path, create: bool = True):
        self.path = Path(path)
        self.write_lock = threading.Lock()  # one writer at a time (SQLite allows one; this avoids busy waits)
        if not create:
            return
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            with db:
                db.executescript(SCHEMA)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @classmethod
    def open(cls, run_dir: Path) -> "Store":
        """The store of a run folder, created when missing and migrated from ``feedback.sqlite`` once."""
        run_dir = Path(run_dir)
        path = run_dir / STORE_FILE
        legacy = run_dir / LEGACY_FILE
        fresh = not path.exists()
        store = cls(path)
        if fresh and legacy.exists():
            store._migrate(legacy)
        return store

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level="DEFERRED")
        except sqlite3.Error as error:
            raise StoreError(f"Cannot open {self.path} ({error}).") from None
        try:
            db.execute("PRAGMA synchronous=FULL")  # each commit is on disk before the request answers, even on power loss
            yield db
        finally:
            db.close()

    @contextmanager
    def transaction(self, now: float | None = None) -> Iterator[Transaction]:
        """One transaction: committed when the block ends, rolled back (nothing written) when it raises.

        ``now`` (seconds since the epoch) is the time its rows record and expiry is measured from (default: now)."""
        with self.write_lock, self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(db, time.time() if now is None else now)
            except BaseException:
                db.rollback()
                raise
            db.commit()

    def _read(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        with self._connect() as db:
            return db.execute(sql, parameters).fetchall()

    # -- migration -----------------------------------------------------------------------------------
    def _migrate(self, legacy: Path) -> None:
        """Copy a ``feedback.sqlite`` (enrolled landmarks, added references, feedback) into this store in one
        transaction, then delete it: it also held every photo ever predicted, which this store does not keep."""
        with self.write_lock, self._connect() as db:
            db.execute("ATTACH DATABASE ? AS legacy", (str(legacy),))  # outside the transaction, as SQLite wants
            db.execute("BEGIN IMMEDIATE")
            tx = Transaction(db, time.time())
            tables = {r[0] for r in tx.db.execute("SELECT name FROM legacy.sqlite_master WHERE type = 'table'")}
            if "landmarks" in tables:
                tx.db.execute("INSERT OR IGNORE INTO enrolled_landmarks SELECT landmark_id, name, COALESCE(created, 0), "
                              "'migrated' FROM legacy.landmarks")
            if "added_references" in tables:
                photo = ("(SELECT u.image FROM legacy.uploads u WHERE 'upload-' || u.upload_id = r.image_id)"
                         if "uploads" in tables else "NULL")
                tx.db.execute(f"INSERT OR IGNORE INTO added_references SELECT r.image_id, r.landmark_id, r.embedding, {photo}, "
                              "'migrated', COALESCE(r.created, 0), 'migrated' FROM legacy.added_references r")
            if "feedback" in tables:
                tx.db.execute("INSERT INTO feedback (created, image_id, predicted_landmark_id, landmark_id, outcome, given_by) "
                              "SELECT created, 'upload-' || upload_id, predicted_landmark_id, landmark_id, "
                              "CASE WHEN added_to_index THEN 'applied' ELSE 'recorded' END, 'migrated' FROM legacy.feedback")
            counts = {t: tx.db.execute(f"SELECT COUNT(*) FROM legacy.{t}").fetchone()[0] for t in sorted(tables)}
            tx.audit("service", "migrate", source=str(legacy), rows=counts)
            db.commit()
            db.execute("DETACH DATABASE legacy")
            db.execute("PRAGMA wal_checkpoint(FULL)")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{legacy}{suffix}").unlink(missing_ok=True)
        log.info("migrated %s into %s (%s) and deleted it", legacy, self.path, counts)

    # -- tokens --------------------------------------------------------------------------------------
    def token_for(self, secret: str) -> Token | None:
        """The active token whose secret this is, or None (unknown or revoked)."""
        rows = self._read("SELECT token_id, role, name, created, revoked FROM tokens WHERE token_hash = ?",
                          (hash_token(secret),))
        if not rows or rows[0][4] is not None:
            return None
        return Token(*rows[0])

    def tokens(self) -> list[Token]:
        return [Token(*r) for r in self._read("SELECT token_id, role, name, created, revoked FROM tokens ORDER BY token_id")]

    def has_active_admin(self) -> bool:
        return bool(self._read("SELECT 1 FROM tokens WHERE role = 'admin' AND revoked IS NULL LIMIT 1"))

    # -- uploads and suggestions ---------------------------------------------------------------------
    def upload(self, upload_id: str) -> Upload | None:
        rows = self._read("SELECT * FROM uploads WHERE upload_id = ?", (upload_id,))
        if not rows:
            return None
        values = list(rows[0])
        values[7] = _vector(values[7])
        return Upload(*values)

    def upload_count(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM uploads")[0][0])

    def suggestion(self, suggestion_id: int) -> Suggestion | None:
        rows = self._read(f"SELECT {SUGGESTION_COLUMNS} FROM suggestions WHERE suggestion_id = ?", (suggestion_id,))
        return _suggestion(rows[0]) if rows else None

    def suggestions(self, status: str | None = "pending", limit: int = 200) -> list[Suggestion]:
        where, parameters = ("WHERE status = ?", (status,)) if status else ("", ())
        rows = self._read(f"SELECT {SUGGESTION_COLUMNS} FROM suggestions {where} ORDER BY suggestion_id LIMIT ?",
                          (*parameters, limit))
        return [_suggestion(r) for r in rows]

    def suggestion_photo(self, suggestion_id: int) -> bytes | None:
        rows = self._read("SELECT photo FROM suggestions WHERE suggestion_id = ?", (suggestion_id,))
        return rows[0][0] if rows else None

    def pending_count(self, client: str | None = None) -> int:
        if client is None:
            return int(self._read("SELECT COUNT(*) FROM suggestions WHERE status = 'pending'")[0][0])
        return int(self._read("SELECT COUNT(*) FROM suggestions WHERE status = 'pending' AND client = ?", (client,))[0][0])

    def feedback_count(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM feedback")[0][0])

    # -- references ----------------------------------------------------------------------------------
    def added_references(self, landmark_id: int | None = None) -> list[AddedReference]:
        where, parameters = ("WHERE landmark_id = ?", (landmark_id,)) if landmark_id is not None else ("", ())
        rows = self._read("SELECT image_id, landmark_id, embedding, source, created, created_by, photo IS NOT NULL "
                          f"FROM added_references {where} ORDER BY created, rowid", parameters)
        return [AddedReference(i, int(l), _vector(e), s, c, b, bool(p)) for i, l, e, s, c, b, p in rows]

    def reference_photo(self, image_id: str, landmark_id: int) -> bytes | None:
        rows = self._read("SELECT photo FROM added_references WHERE image_id = ? AND landmark_id = ?", (image_id, landmark_id))
        return rows[0][0] if rows else None

    def reference_changes(self) -> ReferenceChanges:
        """What ``Recognizer.load`` applies to the run's trained references."""
        enrolled = {int(i): str(n) for i, n in self._read("SELECT landmark_id, name FROM enrolled_landmarks")}
        deleted = {int(i): str(n) for i, n in self._read("SELECT landmark_id, name FROM deleted_landmarks")}
        removed = {(str(i), int(l)) for i, l in self._read("SELECT image_id, landmark_id FROM removed_references")}
        added = [(r.image_id, r.landmark_id, r.embedding) for r in self.added_references()]
        return ReferenceChanges(enrolled, deleted, removed, added, self.taught_centres())

    def taught_centres(self) -> dict[int, TaughtCentres]:
        """The taught landmarks' stored class centres (none in a store of schema 1 that was only read since)."""
        if not self._read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'taught_centres'"):
            return {}
        rows = self._read("SELECT landmark_id, centres, dims, photos, fingerprint FROM taught_centres")
        return {int(i): TaughtCentres(int(i), _vector(c).reshape(-1, int(d)), int(n), str(f)) for i, c, d, n, f in rows}

    def max_landmark_id(self) -> int:
        """The largest landmark id ever enrolled (deleted ones included, so that an id is never given twice), or -1."""
        rows = self._read("SELECT MAX(landmark_id) FROM (SELECT landmark_id FROM enrolled_landmarks "
                          "UNION ALL SELECT landmark_id FROM deleted_landmarks)")
        return -1 if rows[0][0] is None else int(rows[0][0])

    def audit(self, limit: int = 200) -> list[dict[str, Any]]:
        rows = self._read("SELECT audit_id, at, actor, action, details FROM audit ORDER BY audit_id DESC LIMIT ?", (limit,))
        return [{"audit_id": a, "at": t, "actor": who, "action": what, "details": json.loads(d)} for a, t, who, what, d in rows]


def read_reference_changes(run_dir: Path) -> ReferenceChanges:
    """The store's changes to a run folder's references, read without writing anything (none when no store exists).

    A run folder with only the older ``feedback.sqlite`` gives its enrolled landmarks and added references."""
    run_dir = Path(run_dir)
    path = run_dir / STORE_FILE
    if path.exists():
        return Store(path, create=False).reference_changes()
    legacy = run_dir / LEGACY_FILE
    if not legacy.exists():
        return ReferenceChanges()
    try:
        db = sqlite3.connect(f"file:{legacy}?mode=ro", uri=True, timeout=30)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            enrolled = ({int(i): str(n) for i, n in db.execute("SELECT landmark_id, name FROM landmarks")}
                        if "landmarks" in tables else {})
            added = ([(str(i), int(l), _vector(e)) for i, l, e in
                      db.execute("SELECT image_id, landmark_id, embedding FROM added_references ORDER BY created")]
                     if "added_references" in tables else [])
        finally:
            db.close()
    except sqlite3.Error as error:
        raise StoreError(f"Cannot read {legacy} ({error}).") from None
    return ReferenceChanges(enrolled=enrolled, added=added)
