"""The service on a tiny ArcFace run: a taught landmark's imprinted class centres, in memory, in the store, across
restarts, and gone with the landmark."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from landmarks.recognize.recognizer import Recognizer
from landmarks.serve.service import Actor, Service
from landmarks.store import STORE_FILE, Store
from tests_helpers import PURPLE, jpeg

ADMIN = Actor("admin", "Ada", 1, "test")


@pytest.fixture
def run(tiny_arcface_run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(tiny_arcface_run_dir, copy)
    return copy


def service_of(run: Path) -> Service:
    return Service(Recognizer.load(run, backend="torch"), Store.open(run))


def photos(count: int, colour=PURPLE) -> list[tuple[str, bytes]]:
    return [(f"p{seed}.jpg", jpeg(colour, seed)) for seed in range(count)]


def stored_centres(run: Path) -> dict[int, tuple[int, int]]:
    with sqlite3.connect(run / STORE_FILE) as db:
        return {i: (d, n) for i, d, n in db.execute("SELECT landmark_id, dims, photos FROM taught_centres")}


def test_an_enrolled_landmark_gets_a_centre_that_scores_it_survives_a_restart_and_goes_with_it(run: Path):
    service = service_of(run)
    recognizer = service.recognizer
    assert recognizer.imprints and recognizer.neck_dims == 16
    landmark_id = service.enrol("Purple Palace", photos(5), ADMIN)["landmark_id"]
    centres = recognizer.centres[landmark_id]
    assert centres.shape == (1, 16) and stored_centres(run) == {landmark_id: (16, 5)}
    query = recognizer.embed(service.decode(jpeg(PURPLE, 50), "q.jpg")[None])
    ids, scores = recognizer.taught_scores(query[0])
    neck = query[0][0, :16] / np.linalg.norm(query[0][0, :16])
    assert ids.tolist() == [landmark_id]
    assert scores[0, 0] == pytest.approx(max(0.0, float(neck @ centres[0])), abs=1e-5)

    restarted = service_of(run)  # a restart: the centres come back from the store
    np.testing.assert_allclose(restarted.recognizer.centres[landmark_id], centres, atol=1e-6)

    more = restarted.enrol("Purple Palace", photos(7)[5:], ADMIN)  # more photos: imprinted again
    assert more["photos_added"] == 2 and stored_centres(run) == {landmark_id: (16, 7)}
    image_id = restarted.references_of(landmark_id)[0][0]
    restarted.delete_reference(image_id, landmark_id, ADMIN)
    assert stored_centres(run) == {landmark_id: (16, 6)}

    restarted.delete_landmark(landmark_id, ADMIN)
    assert landmark_id not in restarted.recognizer.centres and stored_centres(run) == {}
    assert landmark_id not in service_of(run).recognizer.centres


def test_a_store_written_before_centres_existed_is_migrated_and_its_landmarks_imprinted(run: Path):
    service = service_of(run)
    landmark_id = service.enrol("Purple Palace", photos(3), ADMIN)["landmark_id"]
    with sqlite3.connect(run / STORE_FILE) as db:  # as schema 1 left it
        db.execute("DROP TABLE taught_centres")
        db.execute("PRAGMA user_version = 1")
    assert Store(run / STORE_FILE, create=False).taught_centres() == {}
    restarted = service_of(run)
    assert restarted.recognizer.centres[landmark_id].shape == (1, 16)
    assert stored_centres(run) == {landmark_id: (16, 3)}
    with sqlite3.connect(run / STORE_FILE) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2


def test_landmarks_say_how_many_photos_taught_each_how_sure_and_when_more_would_help(run: Path):
    from fastapi.testclient import TestClient

    from landmarks.recognize.confidence import MIN_TEACHING_PHOTOS
    from landmarks.serve.app import create_app
    from landmarks.serve.settings import Settings

    settings = Settings(open=True, predict_per_minute=0, suggestions_per_hour=0, max_pending_per_client=0)
    files = [("photos", (name, data, "image/jpeg")) for name, data in photos(MIN_TEACHING_PHOTOS)]
    with TestClient(create_app(run, backend="torch", settings=settings)) as client:
        assert client.post("/landmarks", data={"name": "Purple Palace"}, files=files[:2]).status_code == 200
        [taught] = [l for l in client.get("/landmarks").json() if l["enrolled"]]
        assert taught["references"] == 2 and taught["class_centres"] == 1
        assert f"Taught from 2 photos: more photos (at least {MIN_TEACHING_PHOTOS}" in taught["note"]
        trained = [l for l in client.get("/landmarks").json() if not l["enrolled"]]
        assert all(l["note"] is None and l["class_centres"] == 0 for l in trained)
        assert client.post("/landmarks", data={"name": "Purple Palace"}, files=files[2:]).status_code == 200
        [taught] = [l for l in client.get("/landmarks").json() if l["enrolled"]]
        assert taught["references"] == MIN_TEACHING_PHOTOS and taught["note"] is None
