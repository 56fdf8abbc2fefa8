"""``landmarks predict``: many photos through the Recognizer, streamed out as text, JSON lines or CSV."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import IO, Sequence

from landmarks.data.catalog import NO_LANDMARK_NAME
from landmarks.recognize.embed import decode_batches
from landmarks.recognize.geo import read_exif_location
from landmarks.recognize.recognizer import Prediction, Recognizer
from landmarks.utils import progress


def _row(path: Path, prediction: Prediction, top_k: int, info: dict) -> dict:
    """One photo's answer; ``info``: the answer's latitude, longitude, url, description (what the run knows)."""
    return {
        "path": str(path),
        "landmark_id": prediction.landmark_id if prediction.known else -1,
        "name": prediction.name if prediction.known else NO_LANDMARK_NAME,
        "confidence": round(prediction.confidence, 4),
        "top": [{"landmark_id": c.landmark_id, "name": c.name, "score": round(c.score, 4)} for c in prediction.candidates[:top_k]],
        "neighbours": [n.image_id for n in prediction.neighbours],
        "info": info if prediction.known else {},
    }


def predict_to_stream(
    run_dir: Path,
    images: Sequence[Path],
    top_k: int = 3,
    as_json: bool = False,
    out: Path | None = None,
    backend: str = "auto",
    batch_size: int = 32,
    workers: int = 2,
    trained_only: bool = False,
) -> int:
    """Predict every photo, decoding the next batch while the current one runs; returns an exit status."""
    recognizer = Recognizer.load(run_dir, backend=backend, trained_only=trained_only)
    handle: IO[str] = open(out, "w", newline="") if out else sys.stdout
    fmt = "csv" if out and out.suffix == ".csv" else "json" if (as_json or out) else "text"
    if fmt == "text":
        meaning = "the estimated chance that the answer is right" if recognizer.calibration else "the fused score"
        print(f"confidence: {meaning}; below {recognizer.config.min_confidence:.2f} the answer is "
              f"\"{NO_LANDMARK_NAME}\"", file=sys.stderr)
    writer = csv.writer(handle) if fmt == "csv" else None
    if writer:
        writer.writerow(["path", "landmark_id", "name", "confidence", "top"])
    failed = 0
    bar = progress(None, total=len(images), desc="predicting", unit="img")
    try:
        for positions, pixels, failures in decode_batches(images, recognizer.input_size_px, batch_size, workers):
            locations = [read_exif_location(images[p]) for p in positions]  # EXIF GPS: the geo prior
            predictions = recognizer.predict(pixels, locations) if len(pixels) else []
            for position, prediction in zip(positions, predictions):
                row = _row(images[position], prediction, top_k, recognizer.info_of(prediction.landmark_id))
                if writer:
                    top = " ".join(f"{c['landmark_id']}:{c['score']}" for c in row["top"])
                    writer.writerow([row["path"], row["landmark_id"], row["name"], row["confidence"], top])
                elif fmt == "json":
                    handle.write(json.dumps(row) + "\n")
                else:
                    tops = ", ".join(f"{c['name']} {c['score']:.2f}" for c in row["top"])
                    handle.write(f"{row['path']}: {row['name']} ({row['confidence']:.2f})  [{tops}]\n")
            for path, reason in failures:
                failed += 1
                print(f"landmarks: skipped {path}: {reason}", file=sys.stderr)
            bar.update(len(positions) + len(failures))
    finally:
        bar.close()
        if out:
            handle.close()
    if failed:
        print(f"landmarks: {failed} of {len(images)} files could not be read and were skipped.", file=sys.stderr)
    if out:
        print(f"wrote {len(images) - failed} predictions to {out}", file=sys.stderr)
    return 1 if failed == len(images) else 0
