"""Export round trip: model.onnx agrees with PyTorch, and the Recognizer picks it up with the same predictions."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from landmarks.export.onnx import OnnxEmbedder, export_run
from landmarks.recognize.recognizer import Recognizer


@pytest.fixture
def run(tiny_run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(tiny_run_dir, copy)
    return copy


def test_export_writes_a_checked_model_with_a_dynamic_batch(run: Path):
    report = export_run(run, check_photos=8)
    assert report["agreement"].startswith("ok") and float(report["max_abs_diff_embedding"]) <= 1e-4
    graph = onnx.load(run / "model.onnx").graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["embedding", "logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    embedder = OnnxEmbedder(run / "model.onnx")
    for batch in (1, 5):
        embedding, logits = embedder(np.zeros((batch, 32, 32, 3), np.uint8))
        assert embedding.shape == (batch, 512) and logits.shape == (batch, 4)


def test_recognizer_uses_onnx_when_present_and_agrees_with_torch(run: Path, tiny_gldv2: Path):
    export_run(run, check_photos=4)
    photos = sorted(str(p) for p in (tiny_gldv2 / "test").rglob("*.jpg"))
    onnx_recognizer = Recognizer.load(run)  # auto: model.onnx exists
    torch_recognizer = Recognizer.load(run, backend="torch")
    assert type(onnx_recognizer.embedder).__name__ == "OnnxEmbedder"
    assert type(torch_recognizer.embedder).__name__ == "TorchEmbedder"
    a, _ = onnx_recognizer.predict_paths(photos)
    b, _ = torch_recognizer.predict_paths(photos)
    assert [p.landmark_id for p in a] == [p.landmark_id for p in b]
    assert np.allclose([p.confidence for p in a], [p.confidence for p in b], atol=1e-4)


def test_int8_export_reports_the_change_in_accuracy_and_gap(run: Path):
    report = export_run(run, quantize="int8", check_photos=4)
    assert (run / "model.int8.onnx").stat().st_size < (run / "model.onnx").stat().st_size
    assert "int8 change accuracy / GAP" in report and report["validation_photos"] > 0
