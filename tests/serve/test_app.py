"""The REST API through FastAPI's TestClient on a tiny run: roles, review, undo, uploads, limits, restarts, bad uploads;
and `kill -9` of a real uvicorn server during an enrolment loop."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from tests_helpers import PURPLE, UNLIMITED, bearer, jpeg, photo_files, running_server

from landmarks.data.images import decode_image_bytes
from landmarks.recognize.geo import read_exif_location
from landmarks.serve.admin import create_token, revoke_token
from landmarks.serve.app import create_app
from landmarks.serve.settings import Settings
from landmarks.store import STORE_FILE

@pytest.fixture
def tokens(run: Path) -> dict[str, str]:
    return {"admin": create_token(run, "admin", "Ada")[1], "contributor": create_token(run, "contributor", "Cy")[1]}


def client_for(run: Path, **settings) -> TestClient:
    return TestClient(create_app(run, backend="torch", settings=Settings(**{**UNLIMITED, **settings})))


@pytest.fixture
def client(run: Path, tokens: dict[str, str]):
    with client_for(run) as c:
        yield c


def predict(client: TestClient, colour: tuple[int, int, int], seed: int, token: str | None = None) -> dict:
    response = client.post("/predict", files={"photo": ("q.jpg", jpeg(colour, seed=seed), "image/jpeg")}, headers=bearer(token))
    assert response.status_code == 200, response.text
    return response.json()


def state(client: TestClient) -> dict:
    """Everything a change could touch: every store table but uploads (predictions are open), the index, the names."""
    service = client.app.state.service
    with sqlite3.connect(service.store.path) as db:
        tables = {t: db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in
                  ("tokens", "suggestions", "added_references", "removed_references", "enrolled_landmarks",
                   "deleted_landmarks", "feedback", "audit")}
    index = service.recognizer.index
    return {**tables, "index": (list(index.image_ids), index.landmark_ids.tolist()), "names": dict(service.recognizer.names)}


def test_health_docs_page_and_landmarks(client: TestClient):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["landmarks"] == 4 and health["references"] > 0
    assert health["open"] is False and "admin" in health["access"] and "24 hours" in health["retention"]
    assert "at least 95% of the landmarks it names on those photos are right (with 90% certainty)" in health["confidence"]
    assert client.get("/docs").status_code == 200 and "/suggestions/{suggestion_id}/approve" in client.get("/openapi.json").text
    page = client.get("/").text
    assert "Teach a new landmark" in page and "Sign in" in page
    names = {l["name"] for l in client.get("/landmarks").json()}
    assert names == {"place_7", "place_55", "place_300", "place_1042"}


def test_predict_returns_ranked_landmarks_with_neighbours(client: TestClient):
    response = client.post("/predict", files={"photo": ("red.jpg", jpeg((220, 30, 30)), "image/jpeg")}, data={"top_k": "2"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["candidates"]) == 2 and 0 <= body["confidence"] <= 1
    assert body["candidates"][0]["score"] >= body["candidates"][1]["score"]
    assert body["neighbours"] and body["upload_id"]


@pytest.mark.parametrize(
    "payload, status, message",
    [
        (b"this is not an image", 415, "not an image"),
        (jpeg((1, 2, 3), size=(200, 200))[:2000], 400, "truncated or corrupt"),
        (b"", 400, "is empty"),
    ],
)
def test_bad_uploads_get_a_clear_4xx(client: TestClient, payload: bytes, status: int, message: str):
    response = client.post("/predict", files={"photo": ("x.jpg", payload, "image/jpeg")})
    assert response.status_code == status and message in response.json()["detail"]


def test_oversized_upload_and_decompression_bomb_are_refused(run: Path, monkeypatch):
    with client_for(run, max_upload_bytes=1000) as client:
        response = client.post("/predict", files={"photo": ("big.jpg", jpeg((5, 5, 5), size=(400, 400)), "image/jpeg")})
        assert response.status_code == 413 and "larger than" in response.json()["detail"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with client_for(run) as client:
        response = client.post("/predict", files={"photo": ("bomb.jpg", jpeg((5, 5, 5), size=(100, 100)), "image/jpeg")})
        assert response.status_code == 413 and "too large" in response.json()["detail"]


def test_a_png_declaring_a_huge_size_is_refused_without_decoding(client: TestClient):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30_000, 30_000, 8, 2, 0, 0, 0)  # 900 MP of RGB
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    response = client.post("/predict", files={"photo": ("bomb.png", bomb, "image/png")})
    assert response.status_code == 413 and "too large" in response.json()["detail"]


def test_a_request_over_the_size_cap_is_refused_before_it_is_read(run: Path, tokens: dict[str, str]):
    with client_for(run, max_request_bytes=5000) as client:
        before = state(client)
        files = [("photos", (f"p{i}.jpg", jpeg((9, 9, 9), seed=i, size=(200, 200)), "image/jpeg")) for i in range(4)]
        response = client.post("/landmarks", data={"name": "Heavy"}, files=files, headers=bearer(tokens["admin"]))
        assert response.status_code == 413 and "Too Large" in response.text  # FastAPI's max_body_size
        assert state(client) == before


# -- roles -------------------------------------------------------------------------------------------

Setup = Callable[[TestClient, dict[str, str]], dict]


def _enrolled(client: TestClient, tokens: dict[str, str]) -> dict:
    body = client.post("/landmarks", data={"name": f"Target {len(client.get('/landmarks').json())}"},
                       files=photo_files(PURPLE, 2), headers=bearer(tokens["admin"])).json()
    return {"landmark_id": body["landmark_id"]}


def _upload(client: TestClient, tokens: dict[str, str]) -> dict:
    return {"upload_id": predict(client, (30, 200, 40), seed=7)["upload_id"]}


def _suggestion(client: TestClient, tokens: dict[str, str]) -> dict:
    upload = _upload(client, tokens)["upload_id"]
    body = client.post("/feedback", json={"upload_id": upload, "landmark_id": 55}, headers=bearer(tokens["contributor"])).json()
    return {"suggestion_id": body["suggestion_id"]}


def _trained_image(client: TestClient, tokens: dict[str, str]) -> dict:
    index = client.app.state.service.recognizer.index
    position = int(np.flatnonzero(index.landmark_ids == 300)[len(client.get("/audit", headers=bearer(tokens["admin"])).json()) % 5])
    return {"image_id": index.image_ids[position]}


def _token(client: TestClient, tokens: dict[str, str]) -> dict:
    return {"token_id": client.post("/tokens", json={"role": "contributor", "name": "x"}, headers=bearer(tokens["admin"])).json()["token_id"]}


# (method, path, setup, request keyword arguments, the roles allowed)
ENDPOINTS: list[tuple[str, str, Setup | None, Callable[[dict], dict], set[str]]] = [
    ("POST", "/feedback", _upload, lambda p: {"json": {"upload_id": p["upload_id"], "landmark_id": 55}}, {"contributor", "admin"}),
    ("POST", "/landmarks", None, lambda p: {"data": {"name": "New Place"}, "files": photo_files((9, 99, 199), 2)},
     {"contributor", "admin"}),
    ("DELETE", "/landmarks/{landmark_id}", _enrolled, lambda p: {}, {"admin"}),
    ("GET", "/landmarks/{landmark_id}/references", _enrolled, lambda p: {}, {"admin"}),
    ("DELETE", "/references/{image_id}", _trained_image, lambda p: {}, {"admin"}),
    ("PUT", "/references/{image_id}", _trained_image, lambda p: {"json": {"landmark_id": 7}}, {"admin"}),
    ("GET", "/suggestions", None, lambda p: {}, {"admin"}),
    ("GET", "/suggestions/{suggestion_id}/photo", _suggestion, lambda p: {}, {"admin"}),
    ("POST", "/suggestions/{suggestion_id}/approve", _suggestion, lambda p: {}, {"admin"}),
    ("POST", "/suggestions/{suggestion_id}/reject", _suggestion, lambda p: {}, {"admin"}),
    ("GET", "/tokens", None, lambda p: {}, {"admin"}),
    ("POST", "/tokens", None, lambda p: {"json": {"role": "admin", "name": "intruder"}}, {"admin"}),
    ("DELETE", "/tokens/{token_id}", _token, lambda p: {}, {"admin"}),
    ("GET", "/audit", None, lambda p: {}, {"admin"}),
]


def test_every_role_on_every_endpoint_allowed_or_refused_and_a_refusal_changes_nothing(run: Path, tokens: dict[str, str]):
    revoked_id, revoked = create_token(run, "admin", "gone")
    revoke_token(run, revoked_id)
    senders = {"nobody": None, "bogus token": "lmk_not-a-token", "revoked admin": revoked, "malformed": "",
               "contributor": tokens["contributor"], "admin": tokens["admin"]}
    with client_for(run) as client:
        for method, path, setup, arguments, allowed in ENDPOINTS:
            for who, token in senders.items():
                parameters = setup(client, tokens) if setup else {}
                before = state(client)
                headers = {"Authorization": "Basic abc"} if who == "malformed" else bearer(token)
                response = client.request(method, path.format(**parameters), headers=headers, **arguments(parameters))
                if who in allowed:
                    assert response.status_code == 200, (method, path, who, response.text)
                    continue
                expected = 403 if who == "contributor" else 401
                assert response.status_code == expected, (method, path, who, response.status_code, response.text)
                assert response.json()["detail"].endswith("."), response.json()  # one sentence
                assert state(client) == before, (method, path, who)
        assert client.get("/health").status_code == 200  # reading stays open
        assert client.get("/landmarks").status_code == 200 and client.get("/me").json()["role"] == "anonymous"
        assert client.get("/me", headers=bearer(tokens["contributor"])).json() == {"role": "contributor", "name": "Cy", "token_id": 2}


def test_open_service_lets_anyone_change_and_says_so(run: Path):
    with client_for(run, open=True) as client:
        assert client.get("/health").json()["open"] is True and "--open" in client.get("/health").json()["access"]
        response = client.post("/landmarks", data={"name": "Purple Palace"}, files=photo_files(PURPLE, 5))
        assert response.status_code == 200 and response.json()["status"] == "applied"
        assert predict(client, PURPLE, 99)["candidates"][0]["name"] == "Purple Palace"


def test_anonymous_suggestions_when_allowed_wait_for_review(run: Path, tokens: dict[str, str]):
    with client_for(run, allow_anonymous_suggestions=True) as client:
        response = client.post("/landmarks", data={"name": "Purple Palace"}, files=photo_files(PURPLE, 3))
        assert response.status_code == 200 and response.json()["status"] == "pending"
        assert len(response.json()["suggestion_ids"]) == 3
        assert client.delete("/landmarks/7").status_code == 401  # still no admin rights
        pending = client.get("/suggestions", headers=bearer(tokens["admin"])).json()
        assert [s["suggested_by"] for s in pending] == ["anonymous"] * 3 and pending[0]["suggested_name"] == "Purple Palace"


# -- review --------------------------------------------------------------------------------------------

def test_a_suggested_landmark_is_recognised_only_once_approved_and_after_a_restart(run: Path, tokens: dict[str, str]):
    admin, contributor = bearer(tokens["admin"]), bearer(tokens["contributor"])
    with client_for(run) as client:
        references = client.get("/health").json()["references"]
        body = client.post("/landmarks", data={"name": "Purple Palace"}, files=photo_files(PURPLE, 5), headers=contributor).json()
        assert body["status"] == "pending" and body["photos_added"] == 0 and body["landmark_id"] is None
        assert client.get("/health").json()["references"] == references  # not searchable yet
        assert "Purple Palace" not in {c["name"] for c in predict(client, PURPLE, 99)["candidates"]}
        pending = client.get("/suggestions", headers=admin).json()
        assert len(pending) == 5 and pending[0]["suggested_by"] == "Cy (token 2)" and pending[0]["predicted_name"] in client.app.state.service.recognizer.names.values()
        photo = client.get(pending[0]["photo_url"], headers=admin)
        assert photo.status_code == 200  # the photo, re-encoded without its metadata
        assert np.abs(decode_image_bytes(photo.content, 32).astype(int) - decode_image_bytes(jpeg(PURPLE, seed=0), 32)).mean() < 3
        decisions = [client.post(f"/suggestions/{s['suggestion_id']}/approve", headers=admin).json() for s in pending]
        assert {d["landmark_id"] for d in decisions} == {1043} and decisions[0]["name"] == "Purple Palace"
        assert client.post(f"/suggestions/{pending[0]['suggestion_id']}/approve", headers=admin).status_code == 409
        assert predict(client, PURPLE, 99)["candidates"][0]["name"] == "Purple Palace"  # at once, no restart
        assert client.get("/health").json()["references"] == references + 5
        actions = [a["action"] for a in client.get("/audit", headers=admin).json()]
        assert actions[:5] == ["approve"] * 5 and "suggest_landmark" in actions
    with client_for(run) as client:
        assert predict(client, PURPLE, 98)["candidates"][0]["name"] == "Purple Palace"
        assert any(l["name"] == "Purple Palace" and l["enrolled"] for l in client.get("/landmarks").json())


def test_a_rejected_correction_is_never_recognised_and_its_photo_is_deleted(run: Path, tokens: dict[str, str]):
    admin, contributor = bearer(tokens["admin"]), bearer(tokens["contributor"])
    with client_for(run) as client:
        upload = predict(client, PURPLE, 1)
        body = client.post("/feedback", json={"upload_id": upload["upload_id"], "landmark_id": 55}, headers=contributor).json()
        assert body["status"] == "pending" and not body["added_to_index"]
        suggestion = client.get("/suggestions", headers=admin).json()[0]
        assert suggestion["predicted_landmark_id"] == upload["landmark_id"] or not upload["known"]
        assert suggestion["predicted_name"] and suggestion["landmark_id"] == 55
        assert client.post(f"/suggestions/{body['suggestion_id']}/reject", headers=admin).json()["status"] == "rejected"
        assert client.get(suggestion["photo_url"], headers=admin).status_code == 404
        assert client.get("/suggestions", headers=admin).json() == []
        assert [s["status"] for s in client.get("/suggestions?status=all", headers=admin).json()] == ["rejected"]
        neighbours = predict(client, PURPLE, 1)["neighbours"]
        assert all(not n["image_id"].startswith("photo-") for n in neighbours)
    with client_for(run) as client:
        assert all(not n["image_id"].startswith("photo-") for n in predict(client, PURPLE, 1)["neighbours"])


def test_an_admin_correction_applies_at_once_and_moves_the_photo(client: TestClient, tokens: dict[str, str]):
    admin = bearer(tokens["admin"])
    start = client.get("/health").json()["references"]
    upload = predict(client, (30, 200, 40), 5)["upload_id"]
    first = client.post("/feedback", json={"upload_id": upload, "landmark_id": 55}, headers=admin).json()
    again = client.post("/feedback", json={"upload_id": upload, "landmark_id": 55}, headers=admin).json()
    assert first["status"] == "applied" and first["added_to_index"] and again["status"] == "recorded"
    moved = client.post("/feedback", json={"upload_id": upload, "landmark_id": 7}, headers=admin).json()
    assert moved["added_to_index"] and client.get("/health").json()["references"] == start + 1
    index = client.app.state.service.recognizer.index
    labels = [int(l) for i, l in zip(index.image_ids, index.landmark_ids) if i.startswith("photo-")]
    assert labels == [7]  # no longer a reference of 55
    none = client.post("/feedback", json={"upload_id": upload, "landmark_id": -1}, headers=admin).json()
    assert none["status"] == "applied" and client.get("/health").json()["references"] == start
    assert client.post("/feedback", json={"upload_id": "nope", "landmark_id": 55}, headers=admin).status_code == 404
    assert client.post("/feedback", json={"upload_id": upload, "landmark_id": 123456}, headers=admin).status_code == 404


def test_enrolling_the_same_photo_twice_adds_it_once_in_memory_and_after_a_restart(run: Path, tokens: dict[str, str]):
    admin = bearer(tokens["admin"])
    same = [("photos", ("a.jpg", jpeg(PURPLE, 1), "image/jpeg")), ("photos", ("b.jpg", jpeg(PURPLE, 1), "image/jpeg"))]
    with client_for(run) as client:
        start = client.get("/health").json()["references"]
        assert client.post("/landmarks", data={"name": "Green Gate"}, files=same, headers=admin).json()["photos_added"] == 1
        assert client.post("/landmarks", data={"name": "green gate"}, files=same, headers=admin).json()["photos_added"] == 0
        live = client.get("/health").json()
        assert live["references"] == start + 1
        counts = {l["name"]: l["references"] for l in client.get("/landmarks").json()}
    with client_for(run) as client:
        assert client.get("/health").json()["references"] == live["references"]
        assert {l["name"]: l["references"] for l in client.get("/landmarks").json()} == counts


# -- undo ----------------------------------------------------------------------------------------------

def test_deleting_a_landmark_makes_it_unknown_at_once_and_after_a_restart(run: Path, tokens: dict[str, str]):
    admin = bearer(tokens["admin"])
    with client_for(run) as client:
        start = client.get("/health").json()
        enrolled = client.post("/landmarks", data={"name": "Purple Palace"}, files=photo_files(PURPLE, 5), headers=admin).json()
        assert predict(client, PURPLE, 99)["candidates"][0]["name"] == "Purple Palace"
        deleted = client.delete(f"/landmarks/{enrolled['landmark_id']}", headers=admin).json()
        assert deleted == {"landmark_id": 1043, "name": "Purple Palace", "references_removed": 5}
        assert "Purple Palace" not in {c["name"] for c in predict(client, PURPLE, 99)["candidates"]}
        assert client.get("/health").json()["references"] == start["references"]
        assert client.delete("/landmarks/1043", headers=admin).status_code == 404
        refused = client.delete("/landmarks/7", headers=admin)  # trained into the classifier
        assert refused.status_code == 409 and "retrain" in refused.json()["detail"]
    with client_for(run) as client:
        assert "Purple Palace" not in {c["name"] for c in predict(client, PURPLE, 98)["candidates"]}
        assert client.get("/health").json()["landmarks"] == start["landmarks"]
        again = client.post("/landmarks", data={"name": "Purple Palace"}, files=photo_files(PURPLE, 2), headers=admin).json()
        assert again["landmark_id"] == 1044  # a deleted landmark's id is never given again


def test_removing_and_moving_trained_photos_lasts_across_restarts(run: Path, tokens: dict[str, str]):
    admin = bearer(tokens["admin"])
    with client_for(run) as client:
        index = client.app.state.service.recognizer.index
        of_300 = [i for i, l in zip(index.image_ids, index.landmark_ids) if l == 300]
        removed = client.delete(f"/references/{of_300[0]}", headers=admin).json()
        assert removed == {"image_id": of_300[0], "landmark_ids": [300], "moved_from": []}
        moved = client.put(f"/references/{of_300[1]}", json={"landmark_id": 55}, headers=admin).json()
        assert moved["moved_from"] == [300]
        assert client.delete(f"/references/{of_300[0]}", headers=admin).status_code == 404
        assert client.put(f"/references/{of_300[2]}", json={"landmark_id": 99999}, headers=admin).status_code == 404
        sources = {r["image_id"]: r["source"] for r in client.get("/landmarks/55/references", headers=admin).json()}
        assert sources[of_300[1]] == "move"
    for _ in range(2):  # twice: replaying the store must not add or remove anything twice
        with client_for(run) as client:
            index = client.app.state.service.recognizer.index
            pairs = set(zip(index.image_ids, index.landmark_ids.tolist()))
            assert (of_300[0], 300) not in pairs and (of_300[1], 300) not in pairs and (of_300[1], 55) in pairs
            assert sum(l == 300 for _, l in pairs) == len(of_300) - 2 and len(pairs) == len(index)


# -- uploads -------------------------------------------------------------------------------------------

def test_two_thousand_predictions_keep_at_most_max_uploads(run: Path):
    photo = jpeg((220, 30, 30), seed=3, size=(16, 16))
    with client_for(run, max_uploads=100) as client:
        for _ in range(2000):
            assert client.post("/predict", files={"photo": ("p.jpg", photo, "image/jpeg")}).status_code == 200
        assert client.get("/health").json()["uploads_kept"] == 100
    with sqlite3.connect(run / STORE_FILE) as db:
        assert db.execute("SELECT COUNT(*) FROM uploads").fetchone()[0] == 100


def test_expired_uploads_are_deleted_by_the_service(run: Path, tokens: dict[str, str]):
    with client_for(run, keep_uploads_hours=1) as client:
        upload = predict(client, PURPLE, 1)["upload_id"]
        service = client.app.state.service
        assert service.store.upload(upload) is not None
        assert service.purge_uploads() == 0
        assert service.purge_uploads(now=time.time() + 3601) == 1 and service.store.upload(upload) is None
        response = client.post("/feedback", json={"upload_id": upload, "landmark_id": 55}, headers=bearer(tokens["admin"]))
        assert response.status_code == 404 and "predict the photo again" in response.json()["detail"]
    with client_for(run, keep_uploads_hours=0) as client:  # nothing kept at all
        assert predict(client, PURPLE, 2)["upload_id"] == "" and client.get("/health").json()["uploads_kept"] == 0


# -- limits --------------------------------------------------------------------------------------------

def test_rate_limits_answer_429_with_retry_after_and_pending_suggestions_are_capped(run: Path, tokens: dict[str, str]):
    contributor = bearer(tokens["contributor"])
    with client_for(run, predict_per_minute=3, suggestions_per_hour=2, max_pending_per_client=3) as client:
        statuses = [client.post("/predict", files={"photo": ("p.jpg", jpeg(PURPLE), "image/jpeg")}).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        refused = client.post("/predict", files={"photo": ("p.jpg", jpeg(PURPLE), "image/jpeg")})
        assert int(refused.headers["Retry-After"]) >= 1 and "Too many predictions" in refused.json()["detail"]
        assert predict(client, PURPLE, 0, tokens["admin"])  # admins are not limited
        assert predict(client, PURPLE, 0, tokens["contributor"])  # another client, its own bucket
        first = client.post("/landmarks", data={"name": "A"}, files=photo_files(PURPLE, 2), headers=contributor)
        assert first.status_code == 200
        before = state(client)
        capped = client.post("/landmarks", data={"name": "B"}, files=photo_files(PURPLE, 2, start=5), headers=contributor)
        assert capped.status_code == 429 and "waiting for review" in capped.json()["detail"] and state(client) == before
        assert client.post("/landmarks", data={"name": "C"}, files=photo_files(PURPLE, 1, start=9), headers=contributor).status_code == 429
        assert state(client) == before


def test_hammering_predict_while_landmarks_are_enrolled_and_deleted(run: Path, tokens: dict[str, str]):
    """No search runs while the index changes: the index itself counts overlaps, widened by a short sleep."""
    from concurrent.futures import ThreadPoolExecutor

    admin = bearer(tokens["admin"])
    with client_for(run) as client:
        index = client.app.state.service.recognizer.index
        searching, overlaps, guard = [0], [], threading.Lock()
        search, add, remove = index.search, index.add, index.remove

        def counted_search(*args, **kwargs):
            with guard:
                searching[0] += 1
            try:
                time.sleep(0.002)
                return search(*args, **kwargs)
            finally:
                with guard:
                    searching[0] -= 1

        def exclusive(change):
            def run_change(*args, **kwargs):
                with guard:
                    if searching[0]:
                        overlaps.append(searching[0])
                time.sleep(0.002)
                return change(*args, **kwargs)
            return run_change

        index.search, index.add, index.remove = counted_search, exclusive(add), exclusive(remove)

        def predictions(seed: int) -> list[int]:
            return [client.post("/predict", files={"photo": ("p.jpg", jpeg((seed * 40 % 255, 90, 40), seed=seed + i), "image/jpeg")}).status_code
                    for i in range(12)]

        def changes() -> list[int]:
            statuses = []
            for i in range(6):
                body = client.post("/landmarks", data={"name": f"place {i}"}, files=photo_files((10, 30 * i, 200), 2), headers=admin)
                statuses.append(body.status_code)
                if i % 2:
                    statuses.append(client.delete(f"/landmarks/{body.json()['landmark_id']}", headers=admin).status_code)
            return statuses

        with ThreadPoolExecutor(5) as pool:
            futures = [pool.submit(predictions, seed) for seed in range(4)] + [pool.submit(changes)]
            statuses = [s for f in futures for s in f.result()]
        assert set(statuses) == {200} and len(statuses) == 4 * 12 + 9
        assert overlaps == []
        assert client.get("/health").json()["landmarks"] == 4 + 3
        assert len(index) == len(index.image_ids) == len(index.landmark_ids)


def test_a_store_from_before_tokens_is_migrated(run: Path, tokens: dict[str, str]):
    """A run folder served before (feedback.sqlite: enrolled landmarks and added references) still starts, with them."""
    with client_for(run, open=True) as client:
        enrolled = client.post("/landmarks", data={"name": "Old Tower"}, files=photo_files(PURPLE, 3)).json()
        vectors = client.app.state.service.recognizer.index.vectors()[-3:]
    (run / STORE_FILE).unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{run / STORE_FILE}{suffix}").unlink(missing_ok=True)
    with sqlite3.connect(run / "feedback.sqlite") as db:
        db.executescript("""
            CREATE TABLE uploads (upload_id TEXT PRIMARY KEY, created REAL, predicted_landmark_id INTEGER, confidence REAL,
                                  embedding BLOB, image BLOB);
            CREATE TABLE feedback (feedback_id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL, upload_id TEXT,
                                   predicted_landmark_id INTEGER, landmark_id INTEGER, added_to_index INTEGER);
            CREATE TABLE landmarks (landmark_id INTEGER PRIMARY KEY, name TEXT NOT NULL, created REAL);
            CREATE TABLE added_references (image_id TEXT, landmark_id INTEGER, embedding BLOB, created REAL,
                                           PRIMARY KEY (image_id, landmark_id));""")
        db.execute("INSERT INTO landmarks VALUES (?, 'Old Tower', 1.0)", (enrolled["landmark_id"],))
        db.executemany("INSERT INTO added_references VALUES (?, ?, ?, 2.0)",
                       [(f"enrol-{i}", enrolled["landmark_id"], v.tobytes()) for i, v in enumerate(vectors)])
        db.execute("INSERT INTO feedback VALUES (1, 3.0, 'abc', 7, 55, 0)")
    admin = create_token(run, "admin")[1]  # opening the store migrates feedback.sqlite
    with client_for(run) as client:
        assert predict(client, PURPLE, 99)["candidates"][0]["name"] == "Old Tower"
        assert client.get("/health").json()["feedback"] == 1
        assert client.get("/audit", headers=bearer(admin)).json()[-1]["action"] == "migrate"
    assert not (run / "feedback.sqlite").exists()


# -- durability ----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_kill_9_during_enrolments_loses_no_answered_request_and_leaves_nothing_half_written(tiny_run_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    admin = bearer(create_token(run, "admin", "loop")[1])
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "landmarks", "serve", str(run), "--port", str(port), "--backend", "torch"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    answered: dict[str, int] = {}
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
            assert server.poll() is None, server.stdout.read().decode()
        killer = threading.Thread(target=lambda: (_wait_for(lambda: len(answered) >= 6), server.send_signal(signal.SIGKILL)))
        killer.start()
        with httpx.Client(base_url=url, timeout=30) as client:
            for i in range(200):  # bounded: the kill comes after six answers
                name = f"Crash Tower {i}"
                try:
                    response = client.post("/landmarks", data={"name": name}, files=photo_files((10 + i, 80, 200), 3), headers=admin)
                except httpx.TransportError:
                    break
                assert response.status_code == 200, response.text
                answered[name] = response.json()["landmark_id"]
        killer.join(30)
        assert server.wait(30) == -signal.SIGKILL
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert len(answered) >= 6
    with sqlite3.connect(run / STORE_FILE) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        landmarks = dict(db.execute("SELECT name, landmark_id FROM enrolled_landmarks").fetchall())
        photos = dict(db.execute("SELECT landmark_id, COUNT(*) FROM added_references GROUP BY landmark_id").fetchall())
        audited = db.execute("SELECT COUNT(*) FROM audit WHERE action = 'enrol'").fetchone()[0]
    assert answered.items() <= landmarks.items()  # every answered enrolment is there
    assert len(landmarks) <= len(answered) + 1  # at most the one in flight when killed, and then all of it:
    assert all(photos.get(i) == 3 for i in landmarks.values()) and audited == len(landmarks)
    with TestClient(create_app(run, backend="torch")) as client:  # the restart serves exactly that
        names = {l["name"]: l["references"] for l in client.get("/landmarks").json()}
        assert all(names[n] == 3 for n in landmarks)


def _wait_for(condition, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_a_kept_photo_loses_its_gps_position_but_not_its_orientation(run: Path, tokens: dict[str, str]):
    """What the service keeps of a person's photo carries no EXIF (no GPS), yet shows the same upright picture."""
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to show it upright
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    buffer = io.BytesIO()
    Image.fromarray(np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (32, 1))[..., None].repeat(3, 2)).save(
        buffer, "JPEG", exif=exif, quality=95)
    photo = buffer.getvalue()
    assert read_exif_location(photo) is not None
    with client_for(run) as client:
        upload_id = client.post("/predict", files={"photo": ("paris.jpg", photo, "image/jpeg")}).json()["upload_id"]
        kept = client.app.state.service.store.upload(upload_id).photo
    assert read_exif_location(kept) is None and not Image.open(io.BytesIO(kept)).getexif()
    upright, stored = decode_image_bytes(photo, 32).astype(int), decode_image_bytes(kept, 32).astype(int)
    assert Image.open(io.BytesIO(kept)).size == (32, 48) and np.abs(upright - stored).mean() < 3


