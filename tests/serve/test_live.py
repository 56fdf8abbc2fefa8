"""/live through FastAPI's TestClient: the bundle's files only, cross-origin isolation, prototypes that follow the
service's references, and the landmarks' info in /landmarks and /predict."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from landmarks.export.onnx import export_onnx
from landmarks.export.web import PAGE_FILES, page_dir
from landmarks.run_folder import RunFolder
from landmarks.serve.app import create_app
from landmarks.serve.settings import Settings

INFO = {7: (48.8584, 2.2945, "https://en.wikipedia.org/wiki/Eiffel_Tower")}


def jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 32), colour).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture
def run(tiny_run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(tiny_run_dir, copy)
    export_onnx(RunFolder(copy).load_model(), copy / "model.onnx")
    labels = pd.read_csv(copy / "labels.csv")
    labels["latitude"] = [INFO.get(i, (None,) * 3)[0] for i in labels["landmark_id"]]
    labels["longitude"] = [INFO.get(i, (None,) * 3)[1] for i in labels["landmark_id"]]
    labels["url"] = [INFO.get(i, ("", "", ""))[2] for i in labels["landmark_id"]]
    labels.to_csv(copy / "labels.csv", index=False)
    return copy


@pytest.fixture
def client(run: Path):
    settings = Settings(predict_per_minute=0, suggestions_per_hour=0, max_pending_per_client=0)
    with TestClient(create_app(run, settings=settings)) as client:
        yield client


def test_live_serves_the_bundle_and_nothing_else(client: TestClient):
    response = client.get("/live", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/live/"
    page = client.get("/live/")
    assert page.status_code == 200 and 'id="live-answer"' in page.text
    assert page.headers["cross-origin-opener-policy"] == "same-origin"
    assert page.headers["cross-origin-embedder-policy"] == "require-corp"
    manifest = client.get("/live/manifest.json").json()
    assert manifest["predict_url"] == "/predict" and manifest["model"]["input_size_px"] == 32
    for name in manifest["files"]:
        response = client.get(f"/live/{name}")
        assert response.status_code == 200, name
    assert client.get("/live/model.onnx").content == (Path(client.app.state.service.recognizer.run_dir) / "model.onnx").read_bytes()
    for bad in ("config.yaml", "../config.yaml", "index/index.faiss", "%2e%2e/labels.csv", "ort/../../../etc/passwd"):
        assert client.get(f"/live/{bad}").status_code == 404, bad


def test_live_prototypes_follow_the_service_references(client: TestClient):
    before = client.get("/live/manifest.json").json()["prototypes"]
    recognizer = client.app.state.service.recognizer
    new_id = recognizer.next_landmark_id()
    vectors = np.random.default_rng(0).normal(size=(3, before["dim"])).astype(np.float32)
    with client.app.state.service.index_lock.write():
        recognizer.add_references(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), ["a", "b", "c"], new_id, "New Hall")
    after = client.get("/live/manifest.json").json()["prototypes"]
    assert new_id in after["landmark_ids"] and new_id not in before["landmark_ids"]
    assert len(client.get("/live/prototypes.bin").content) == after["count"] * after["dim"] * 2
    names = {l["landmark_id"]: l["name"] for l in client.get("/live/landmarks.json").json()}
    assert names[new_id] == "New Hall"


def test_landmark_info_in_the_api(client: TestClient):
    landmarks = {l["landmark_id"]: l for l in client.get("/landmarks").json()}
    assert landmarks[7]["info"] == {"latitude": 48.8584, "longitude": 2.2945,
                                    "url": "https://en.wikipedia.org/wiki/Eiffel_Tower", "description": None}
    assert landmarks[55]["info"] == {"latitude": None, "longitude": None, "url": None, "description": None}
    live = {l["landmark_id"]: l for l in client.get("/live/landmarks.json").json()}
    assert live[7]["latitude"] == 48.8584 and "latitude" not in live[55]
    client.app.state.service.recognizer.config.min_confidence = 0.0  # every answer known
    answer = client.post("/predict", files={"photo": ("red.jpg", jpeg((220, 30, 30)), "image/jpeg")}).json()
    assert answer["known"] and answer["landmark_id"] == 7 and answer["info"] == landmarks[7]["info"]
    client.app.state.service.recognizer.config.min_confidence = 1.01  # none known: no info
    answer = client.post("/predict", files={"photo": ("red.jpg", jpeg((220, 30, 30)), "image/jpeg")}).json()
    assert not answer["known"] and answer["info"] == landmarks[55]["info"]


def test_predict_takes_the_photo_location(client: TestClient):
    client.app.state.service.recognizer.config.min_confidence = 0.0
    red = {"photo": ("red.jpg", jpeg((220, 30, 30)), "image/jpeg")}
    in_paris = client.post("/predict", files=red, data={"latitude": "48.86", "longitude": "2.35"}).json()
    assert in_paris["landmark_id"] == 7
    in_sydney = client.post("/predict", files=red, data={"latitude": "-33.86", "longitude": "151.21"}).json()
    assert in_sydney["landmark_id"] != 7  # the Eiffel Tower is 17,000 km away; the others have no coordinates
    assert {c["landmark_id"]: c["score"] for c in in_sydney["candidates"]}.get(7, 0.0) < 1e-3
    half = client.post("/predict", files=red, data={"latitude": "48.86"})
    assert half.status_code == 422 and "both" in half.json()["detail"]
    assert client.post("/predict", files=red, data={"latitude": "95", "longitude": "2"}).status_code == 422


def _wait_for_export(client: TestClient) -> None:
    builder = client.app.state.live_builder
    if builder.thread is not None:
        builder.thread.join(timeout=600)


def test_live_loads_on_a_run_never_exported_and_builds_its_device_model_once(tiny_run_dir: Path, tmp_path: Path):
    run = tmp_path / "bare"
    shutil.copytree(tiny_run_dir, run)
    exports = []
    with TestClient(create_app(run, backend="torch")) as client:
        builder = client.app.state.live_builder
        original = builder.export
        builder.export = lambda *args, **kwargs: (exports.append(args), original(*args, **kwargs))[1]
        assert client.get("/live/").status_code == 200  # the page itself, which starts the export
        for name in PAGE_FILES:  # served apart from the bundle: the page can say what is happening
            response = client.get(f"/live/{name}")
            assert response.status_code == 200 and response.content == (page_dir() / name).read_bytes(), name
        waiting = client.get("/live/manifest.json")
        if waiting.status_code == 503:  # still exporting (on a fast machine it may be done already)
            body = waiting.json()
            assert body["building"] is True and "landmarks export RUN_DIR --quantize int8" in body["detail"]
            assert "so far" in body["detail"] and waiting.headers["retry-after"] == "3"
            assert str(tmp_path) not in waiting.text
        _wait_for_export(client)
        manifest = client.get("/live/manifest.json")
        assert manifest.status_code == 200 and manifest.json()["model"]["variant"] == "int8"
        assert RunFolder(run).onnx.is_file() and RunFolder(run).onnx_int8.is_file()
        for name in manifest.json()["files"]:
            assert client.get(f"/live/{name}").status_code == 200, name
        client.get("/live/manifest.json")
    assert len(exports) == 1


def test_live_says_what_to_run_when_the_device_model_cannot_be_built_and_names_no_server_path(tiny_run_dir: Path,
                                                                                            tmp_path: Path):
    run = tmp_path / "bare"
    shutil.copytree(tiny_run_dir, run)
    (run / RunFolder.SPLIT).unlink()  # the export checks the model on the run's photos: it cannot run here
    with TestClient(create_app(run, backend="torch")) as client:
        client.get("/live/manifest.json")
        _wait_for_export(client)
        response = client.get("/live/manifest.json")
        assert response.status_code == 503 and response.json()["building"] is False
        assert "run `landmarks export RUN_DIR --quantize int8` on the server" in response.json()["detail"]
        answers = [response, client.get("/live/"), client.get("/live/live.js"), client.get("/live/nothing.txt"),
                   client.get("/live/prototypes.bin"), client.get("/health"), client.get("/landmarks"),
                   client.post("/predict", files={"photo": ("x.jpg", b"not a photo", "image/jpeg")})]
        for answer in answers:
            assert str(run) not in answer.text and str(tmp_path) not in answer.text, answer.url
