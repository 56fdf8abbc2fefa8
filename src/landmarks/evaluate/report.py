"""Evaluation reports: metrics.json, per-landmark CSV, confused pairs and plots, all through the Recognizer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from landmarks.config import Config, dump_config
from landmarks.data.augment import build_train_transform
from landmarks.data.catalog import NO_LANDMARK, NO_LANDMARK_NAME, read_catalog
from landmarks.data.images import decode_image
from landmarks.data.prepared import PreparedData
from landmarks.errors import DataError
from landmarks.evaluate import metrics, plots
from landmarks.evaluate.calibrate import (
    MAX_CAPTURED_PHOTOS,
    calibrate_after_training,
    capture_pooled,
    fit_descriptor,
    pooled_views,
)
from landmarks.models.registry import LandmarkModel, save_model
from landmarks.recognize.embed import TorchEmbedder, embed_paths
from landmarks.recognize.index import EmbeddingIndex
from landmarks.recognize.recognizer import Prediction, Recognizer
from landmarks.utils import atomic_path, progress, write_json

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


def plot_augmentation_grid(config: Config, data: PreparedData, out: Path, photos: int = 6, views: int = 5) -> None:
    """plots/augmentations.png: raw training photos beside augmented versions of them."""
    rng = np.random.default_rng(config.train.seed)
    indices = data.indices("train")
    chosen = rng.choice(indices, size=min(photos, len(indices)), replace=False)
    transform = build_train_transform(config.augment, config.data.image_size_px)
    raw, augmented, titles = [], [], []
    for index in chosen:
        image = np.asarray(data.cache.images[index])
        tensor = torch.from_numpy(image.copy()).permute(2, 0, 1)
        raw.append(image)
        augmented.append([transform(tensor).permute(1, 2, 0).numpy() for _ in range(views)])
        titles.append(data.names[int(data.frame["landmark_id"].iat[index])])
    plots.plot_augmentations(raw, augmented, out, titles)


def embed_split(embedder: TorchEmbedder, data: PreparedData, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cache positions, embeddings, logits) of a split's photos, from the image cache."""
    indices = data.indices(split)
    embeddings, logits = [], []
    for start in progress(range(0, len(indices), 64), desc=f"embedding {split}", unit="batch"):
        e, l = embedder(np.asarray(data.cache.images[indices[start : start + 64]]))
        embeddings.append(e)
        logits.append(l)
    if not embeddings:
        return indices, np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return indices, np.concatenate(embeddings), np.concatenate(logits)


def calibrate_knn_weight(recognizer: Recognizer, references: tuple, queries: tuple, data: PreparedData) -> float:
    """The kNN/classifier fusion weight with the best GAP for validation photos searched against training photos only."""
    (ref_positions, ref_embeddings, _), (val_positions, val_embeddings, val_logits) = references, queries
    landmark_ids = data.frame["landmark_id"].to_numpy()
    index = EmbeddingIndex.build(ref_embeddings, data.frame["id"].to_numpy()[ref_positions].tolist(),
                                 landmark_ids[ref_positions], "flat")
    probe = Recognizer(recognizer.embedder, recognizer.class_landmark_ids, recognizer.names, index,
                       recognizer.config.model_copy(), logit_scale=recognizer.logit_scale)
    true = landmark_ids[val_positions]
    scores = {}
    for weight in (0.0, 0.25, 0.5, 0.75, 1.0):
        probe.config.knn_weight = weight
        predictions = probe.score(val_embeddings, val_logits)
        scores[weight] = metrics.global_average_precision(
            [p.landmark_id for p in predictions], [p.confidence for p in predictions], true)
    best = max(scores, key=lambda w: (round(scores[w], 4), w))
    log.info("fusion weight calibrated on %d validation photos: %s -> knn_weight %.2f", len(true),
             ", ".join(f"{w:.2f}: GAP {g:.3f}" for w, g in scores.items()), best)
    return best


def finish_run(run_dir: Path, config: Config, data: PreparedData, model: LandmarkModel) -> dict:
    """After training: metrics on the held-out split (searched against the other photos), then the reference index
    of every training photo, curves and a prediction collage."""
    model.eval()
    embedder = TorchEmbedder(model, tta_flip=config.recognize.tta_flip)
    with capture_pooled(model, photos=len(data.frame)) as pooled:  # for the descriptor and the calibration model
        splits = {split: embed_split(embedder, data, split) for split in ("train", "val", "test")}
    if getattr(model.head, "descriptor", None) is not None:
        if pooled:
            names = ("train", "val", "test")
            views = pooled_views(pooled, [len(splits[s][0]) for s in names], config.recognize.tta_flip)
            fitted = fit_descriptor(model, dict(zip(names, views)))
            splits = {s: (splits[s][0], *fitted[s]) for s in names}
            save_model(model, run_dir, config.model)  # again, with the fitted descriptor
        else:
            log.warning("descriptor left empty: more than %d training photos to hold their pooled features",
                        MAX_CAPTURED_PHOTOS)
    references = [splits["train"], splits["val"]] if len(splits["val"][0]) else [splits["train"]]
    positions = np.concatenate([r[0] for r in references])
    index = EmbeddingIndex.build(
        np.concatenate([r[1] for r in references]), data.frame["id"].to_numpy()[positions].tolist(),
        data.frame["landmark_id"].to_numpy()[positions], index_type=config.recognize.index_type,
    )
    recognizer = Recognizer(embedder, data.landmark_ids, data.names, index, config.recognize, run_dir,
                            model.logit_scale)
    if config.recognize.calibrate and len(splits["val"][0]):
        config.recognize.knn_weight = calibrate_knn_weight(recognizer, splits["train"], splits["val"], data)
        dump_config(config, run_dir / "config.yaml")
    calibrate_after_training(run_dir, config, data, recognizer, splits, pooled)  # calibration.json, non-landmark refs
    history = pd.read_csv(run_dir / "history.csv")
    if len(history):
        plots.plot_curves(history, run_dir / "plots" / "curves.png")
    result: dict = {"split": "held-out test split of the training data", "epochs": int(len(history)),
                    "knn_weight": config.recognize.knn_weight, "min_confidence": config.recognize.min_confidence}
    test, embeddings, logits = splits["test"]
    if len(test):
        predictions = recognizer.score(embeddings, logits)
        true = data.frame["landmark_id"].to_numpy()[test]
        result.update(compute_metrics(predictions, true, recognizer, embeddings))
        result["classifier_accuracy"] = float((data.landmark_ids[logits.argmax(1)] == true).mean())
        write_report(run_dir / "evaluation" / "held-out", predictions, true, data.names, result)
        # measured: now every training photo becomes a reference, the held-out ones included
        index.add(embeddings, data.frame["id"].to_numpy()[test].tolist(), true)
    index.save(run_dir / "index")
    result["references"] = len(index)
    result["train_minutes"] = float(history["seconds"].sum() / 60) if len(history) else 0.0
    has_val_loss = len(history) and history["val_loss"].notna().any()
    result["best_epoch"] = int(history["val_loss"].idxmin() + 1) if has_val_loss else len(history)
    write_json(run_dir / "metrics.json", result)
    val = data.indices("val")
    if len(val):
        shown = np.random.default_rng(config.train.seed).choice(val, size=min(16, len(val)), replace=False)
        images = np.asarray(data.cache.images[shown])
        collage(images, recognizer.predict(images), data.frame["landmark_id"].to_numpy()[shown], data.names,
                run_dir / "plots" / "predictions.png")
    return result


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