def test_x_forwarded_for_from_loopback_does_not_bypass_the_rate_limit_unless_proxy_headers_are_asked(run: Path):
    from landmarks.serve.app import uvicorn_config

    photo = {"photo": ("q.jpg", jpeg((40, 50, 60)), "image/jpeg")}
    settings = Settings(**{**UNLIMITED, "predict_per_minute": 3})
    app = create_app(run, backend="torch", settings=settings)
    with running_server(app, lambda a, host, port: uvicorn_config(a, host, port, settings)) as url:
        answers = [httpx.post(f"{url}/predict", files=photo, headers={"X-Forwarded-For": f"203.0.113.{i}"})
                   for i in range(6)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429, 429, 429]
        clients = {u.client for u in (app.state.service.store.upload(a.json()["upload_id"]) for a in answers[:3])}
        assert clients == {"ip:127.0.0.1"}  # the socket's peer, not what the header says
    behind_proxy = Settings(**{**UNLIMITED, "predict_per_minute": 3, "proxy_headers": True})
    app = create_app(run, backend="torch", settings=behind_proxy)
    with running_server(app, lambda a, host, port: uvicorn_config(a, host, port, behind_proxy)) as url:
        answers = [httpx.post(f"{url}/predict", files=photo, headers={"X-Forwarded-For": f"203.0.113.{i}"})
                   for i in range(5)]
        assert [a.status_code for a in answers] == [200] * 5  # five clients behind the trusted proxy
        assert app.state.service.store.upload(answers[4].json()["upload_id"]).client == "ip:203.0.113.4"


