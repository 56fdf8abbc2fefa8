"""A ViT run end to end without a network: train (randomly initialised, two blocks, tiny photos) -> export (ONNX
parity <= 1e-4, int8) -> predict -> /predict -> the live bundle; and the bundle's sentence for a model too large."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from landmarks.cli import main
from landmarks.export.web import DEVICE_MODEL_LIMIT_BYTES, build_bundle, device_model_note
from landmarks.recognize.recognizer import Recognizer
from landmarks.serve.app import create_app
from landmarks.serve.settings import Settings

UNLIMITED = dict(predict_per_minute=0, suggestions_per_hour=0, max_pending_per_client=0)
VITS = {
    # DINOv2: GeM over the patch grid, the descriptor from block 0's patch tokens
    "dinov2": ["model.backbone=vit_small_patch14_dinov2", "data.image_size_px=56", "model.pooling=gem",
               "model.descriptor_stage=0"],
    # a CLIP image tower: its class token
    "clip": ["model.backbone=vit_xsmall_patch16_clip_224", "data.image_size_px=64", "model.pooling=cls",
             "model.descriptor_stage=1"],
}


@pytest.fixture(params=sorted(VITS))
def vit_run(request: pytest.FixtureRequest, tiny_gldv2: Path, tmp_path: Path, capsys) -> Path:
    run = tmp_path / "run"
    overrides = [*VITS[request.param], "model.pretrained=none", "model.backbone_kwargs={depth: 2}", "train.epochs=2",
                 "train.feature_views=1", "train.workers=0", "train.batch_size=16", f"data.cache_dir={tmp_path / 'cache'}"]
    assert main(["-q", "train", "--data", str(tiny_gldv2), "--config", "glr", "--out", str(run), *overrides]) == 0
    capsys.readouterr()
    return run


def jpeg(path: Path) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).save(buffer, "JPEG")
    return buffer.getvalue()


def test_a_vit_trains_exports_predicts_serves_and_goes_live(vit_run: Path, tiny_gldv2: Path, capsys):
    meta = json.loads((vit_run / "model.json").read_text())
    assert meta["config"]["backbone"].startswith("vit_") and meta["config"]["backbone_kwargs"] == {"depth": 2}
    assert meta["embedding_dim"] == 512 + 96 and len(json.loads((vit_run / "metrics.json").read_text())) > 0

    assert main(["-q", "export", str(vit_run), "--quantize", "int8"]) == 0
    report = capsys.readouterr().out
    assert "agreement                    ok (<= 1e-4)" in report
    difference = float(next(line for line in report.splitlines() if line.startswith("max_abs_diff_embedding")).split()[1])
    assert difference <= 1e-4
    assert (vit_run / "model.int8.onnx").stat().st_size < (vit_run / "model.onnx").stat().st_size / 2
    graph = onnx.load(str(vit_run / "model.int8.onnx")).graph
    assert any(node.op_type == "QuantizeLinear" for node in graph.node)

    photos = sorted((tiny_gldv2 / "test").rglob("*.jpg"))
    assert main(["-q", "predict", str(vit_run), *map(str, photos), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == len(photos) and all(row["top"] for row in rows)
    onnx_answers = [row["top"][0]["landmark_id"] for row in rows]
    torch_answers = [p.candidates[0].landmark_id for p in Recognizer.load(vit_run, backend="torch").predict_paths(photos)[0]]
    assert onnx_answers == torch_answers  # the int8 model is the device's; predict runs model.onnx

    with TestClient(create_app(vit_run, settings=Settings(**UNLIMITED))) as client:
        response = client.post("/predict", files={"photo": ("q.jpg", jpeg(photos[-1]), "image/jpeg")})
        assert response.status_code == 200, response.text
        assert response.json()["candidates"][0]["landmark_id"] == onnx_answers[-1]
        manifest = client.get("/live/manifest.json").json()
        assert manifest["model"]["variant"] == "int8" and manifest["model"]["too_large"] is None
        assert client.get("/live/model.onnx").content == (vit_run / "model.int8.onnx").read_bytes()


def test_the_bundle_says_in_one_sentence_when_its_model_is_too_large(vit_run: Path, monkeypatch, caplog):
    assert device_model_note(DEVICE_MODEL_LIMIT_BYTES, "fp32") is None
    note = device_model_note(88_300_000, "fp32")
    assert note == ("The device model (fp32) is 88.3 MB, more than the 40 MB a phone should download for the live "
                    "page: export with --quantize int8 (about 4x smaller) or train a smaller backbone.")
    assert main(["-q", "export", str(vit_run)]) == 0
    monkeypatch.setattr("landmarks.export.web.DEVICE_MODEL_LIMIT_BYTES", 1000)
    bundle = build_bundle(Recognizer.load(vit_run), vit_run)
    assert bundle.manifest["model"]["too_large"].startswith("The device model (fp32) is ")
    assert bundle.manifest["model"]["too_large"] in caplog.text
    assert np.isclose(bundle.manifest["model"]["size_bytes"], (vit_run / "model.onnx").stat().st_size)
