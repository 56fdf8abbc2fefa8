"""Evaluation reports: metrics.json, per-landmark CSV, confused pairs and plots, all through the Recognizer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from landmarks.data.catalog import NO_LANDMARK, NO_LANDMARK_NAME, read_catalog
from landmarks.data.images import decode_image
from landmarks.errors import DataError
from landmarks.evaluate import metrics, plots
from landmarks.recognize.embed import embed_paths
from landmarks.recognize.recognizer import Prediction, Recognizer
from landmarks.utils import atomic_path, write_json

log = logging.getLogger(__name__)


def compute_metrics(
    predictions: Sequence[Prediction], true_ids: Sequence[int], recognizer: Recognizer, embeddings: np.ndarray
) -> dict[str, float | int]:
    """Accuracy, top-5 accuracy, GAP and retrieval mAP@100 of predictions against the truth (-1 = no landmark)."""
    true = np.asarray(true_ids, dtype=np.int64)
    predicted = np.array([p.landmark_id for p in predictions], dtype=np.int64)
    confidences = np.array([p.confidence for p in predictions], dtype=np.float64)
    ranked = np.full((len(predictions), 5), NO_LANDMARK, dtype=np.int64)
    for row, prediction in enumerate(predictions):
        ids = [c.landmark_id for c in prediction.candidates[:5]]
        ranked[row, : len(ids)] = ids
    result: dict[str, float | int] = {
        "queries": int(len(true)),
        "queries_with_landmark": int((true != NO_LANDMARK).sum()),
        "accuracy": metrics.accuracy(predicted, true),
        "top5_accuracy": metrics.top_k_accuracy(ranked, true, 5),
        "gap": metrics.global_average_precision(predicted, confidences, true),
    }
    if recognizer.index is not None and len(recognizer.index) and len(embeddings):
        _, _, retrieved = recognizer.search(embeddings, min(100, len(recognizer.index)))
        counts = [recognizer.index.count_of(int(t)) if t != NO_LANDMARK else 0 for t in true]
        result["map_at_100"] = metrics.mean_average_precision_at_k(retrieved, true, counts, k=100)
    landmark = true != NO_LANDMARK
    if landmark.any() and (~landmark).any():
        result["mean_confidence_landmark"] = float(confidences[landmark].mean())
        result["mean_confidence_non_landmark"] = float(confidences[~landmark].mean())
    # known answers (confidence >= recognize.min_confidence): how many are right, how many landmark photos get one
    known = np.array([p.known and p.landmark_id != NO_LANDMARK for p in predictions], dtype=bool)
    right_and_known = known & (predicted == true) & landmark
    result["known_answers"] = int(known.sum())
    result["precision_of_known_answers"] = float(right_and_known.sum() / known.sum()) if known.any() else 0.0
    result["coverage"] = float(right_and_known[landmark].mean()) if landmark.any() else 0.0
    if (~landmark).any():
        result["non_landmark_named"] = float(known[~landmark].mean())
    return result


def write_report(
    out_dir: Path,
    predictions: Sequence[Prediction],
    true_ids: Sequence[int],
    names: dict[int, str],
    result: dict,
) -> None:
    """metrics.json, per_landmark.csv, confused_pairs.csv and the confidence histogram in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    predicted = [p.landmark_id for p in predictions]
    write_json(out_dir / "metrics.json", result)
    metrics.per_landmark_report(predicted, true_ids, names).to_csv(out_dir / "per_landmark.csv", index=False)
    metrics.confused_pairs(predicted, true_ids, names).to_csv(out_dir / "confused_pairs.csv", index=False)
    true = np.asarray(true_ids)
    confidences = np.array([p.confidence for p in predictions])
    if (true == NO_LANDMARK).any():
        plots.plot_confidence_histogram(
            confidences[true != NO_LANDMARK], confidences[true == NO_LANDMARK], out_dir / "plots" / "confidence.png"
        )


def collage(
    images: Sequence[np.ndarray], predictions: Sequence[Prediction], true_ids: Sequence[int], names: dict[int, str], out: Path
) -> None:
    """plots/predictions.png: photos with predicted name and confidence, mistakes in red."""
    true_names = [names.get(int(t), str(t)) if t != NO_LANDMARK else NO_LANDMARK_NAME for t in true_ids]
    plots.plot_predictions(
        list(images), true_names, [p.name if p.known else NO_LANDMARK_NAME for p in predictions],
        [p.confidence for p in predictions], out
    )


def evaluate_run(run_dir: Path, data_dir: Path, backend: str = "auto", out_dir: Path | None = None,
                 trained_only: bool = False) -> tuple[dict, Path]:
    """Metrics of a run on DIR's test.csv and *_solution.csv; returns the metrics and the report folder.

    The references include what the web service approved unless ``trained_only``."""
    catalog = read_catalog(data_dir, "test")
    true = catalog.frame["landmark_id"].to_numpy()
    if (true == NO_LANDMARK).all():
        raise DataError(f"{data_dir} has no ground truth for its test photos (a *_solution.csv with id,landmarks).")
    recognizer = Recognizer.load(run_dir, backend=backend, trained_only=trained_only)
    paths = catalog.frame["path"].tolist()
    embeddings, logits, valid, failures = embed_paths(recognizer.embedder, paths, desc="evaluating")
    predictions = recognizer.score(embeddings, logits) if valid.any() else []
    true_valid = true[valid]
    result = compute_metrics(predictions, true_valid, recognizer, embeddings)
    result["unreadable_images"] = len(failures)
    result["data"] = str(Path(data_dir).resolve())
    out_dir = out_dir or Path(run_dir) / "evaluation" / Path(data_dir).resolve().name
    names = {**recognizer.names, **catalog.names}
    write_report(out_dir, predictions, true_valid, names, result)
    shown = np.random.default_rng(0).choice(len(predictions), size=min(16, len(predictions)), replace=False)
    valid_paths = np.asarray(paths)[valid]
    collage([decode_image(valid_paths[i], 160) for i in shown], [predictions[i] for i in shown], true_valid[shown], names,
            out_dir / "plots" / "predictions.png")
    return result, out_dir


def write_submission(run_dir: Path, data_dir: Path, out: Path, backend: str = "auto",
                     trained_only: bool = False) -> tuple[int, int]:
    """Kaggle's ``id,landmarks`` with ``"<landmark_id> <score>"``; an unreadable photo gets an empty prediction."""
    catalog = read_catalog(data_dir, "test")
    recognizer = Recognizer.load(run_dir, backend=backend, trained_only=trained_only)
    predictions, failures = recognizer.predict_paths(catalog.frame["path"].tolist())
    rows = [
        f"{p.landmark_id} {p.confidence:.6f}" if p is not None and p.landmark_id != NO_LANDMARK else ""
        for p in predictions
    ]
    with atomic_path(out) as tmp:
        pd.DataFrame({"id": catalog.frame["id"], "landmarks": rows}).to_csv(tmp, index=False)
    return len(rows), len(failures)