def test_at_most_max_concurrent_decodes_photos_are_decoded_at_once(run: Path, monkeypatch):
    import landmarks.serve.service as service_module

    running, most, lock = [0], [0], threading.Lock()
    original = service_module.decode_image_bytes

    def tracked(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)  # long enough for the other threads to arrive
        try:
            return original(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(service_module, "decode_image_bytes", tracked)
    with client_for(run, max_concurrent_decodes=2) as client:
        service = client.app.state.service
        threads = [threading.Thread(target=service.decode, args=(jpeg((9, 9, 9), seed=i), "p.jpg")) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert most[0] == 2


def test_kept_uploads_are_scaled_down_and_capped_by_bytes(run: Path):
    big = jpeg((90, 120, 150), size=(3000, 2000))
    with client_for(run) as client:
        upload_id = client.post("/predict", files={"photo": ("big.jpg", big, "image/jpeg")}).json()["upload_id"]
        kept = client.app.state.service.store.upload(upload_id).photo
        with Image.open(io.BytesIO(kept)) as image:
            assert image.size == (2048, 1365)
    photos = [jpeg((90, 120, 150), seed=i, size=(400, 300)) for i in range(4)]
    kept_bytes = len(client.app.state.service.kept_photo(photos[0], "p.jpg"))
    with client_for(run, max_uploads_mb=2.5 * kept_bytes / 2**20) as client:  # room for two of them
        ids = [client.post("/predict", files={"photo": ("p.jpg", p, "image/jpeg")}).json()["upload_id"] for p in photos]
        store = client.app.state.service.store
        assert [store.upload(i) is not None for i in ids] == [False, False, True, True]


@pytest.mark.parametrize("value", [2**63, 2**64, -(2**63) - 1])
def test_ids_beyond_the_store_integers_are_refused_never_a_500(client: TestClient, tokens: dict[str, str], value: int):
    admin = bearer(tokens["admin"])
    asks = [("GET", f"/suggestions/{value}/photo", {}), ("POST", f"/suggestions/{value}/approve", {}),
            ("POST", f"/suggestions/{value}/reject", {}), ("DELETE", f"/tokens/{value}", {}),
            ("DELETE", f"/landmarks/{value}", {}), ("GET", f"/landmarks/{value}/references", {}),
            ("DELETE", f"/references/x?landmark_id={value}", {}),
            ("PUT", "/references/x", {"json": {"landmark_id": value}}),
            ("POST", "/feedback", {"json": {"upload_id": "x", "landmark_id": value}})]
    for method, path, arguments in asks:
        response = client.request(method, path, headers=admin, **arguments)
        assert response.status_code in (404, 422), (method, path, response.status_code, response.text)
    assert client.get(f"/suggestions/{2**63 - 1}/photo", headers=admin).status_code == 404  # the largest: looked up
