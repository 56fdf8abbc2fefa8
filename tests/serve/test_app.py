"""The REST API through FastAPI's TestClient on a tiny run: predict, feedback, enrolment, restarts, bad uploads."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from landmarks.serve import app as app_module
from landmarks.serve.app import create_app


def jpeg(colour: tuple[int, int, int], seed: int = 0, size: tuple[int, int] = (48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour, np.float32) + rng.normal(0, 12, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture
def run(tiny_run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(tiny_run_dir, copy)
    return copy


@pytest.fixture
def client(run: Path):
    with TestClient(create_app(run, backend="torch")) as c:
        yield c


def test_health_docs_page_and_landmarks(client: TestClient):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["landmarks"] == 4 and health["references"] > 0
    assert client.get("/docs").status_code == 200 and "/predict" in client.get("/openapi.json").text
    assert "Teach a new landmark" in client.get("/").text
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


def test_oversized_upload_and_decompression_bomb_are_refused(client: TestClient, monkeypatch):
    monkeypatch.setattr(app_module, "MAX_UPLOAD_BYTES", 1000)
    response = client.post("/predict", files={"photo": ("big.jpg", jpeg((5, 5, 5), size=(400, 400)), "image/jpeg")})
    assert response.status_code == 413
    monkeypatch.setattr(app_module, "MAX_UPLOAD_BYTES", 10 * 1024 * 1024)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    response = client.post("/predict", files={"photo": ("bomb.jpg", jpeg((5, 5, 5), size=(100, 100)), "image/jpeg")})
    assert response.status_code == 413 and "too large" in response.json()["detail"]


def test_feedback_is_stored_and_can_add_the_photo(client: TestClient, run: Path):
    upload = client.post("/predict", files={"photo": ("p.jpg", jpeg((30, 200, 40), seed=5), "image/jpeg")}).json()
    before = client.get("/health").json()["references"]
    response = client.post("/feedback", json={"upload_id": upload["upload_id"], "landmark_id": 55, "add_to_index": True})
    assert response.status_code == 200 and response.json()["added_to_index"]
    assert client.get("/health").json() == {**client.get("/health").json(), "references": before + 1, "feedback": 1}
    assert client.post("/feedback", json={"upload_id": "nope", "landmark_id": 55}).status_code == 404
    assert client.post("/feedback", json={"upload_id": upload["upload_id"], "landmark_id": 123456}).status_code == 404
    none = client.post("/feedback", json={"upload_id": upload["upload_id"], "landmark_id": -1})
    assert none.status_code == 200 and not none.json()["added_to_index"]


def test_enrol_a_new_landmark_is_recognised_at_once_and_after_a_restart(run: Path):
    purple = (150, 20, 200)
    photos = [("photos", (f"p{i}.jpg", jpeg(purple, seed=i), "image/jpeg")) for i in range(5)]
    photos.append(("photos", ("broken.jpg", b"garbage", "image/jpeg")))
    with TestClient(create_app(run, backend="torch")) as client:
        response = client.post("/landmarks", data={"name": "Purple Palace"}, files=photos)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["photos_added"] == 5 and len(body["skipped"]) == 1 and body["landmark_id"] == 1043
        prediction = client.post("/predict", files={"photo": ("q.jpg", jpeg(purple, seed=99), "image/jpeg")}).json()
        assert prediction["candidates"][0]["name"] == "Purple Palace"
        assert any(n["landmark_id"] == 1043 for n in prediction["neighbours"])
    with TestClient(create_app(run, backend="torch")) as client:  # a restart: enrolment kept
        assert any(l["name"] == "Purple Palace" and l["enrolled"] for l in client.get("/landmarks").json())
        prediction = client.post("/predict", files={"photo": ("q.jpg", jpeg(purple, seed=98), "image/jpeg")}).json()
        assert prediction["candidates"][0]["name"] == "Purple Palace"


def test_concurrent_predictions_and_enrolments(client: TestClient):
    from concurrent.futures import ThreadPoolExecutor

    def predict(i: int) -> int:
        return client.post("/predict", files={"photo": ("p.jpg", jpeg((20 * i % 255, 90, 40), seed=i), "image/jpeg")}).status_code

    def enrol(i: int) -> int:
        files = [("photos", (f"e{i}.jpg", jpeg((10, 10 * i, 200), seed=i), "image/jpeg"))]
        return client.post("/landmarks", data={"name": f"place {i}"}, files=files).status_code

    with ThreadPoolExecutor(8) as pool:  # predictions and enrolments interleaved
        futures = [pool.submit(predict, i) for i in range(16)]
        futures[2:2] = [pool.submit(enrol, i) for i in range(6)]
        statuses = [f.result() for f in futures]
    assert set(statuses) == {200}
    health = client.get("/health").json()
    assert health["landmarks"] == 4 + 6


def test_repeated_feedback_and_enrolment_add_each_photo_once_in_memory_and_after_a_restart(run: Path):
    photo = jpeg((30, 200, 40), seed=5)
    with TestClient(create_app(run, backend="torch")) as client:
        start = client.get("/health").json()["references"]
        upload = client.post("/predict", files={"photo": ("p.jpg", photo, "image/jpeg")}).json()["upload_id"]
        first = client.post("/feedback", json={"upload_id": upload, "landmark_id": 55}).json()
        again = client.post("/feedback", json={"upload_id": upload, "landmark_id": 55}).json()
        other = client.post("/feedback", json={"upload_id": upload, "landmark_id": 7}).json()
        assert first["added_to_index"] and not again["added_to_index"] and other["added_to_index"]
        same = [("photos", ("a.jpg", photo, "image/jpeg")), ("photos", ("b.jpg", photo, "image/jpeg"))]
        assert client.post("/landmarks", data={"name": "Green Gate"}, files=same).json()["photos_added"] == 1
        assert client.post("/landmarks", data={"name": "green gate"}, files=same).json()["photos_added"] == 0
        live = client.get("/health").json()
        assert live["references"] == start + 3 and live["feedback"] == 3
        counts = {l["name"]: l["references"] for l in client.get("/landmarks").json()}
    with TestClient(create_app(run, backend="torch")) as client:  # a restart replays exactly what memory held
        assert client.get("/health").json() == live
        assert {l["name"]: l["references"] for l in client.get("/landmarks").json()} == counts


def test_a_png_declaring_a_huge_size_is_refused_without_decoding(client: TestClient):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30_000, 30_000, 8, 2, 0, 0, 0)  # 900 MP of RGB
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    response = client.post("/predict", files={"photo": ("bomb.png", bomb, "image/png")})
    assert response.status_code == 413 and "too large" in response.json()["detail"]


def test_a_request_over_the_size_cap_is_refused_before_it_is_read(client: TestClient, monkeypatch):
    monkeypatch.setattr(app_module, "MAX_REQUEST_BYTES", 5000)
    files = [("photos", (f"p{i}.jpg", jpeg((9, 9, 9), seed=i, size=(200, 200)), "image/jpeg")) for i in range(4)]
    response = client.post("/landmarks", data={"name": "Heavy"}, files=files)
    assert response.status_code == 413 and "larger than" in response.json()["detail"]
