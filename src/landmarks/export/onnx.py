"""ONNX export of a run's model (uint8 photos in, normalised embeddings and logits out), checked on real photos.

Running the exported file is ``landmarks.recognize.embed.OnnxEmbedder``'s job; this module only writes and checks files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from torch import nn

from landmarks.data.images import decode_image
from landmarks.errors import DataError
from landmarks.evaluate.metrics import accuracy, global_average_precision
from landmarks.models.onnx_graph import with_static_padding, write_onnx
from landmarks.recognize.embed import EMBEDDING, INPUT, LOGITS, OnnxEmbedder, TorchEmbedder
from landmarks.recognize.recognizer import Recognizer
from landmarks.run_folder import RunFolder

log = logging.getLogger(__name__)


class ExportWrapper(nn.Module):
    """uint8 NHWC photos -> (L2-normalised embedding, logits): the whole preprocessing inside the graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        embedding, logits = self.model(x)
        return F.normalize(embedding, dim=1), logits


def export_onnx(model: nn.Module, out_path: Path) -> Path:
    """Write ``model.onnx`` with a dynamic batch axis (written to a temporary file, then renamed)."""
    size = int(model.input_size_px)
    wrapped = ExportWrapper(with_static_padding(model.eval(), size))
    return write_onnx(wrapped, torch.zeros(2, size, size, 3, dtype=torch.uint8), out_path, INPUT, [EMBEDDING, LOGITS])


CALIBRATION_PHOTOS = 128  # training photos whose activation ranges set the int8 scales


def quantize_int8(onnx_path: Path, out_path: Path, calibration: np.ndarray, batch_size: int = 16) -> Path:
    """Static int8 quantization (QDQ, per-channel weights, activation ranges from ``calibration`` photos).

    ONNX Runtime recommends static quantization for CNNs: dynamic quantization left validation accuracy of a
    glr run 3.5 points lower, static left it unchanged (benchmarks/RESULTS.md).
    """
    class Photos(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration[i : i + batch_size] for i in range(0, len(calibration), batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: np.ascontiguousarray(batch)}

    logging.disable(logging.WARNING)  # the quantizer logs a warning per tensor it leaves in float,
    ort.set_default_logger_severity(3)  # ONNX Runtime one per initializer its calibration graph drops
    try:
        quantize_static(str(onnx_path), str(out_path), Photos(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
    finally:
        logging.disable(logging.NOTSET)
        ort.set_default_logger_severity(2)
    return out_path


def _sample_photos(run: RunFolder, split: str, limit: int | None) -> tuple[list[str], np.ndarray, list[str]]:
    """Paths, landmark ids and image ids of a run's photos from split.csv (only those that could be read)."""
    frame = run.read_split()
    frame = frame[(frame["split"] == split) & frame["valid"]]
    if limit:
        frame = frame.head(limit)
    return frame["path"].tolist(), frame["landmark_id"].to_numpy(), frame["id"].tolist()


def _recognizer_without(run: RunFolder, image_ids: list[str]) -> Recognizer:
    """The run's trained Recognizer (PyTorch) whose index leaves out these photos, so that none of them finds itself."""
    recognizer = Recognizer.load(run.path, backend="torch", trained_only=True)
    if recognizer.index is not None:
        excluded = set(image_ids)
        recognizer.index.remove([i for i, image_id in enumerate(recognizer.index.image_ids) if image_id in excluded])
    return recognizer


def _split_metrics(recognizer: Recognizer, onnx_path: Path, paths: list[str], truth: np.ndarray) -> dict:
    """Accuracy and GAP of these photos with ``onnx_path`` as the recognizer's embedder."""
    recognizer.embedder = OnnxEmbedder(onnx_path, tta_flip=recognizer.config.tta_flip)
    predictions, _ = recognizer.predict_paths(paths)
    predicted = np.array([p.landmark_id if p else -1 for p in predictions])
    confidence = np.array([p.confidence if p else 0.0 for p in predictions])
    return {"accuracy": accuracy(predicted, truth), "gap": global_average_precision(predicted, confidence, truth)}


def check_agreement(model: nn.Module, onnx_path: Path, photos: np.ndarray) -> dict[str, str]:
    """ONNX Runtime against PyTorch on real photos; one sentence when their embeddings differ by more than 1e-4."""
    torch_embedding, torch_logits = TorchEmbedder(model)(photos)
    onnx_embedding, onnx_logits = OnnxEmbedder(onnx_path)(photos)
    difference = float(np.abs(torch_embedding - onnx_embedding).max())
    if difference > 1e-4:
        raise DataError(f"ONNX Runtime and PyTorch disagree on real photos (max embedding difference {difference:.2e} "
                        "> 1e-4); no model.onnx was written.")
    return {"max_abs_diff_embedding": f"{difference:.2e}",
            "max_abs_diff_logits": f"{float(np.abs(torch_logits - onnx_logits).max()):.2e}", "agreement": "ok (<= 1e-4)"}


def export_run(run_dir: Path, quantize: str | None = None, check_photos: int = 32) -> dict[str, object]:
    """Export, then verify on real photos that ONNX Runtime and PyTorch agree; optionally an int8 model too.

    Each model is written under a temporary name and renamed only once it passed its check: a failed check leaves
    no model.onnx behind (and keeps an earlier one), so ``backend=auto`` never serves an unchecked model."""
    run = RunFolder(run_dir)
    run.require(RunFolder.MODEL, RunFolder.WEIGHTS, RunFolder.SPLIT)
    model = run.load_model()
    paths = _sample_photos(run, "val", check_photos)[0]
    if len(paths) < check_photos:
        paths += _sample_photos(run, "train", check_photos - len(paths))[0]
    photos = np.stack([decode_image(p, model.input_size_px) for p in paths])
    with run.staged(run.onnx) as staged:
        export_onnx(model, staged)
        report: dict[str, object] = {"checked_photos": len(paths), **check_agreement(model, staged, photos)}
        report["size_mb"] = round(staged.stat().st_size / 1e6, 2)
    report = {RunFolder.ONNX: str(run.onnx), **report}
    if quantize == "int8":
        calibration = _sample_photos(run, "train", CALIBRATION_PHOTOS)[0]
        with run.staged(run.onnx_int8) as staged:
            quantize_int8(run.onnx, staged, np.stack([decode_image(p, model.input_size_px) for p in calibration]))
            size_mb = staged.stat().st_size / 1e6
        report[RunFolder.ONNX_INT8] = f"{run.onnx_int8} ({size_mb:.2f} MB)"
        report["calibration_photos"] = len(calibration)
        paths, truth, image_ids = _sample_photos(run, "val", None)
        report["validation_photos"] = len(paths)
        if not paths:
            report["int8 check"] = "skipped: the run has no validation split to compare fp32 and int8 on"
            return report
        recognizer = _recognizer_without(run, image_ids)
        fp32 = _split_metrics(recognizer, run.onnx, paths, truth)
        int8 = _split_metrics(recognizer, run.onnx_int8, paths, truth)
        report["fp32 accuracy / GAP"] = f"{fp32['accuracy']:.4f} / {fp32['gap']:.4f}"
        report["int8 accuracy / GAP"] = f"{int8['accuracy']:.4f} / {int8['gap']:.4f}"
        report["int8 change accuracy / GAP"] = f"{int8['accuracy'] - fp32['accuracy']:+.4f} / {int8['gap'] - fp32['gap']:+.4f}"
    return report
