"""Finishing a run after its last epoch: the descriptor, the reference index, the calibration, scoring.json.

Every photo goes through the backbone once per view: when training's one pass over the photos and their mirror images
(``landmarks.train.features``) is handed over, the embeddings come from those feature maps with the trained head;
else each photo goes through the model (``embed_split``; its pooled features are captured on the way, see
``landmarks.train.pooled``). The held-out split is measured against the other photos first, then joins the index.
What training learned for scoring (the kNN weight when searched, the confidence map and its threshold) is written
to ``scoring.json``; ``config.yaml`` stays what the user asked for.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from landmarks.config import Config
from landmarks.data.prepared import PreparedData
from landmarks.evaluate import metrics, plots
from landmarks.evaluate.report import collage, compute_metrics, write_report
from landmarks.models.landmark_model import LandmarkModel
from landmarks.recognize.embed import TorchEmbedder
from landmarks.recognize.index import EmbeddingIndex
from landmarks.recognize.recognizer import Recognizer
from landmarks.run_folder import RunFolder, Scoring
from landmarks.train.features import PHOTO_AND_MIRROR, SplitViews, pooled_features
from landmarks.train.open_set import calibrate_after_training
from landmarks.train.pooled import (MAX_CAPTURED_PHOTOS, PooledArcFace, capture_pooled, has_arcface_neck,
                                    pooled_views, split_pooled)
from landmarks.utils import progress

log = logging.getLogger(__name__)


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


def search_knn_weight(recognizer: Recognizer, references: tuple, queries: tuple, data: PreparedData) -> float:
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
    log.info("fusion weight searched on %d validation photos: %s -> knn_weight %.2f", len(true),
             ", ".join(f"{w:.2f}: GAP {g:.3f}" for w, g in scores.items()), best)
    return best


def fit_descriptor(model: torch.nn.Module, pooled: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fit the model's ``WhitenedDescriptor`` on the training photos' pooled features (``pooled["train"]``,
    (photos, views, features)) and return every split's embeddings and logits as the fitted model gives them."""
    descriptor = model.head.descriptor
    head = PooledArcFace.of_model(model)
    _, train = split_pooled(pooled["train"], head.descriptor_features)
    kept = descriptor.fit(train.reshape(-1, train.shape[-1]))
    log.info("descriptor: pooled features whitened to %d of %d dimensions (weight %.2f)", kept, descriptor.dims,
             descriptor.weight)
    return {split: head(views) for split, views in pooled.items()}


def splits_from_views(model: LandmarkModel, views: dict[str, SplitViews],
                      tta_flip: bool) -> tuple[dict[str, tuple], list[np.ndarray]]:
    """The splits' (cache positions, embeddings, logits) from the frozen backbone's feature maps of training's one
    pass, and the pooled features as ``capture_pooled`` would have recorded them (one array per view)."""
    used = PHOTO_AND_MIRROR if tta_flip else 1
    head = PooledArcFace.of_model(model)
    names = ("train", "val", "test")
    pooled = {split: pooled_features(model, views[split], used) for split in names}
    splits = {split: (views[split].positions, *head(pooled[split])) for split in names}
    return splits, [np.concatenate([pooled[split][:, view] for split in names]) for view in range(used)]


def finish_run(run: RunFolder, config: Config, data: PreparedData, model: LandmarkModel,
               views: dict[str, SplitViews] | None = None) -> dict:
    """After training: the descriptor, metrics on the held-out split (searched against the other photos), the
    calibration, then the reference index of every training photo, scoring.json, curves and a prediction collage.

    ``views``: the frozen backbone's feature maps of every split's photos and mirror images (``Trainer.frozen_views``);
    with them no photo goes through the backbone again."""
    model.eval()
    started = time.monotonic()
    scoring = config.recognize.model_copy(deep=True)  # what the run will answer with; config.yaml is left as asked
    embedder = TorchEmbedder(model, tta_flip=scoring.tta_flip)
    if views is not None and has_arcface_neck(model) and len(data.frame) <= MAX_CAPTURED_PHOTOS:
        splits, pooled = splits_from_views(model, views, scoring.tta_flip)
    else:
        with capture_pooled(model, photos=len(data.frame)) as pooled:  # for the descriptor and the calibration model
            splits = {split: embed_split(embedder, data, split) for split in ("train", "val", "test")}
    if getattr(model.head, "descriptor", None) is not None:
        if pooled:
            names = ("train", "val", "test")
            views = pooled_views(pooled, [len(splits[s][0]) for s in names], scoring.tta_flip)
            fitted = fit_descriptor(model, dict(zip(names, views)))
            splits = {s: (splits[s][0], *fitted[s]) for s in names}
            run.save_model(model, config.model)  # again, with the fitted descriptor
        else:
            log.warning("descriptor left empty: more than %d training photos to hold their pooled features",
                        MAX_CAPTURED_PHOTOS)
    references = [splits["train"], splits["val"]] if len(splits["val"][0]) else [splits["train"]]
    positions = np.concatenate([r[0] for r in references])
    index = EmbeddingIndex.build(
        np.concatenate([r[1] for r in references]), data.frame["id"].to_numpy()[positions].tolist(),
        data.frame["landmark_id"].to_numpy()[positions], index_type=scoring.index_type,
    )
    recognizer = Recognizer(embedder, data.landmark_ids, data.names, index, scoring, run.path, model.logit_scale)
    if scoring.search_knn_weight and len(splits["val"][0]):
        scoring.knn_weight = search_knn_weight(recognizer, splits["train"], splits["val"], data)
    calibrating = time.monotonic()
    calibrate_after_training(run, config, data, recognizer, splits, pooled)  # the map, the threshold, the bank
    calibration_seconds = time.monotonic() - calibrating
    history = run.read_history()
    if len(history):
        plots.plot_curves(history, run.plot("curves.png"))
    result: dict = {"split": "held-out test split of the training data", "epochs": int(len(history)),
                    "knn_weight": scoring.knn_weight, "min_confidence": scoring.min_confidence}
    test, embeddings, logits = splits["test"]
    if len(test):
        predictions = recognizer.score(embeddings, logits)
        true = data.frame["landmark_id"].to_numpy()[test]
        result.update(compute_metrics(predictions, true, recognizer, embeddings))
        result["classifier_accuracy"] = float((data.landmark_ids[logits.argmax(1)] == true).mean())
        write_report(run.evaluation("held-out"), predictions, true, data.names, result)
        # measured: now every training photo becomes a reference, the held-out ones included
        index.add(embeddings, data.frame["id"].to_numpy()[test].tolist(), true)
    run.save_index(index)
    run.write_scoring(Scoring(scoring, recognizer.calibration))
    result["references"] = len(index)
    result["train_minutes"] = float(history["seconds"].sum() / 60) if len(history) else 0.0
    has_val_loss = len(history) and history["val_loss"].notna().any()
    result["best_epoch"] = int(history["val_loss"].idxmin() + 1) if has_val_loss else len(history)
    run.write_metrics(result)
    log.info("finished the run in %.1fs (calibration %.1fs)", time.monotonic() - started, calibration_seconds)
    val = data.indices("val")
    if len(val):
        shown = np.random.default_rng(config.train.seed).choice(val, size=min(16, len(val)), replace=False)
        images = np.asarray(data.cache.images[shown])
        collage(images, recognizer.predict(images), data.frame["landmark_id"].to_numpy()[shown], data.names,
                run.plot("predictions.png"))
    return result
