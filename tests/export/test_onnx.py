"""Export round trip: model.onnx agrees with PyTorch, and the Recognizer picks it up with the same predictions."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from landmarks.export.onnx import export_run
from landmarks.recognize.embed import OnnxEmbedder
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


def test_mirror_images_go_with_their_photos_in_one_call_and_give_the_same_embeddings(run: Path):
    """With tta_flip, photo and mirror image run as one batch (chunks of PHOTOS_PER_CALL photos): the same embeddings
    and logits as a call for the photos and one for their mirror images."""
    from landmarks.recognize.embed import PHOTOS_PER_CALL

    export_run(run, check_photos=4)
    embedder = OnnxEmbedder(run / "model.onnx", tta_flip=True)
    plain = OnnxEmbedder(run / "model.onnx")
    images = np.random.default_rng(0).integers(0, 256, (PHOTOS_PER_CALL + 3, 32, 32, 3), dtype=np.uint8)
    for batch in (images[:1], images):
        embedding, logits = embedder(batch)
        photo, photo_logits = plain(batch)
        mirror, mirror_logits = plain(batch[:, :, ::-1])
        summed = photo + mirror
        assert np.allclose(embedding, summed / np.linalg.norm(summed, axis=1, keepdims=True), atol=1e-5)
        assert np.allclose(logits, (photo_logits + mirror_logits) / 2, atol=1e-5)
    assert embedder(images[:0])[0].shape == (0, 512)


def test_a_failed_check_leaves_no_model_onnx(run: Path, monkeypatch: pytest.MonkeyPatch):
    """The model is written under a temporary name and renamed only after ONNX Runtime agreed with PyTorch."""
    from landmarks.errors import DataError
    from landmarks.export import onnx as onnx_export

    def disagree(model, path, photos):
        assert path.is_file() and path.name != "model.onnx"  # checked under its temporary name
        raise DataError("ONNX Runtime and PyTorch disagree on real photos")

    monkeypatch.setattr(onnx_export, "check_agreement", disagree)
    with pytest.raises(DataError, match="disagree"):
        export_run(run, check_photos=4)
    assert not (run / "model.onnx").exists()
    assert [p.name for p in run.iterdir() if "onnx" in p.name] == []  # no temporary file left either
    assert not isinstance(Recognizer.load(run).embedder, OnnxEmbedder)  # backend=auto keeps PyTorch


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
    """The int8 model is smaller, and the reported change is int8 minus fp32 on the run's 8 validation photos."""
    report = export_run(run, quantize="int8", check_photos=4)
    assert (run / "model.int8.onnx").stat().st_size < (run / "model.onnx").stat().st_size
    assert report["validation_photos"] == 8
    fp32, int8, change = ([float(v) for v in report[f"{kind} accuracy / GAP"].split(" / ")]
                          for kind in ("fp32", "int8", "int8 change"))
    assert all(0 <= v <= 1 for v in fp32 + int8)
    assert change == pytest.approx([int8[0] - fp32[0], int8[1] - fp32[1]], abs=2e-4)


@pytest.mark.parametrize("stage", [None, 3])
def test_same_padding_is_static_and_folded_into_the_convolutions(tmp_path: Path, stage: int | None):
    """timm's TF-style 'same' convs (EfficientNet-Lite) export without a run-time Pad: ONNX Runtime folds it.
    The glr descriptor (of the final features, or of feature level 3) is in the graph and gives what PyTorch gives."""
    import onnxruntime as ort
    import torch

    from landmarks.config import ModelConfig
    from landmarks.export.onnx import ExportWrapper, export_onnx
    from landmarks.models.registry import build_model

    model = build_model(ModelConfig(architecture="glr", backbone="tf_efficientnet_lite0", pretrained="none",
                                    embedding_dim=64, descriptor_dims=16, descriptor_stage=stage), num_classes=3,
                        image_size_px=64).eval()
    with torch.no_grad():  # a fitted descriptor, part of the exported graph
        images = (torch.rand(24, 3, 64, 64) - model.mean) / model.std
        feature_map, (tapped,) = model.backbone.forward_intermediates(images, indices=[stage or 0])
        described = model.head.pool(feature_map) if stage is None else model.head.descriptor_pool(tapped)
        model.head.descriptor.fit(described.numpy())
    path = export_onnx(model, tmp_path / "model.onnx")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert "Pad" not in {n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node}
    photos = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    embedding, logits = session.run(["embedding", "logits"], {"images": photos})
    with torch.inference_mode():
        expected_embedding, expected_logits = ExportWrapper(model)(torch.from_numpy(photos))
    assert embedding.shape == (3, 64 + 16) and np.abs(embedding[:, 64:]).sum() > 0
    assert np.abs(embedding - expected_embedding.numpy()).max() <= 1e-4
    assert np.abs(logits - expected_logits.numpy()).max() <= 1e-3
