"""SQLite (WAL) store next to the run: uploads, feedback, enrolled landmarks and the reference photos added at serve time.

A reference is identified by (image_id, landmark_id): the same photo given twice to one landmark is one reference,
the same photo given to two landmarks is two, in memory as on disk.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY, created REAL, predicted_landmark_id INTEGER, confidence REAL,
    embedding BLOB, image BLOB
);
CREATE TABLE IF NOT EXISTS feedback (
    feedback_id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL, upload_id TEXT REFERENCES uploads(upload_id),
    predicted_landmark_id INTEGER, landmark_id INTEGER, added_to_index INTEGER
);
CREATE TABLE IF NOT EXISTS landmarks (landmark_id INTEGER PRIMARY KEY, name TEXT NOT NULL, created REAL);
CREATE TABLE IF NOT EXISTS added_references (
    image_id TEXT, landmark_id INTEGER, embedding BLOB, created REAL, PRIMARY KEY (image_id, landmark_id)
);
"""


class FeedbackStore:
    """Every write is committed before the request answers, so nothing is lost on a restart or a crash."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock = threading.Lock()
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA synchronous=FULL")  # each commit on disk before the request answers, even on power loss
        try:
            with db:  # commits, or rolls back on an exception
                yield db
        finally:
            db.close()

    def record_upload(self, upload_id: str, landmark_id: int, confidence: float, embedding: np.ndarray, image: bytes) -> None:
        with self.lock, self.connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?, ?)",
                (upload_id, time.time(), landmark_id, confidence, embedding.astype(np.float32).tobytes(), image),
            )

    def upload(self, upload_id: str) -> tuple[int, np.ndarray] | None:
        """(predicted landmark id, embedding) of an earlier upload, or None."""
        with self.connect() as db:
            row = db.execute(
                "SELECT predicted_landmark_id, embedding FROM uploads WHERE upload_id = ?", (upload_id,)
            ).fetchone()
        return None if row is None else (int(row[0]), np.frombuffer(row[1], dtype=np.float32))

    def record_feedback(self, upload_id: str, predicted: int, landmark_id: int, reference: tuple[str, np.ndarray] | None) -> int:
        """The feedback row and, when given, the (image id, embedding) reference it adds: one transaction."""
        with self.lock, self.connect() as db:
            if reference is not None:
                self._insert_references(db, [reference[0]], landmark_id, reference[1][None])
            cursor = db.execute(
                "INSERT INTO feedback (created, upload_id, predicted_landmark_id, landmark_id, added_to_index) "
                "VALUES (?, ?, ?, ?, ?)",
                (time.time(), upload_id, predicted, landmark_id, int(reference is not None)),
            )
            return int(cursor.lastrowid)

    def feedback_count(self) -> int:
        with self.connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])

    def enrol(self, landmark_id: int, name: str | None, image_ids: list[str], embeddings: np.ndarray) -> None:
        """A new landmark (when ``name`` is given) and its reference photos: one transaction."""
        with self.lock, self.connect() as db:
            if name is not None:
                db.execute("INSERT OR REPLACE INTO landmarks VALUES (?, ?, ?)", (landmark_id, name, time.time()))
            self._insert_references(db, image_ids, landmark_id, embeddings)

    @staticmethod
    def _insert_references(db: sqlite3.Connection, image_ids: list[str], landmark_id: int, embeddings: np.ndarray) -> None:
        db.executemany(
            "INSERT OR IGNORE INTO added_references VALUES (?, ?, ?, ?)",
            [(i, landmark_id, e.astype(np.float32).tobytes(), time.time()) for i, e in zip(image_ids, embeddings)],
        )

    def landmarks(self) -> dict[int, str]:
        with self.connect() as db:
            return {int(i): str(n) for i, n in db.execute("SELECT landmark_id, name FROM landmarks")}

    def references(self) -> list[tuple[str, int, np.ndarray]]:
        with self.connect() as db:
            rows = db.execute("SELECT image_id, landmark_id, embedding FROM added_references ORDER BY created").fetchall()
        return [(str(i), int(l), np.frombuffer(e, dtype=np.float32)) for i, l, e in rows]
