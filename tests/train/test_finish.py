"""Finishing a run: the held-out metrics, the index, the kNN-weight search, the descriptor, scoring.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from landmarks.config import Config, RecognizeConfig, load_config
from landmarks.data.images import decode_image
from landmarks.data.prepared import PreparedData, labels_table, prepare_data
from landmarks.evaluate import metrics, report
from landmarks.train import finish
from landmarks.train.finish import finish_run, search_knn_weight
from landmarks.models.registry import build_model
from landmarks.run_folder import RunFolder
from landmarks.recognize.index import EmbeddingIndex
from landmarks.recognize.prediction import Prediction
from landmarks.recognize.recognizer import Recognizer
from tests_helpers import FixedEmbedder, HISTORY_COLUMNS, assert_png, unit


def split_frame(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "split.csv", dtype={"id": str})


# -- finish_run called directly on an untrained model ---------------------------------------------------
def finish_untrained(data_dir: Path, run_dir: Path, overrides: list[str]) -> tuple[dict, PreparedData, Config]:
    """finish_run on an untrained seed CNN at 32 px with an empty history (seconds, no training)."""
    config = load_config("seed-cnn", ["data.image_size_px=32", "train.workers=0",
                                      f"data.cache_dir={run_dir.parent / 'cache'}", *overrides])
    data = prepare_data(config, data_dir)
    torch.manual_seed(0)
    model = build_model(config.model, data.num_classes, config.data.image_size_px)
    run_dir.mkdir(parents=True)
    pd.DataFrame(columns=HISTORY_COLUMNS).to_csv(run_dir / "history.csv", index=False)
    run = RunFolder(run_dir)
    run.write_config(config)
    run.save_model(model, config.model)
    run.write_table(RunFolder.LABELS, labels_table(data))
    return finish_run(run, config, data, model), data, config


# -- search_knn_weight on hand-made embeddings ------------------------------------------------------
def _calibration_case(
    queries: list[tuple[np.ndarray, list[float], int]],
) -> tuple[Recognizer, tuple, tuple, PreparedData]:
    """Two reference photos (landmark 10 along x, landmark 20 along y) and validation queries given as
    (embedding, classifier probabilities for [10, 20], true landmark)."""
    references = np.stack([unit(1, 0, 0), unit(0, 1, 0)])
    frame = pd.DataFrame({"id": ["r10", "r20", *[f"q{i}" for i in range(len(queries))]],
                          "landmark_id": [10, 20, *[q[2] for q in queries]]})
    data = PreparedData(frame, {10: "tower", 20: "bridge"}, np.array([10, 20]), cache=None)  # type: ignore[arg-type]
    config = RecognizeConfig(knn_k=2, knn_weight=0.5, top_k=2, classifier_score="softmax")
    recognizer = Recognizer(FixedEmbedder(), np.array([10, 20]), data.names, None, config)
    logits = np.log(np.array([q[1] for q in queries], dtype=np.float32))  # softmax gives back the probabilities
    val = (np.arange(2, 2 + len(queries)), np.stack([q[0] for q in queries]), logits)
    train = (np.array([0, 1]), references, np.zeros((2, 2), np.float32))
    return recognizer, train, val, data


# -- finish_run on a trained run --------------------------------------------------------------------
def test_finish_run_metrics_agree_with_the_per_landmark_report_and_the_history(tiny_run_dir: Path) -> None:
    """metrics.json parses, counts the held-out photos, and its accuracy is per_landmark.csv's correct / support."""
    result = json.loads((tiny_run_dir / "metrics.json").read_text())
    split = split_frame(tiny_run_dir)
    held_out = split[(split["split"] == "test") & split["valid"]]
    assert result["queries"] == result["queries_with_landmark"] == len(held_out) == 4  # one photo per landmark
    per_landmark = pd.read_csv(tiny_run_dir / "evaluation" / "held-out" / "per_landmark.csv")
    assert per_landmark["support"].sum() == len(held_out)
    assert result["accuracy"] == pytest.approx(per_landmark["correct"].sum() / per_landmark["support"].sum())
    confused = pd.read_csv(tiny_run_dir / "evaluation" / "held-out" / "confused_pairs.csv")
    assert confused["count"].sum() == per_landmark["support"].sum() - per_landmark["correct"].sum()
    assert json.loads((tiny_run_dir / "evaluation" / "held-out" / "metrics.json").read_text())["gap"] == result["gap"]
    assert 0 <= result["gap"] <= result["accuracy"] <= result["top5_accuracy"] == 1.0  # 4 classes: top 5 holds all

    history = pd.read_csv(tiny_run_dir / "history.csv")
    assert result["epochs"] == len(history) == 2
    assert result["best_epoch"] == int(history["val_loss"].idxmin()) + 1
    assert result["train_minutes"] == pytest.approx(history["seconds"].sum() / 60)
    config = yaml.safe_load((tiny_run_dir / "config.yaml").read_text())
    assert result["knn_weight"] == config["recognize"]["knn_weight"] == 0.5
    assert not (tiny_run_dir / "evaluation" / "held-out" / "plots" / "confidence.png").exists()  # no -1 held out


def test_finish_run_metrics_are_those_of_the_saved_model_against_the_other_photos(tiny_run_dir: Path) -> None:
    """Rescoring the held-out photos with the saved model, against the index without them, gives metrics.json."""
    result = json.loads((tiny_run_dir / "metrics.json").read_text())
    split = split_frame(tiny_run_dir)
    held_out = split[(split["split"] == "test") & split["valid"]]
    recognizer = Recognizer.load(tiny_run_dir, backend="torch")
    assert recognizer.index is not None
    positions = [p for p, image_id in enumerate(recognizer.index.image_ids) if image_id in set(held_out["id"])]
    assert len(positions) == len(held_out)
    recognizer.index.remove(positions)
    images = np.stack([decode_image(path, 32) for path in held_out["path"]])
    embeddings, logits = recognizer.embed(images)
    predictions = recognizer.score(embeddings, logits)
    true = held_out["landmark_id"].to_numpy()
    predicted = [p.landmark_id for p in predictions]
    assert result["accuracy"] == pytest.approx(metrics.accuracy(predicted, true))
    assert result["gap"] == pytest.approx(
        metrics.global_average_precision(predicted, [p.confidence for p in predictions], true), abs=1e-4)
    classifier_right = recognizer.class_landmark_ids[logits.argmax(1)] == true
    assert result["classifier_accuracy"] == pytest.approx(float(classifier_right.mean()))


def test_finish_run_index_holds_every_valid_photo_held_out_ones_included(tiny_run_dir: Path) -> None:
    """After the held-out metrics, the saved index references every readable training photo with its landmark."""
    split = split_frame(tiny_run_dir)
    valid = split[split["valid"]]
    index = EmbeddingIndex.load(tiny_run_dir / "index")
    assert len(index) == len(valid) == 48
    assert json.loads((tiny_run_dir / "metrics.json").read_text())["references"] == len(index)
    assert dict(zip(index.image_ids, index.landmark_ids.tolist())) == dict(zip(valid["id"], valid["landmark_id"]))
    # each photo's stored vector is its own embedding: it is its own nearest neighbour
    recognizer = Recognizer.load(tiny_run_dir, backend="torch")
    held_out = valid[valid["split"] == "test"]
    embeddings, _ = recognizer.embed(np.stack([decode_image(p, 32) for p in held_out["path"]]))
    similarities, positions = index.search(embeddings, 1)
    assert [index.image_ids[p] for p in positions[:, 0]] == held_out["id"].tolist()
    assert similarities[:, 0] == pytest.approx(1.0, abs=1e-4)


def test_finish_run_writes_png_plots(tiny_run_dir: Path) -> None:
    """Curves, augmentations and the prediction collage are PNG images."""
    for name in ("curves.png", "augmentations.png", "predictions.png"):
        assert_png(tiny_run_dir / "plots" / name)


def test_held_out_photos_are_scored_against_train_and_val_only(tiny_gldv2: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """When the held-out metrics are computed the index holds train and val photos, not the held-out ones."""
    seen: dict[str, set[str]] = {}
    original = report.compute_metrics

    def spy(predictions: list[Prediction], true_ids: np.ndarray, recognizer: Recognizer,
            embeddings: np.ndarray) -> dict[str, float | int]:
        assert recognizer.index is not None
        seen["references"] = set(recognizer.index.image_ids)
        return original(predictions, true_ids, recognizer, embeddings)

    monkeypatch.setattr(finish, "compute_metrics", spy)
    result, data, _ = finish_untrained(tiny_gldv2, tmp_path / "run", [])
    ids = data.frame["id"].to_numpy()
    assert seen["references"] == set(ids[data.indices("train")]) | set(ids[data.indices("val")])
    assert result["references"] == len(data.frame) == 48
    assert result["epochs"] == 0 and result["best_epoch"] == 0 and result["train_minutes"] == 0.0
    assert not (tmp_path / "run" / "plots" / "curves.png").exists()  # no epochs, no curves


def test_finish_run_without_a_test_split_writes_no_held_out_report(tiny_gldv2: Path, tmp_path: Path) -> None:
    """test_fraction 0: no held-out metrics or report folder, and the index holds every photo."""
    result, data, _ = finish_untrained(tiny_gldv2, tmp_path / "run", ["data.test_fraction=0"])
    assert "accuracy" not in result and "gap" not in result
    assert not (tmp_path / "run" / "evaluation" / "held-out").exists()
    everything = len(data.indices("train")) + len(data.indices("val"))
    assert len(EmbeddingIndex.load(tmp_path / "run" / "index")) == result["references"] == everything == 48


def test_calibration_in_finish_run_writes_the_chosen_weight(tiny_gldv2: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """recognize.search_knn_weight: the weight searched on val vs train photos goes into scoring.json and metrics.json,
    and config.yaml stays as asked."""
    calls: list[tuple[np.ndarray, np.ndarray]] = []

    def fake(recognizer: Recognizer, references: tuple, queries: tuple, data: PreparedData) -> float:
        calls.append((references[0], queries[0]))
        return 0.75

    monkeypatch.setattr(finish, "search_knn_weight", fake)
    result, data, config = finish_untrained(tiny_gldv2, tmp_path / "run", ["recognize.search_knn_weight=true"])
    [(references, queries)] = calls
    assert np.array_equal(references, data.indices("train")) and np.array_equal(queries, data.indices("val"))
    assert result["knn_weight"] == 0.75 and config.recognize.knn_weight != 0.75
    assert RunFolder(tmp_path / "run").read_scoring().recognize.knn_weight == 0.75
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["recognize"]["knn_weight"] != 0.75
    assert Recognizer.load(tmp_path / "run", backend="torch").config.knn_weight == 0.75


@pytest.mark.parametrize("queries, expected", [
    # kNN right (cosine 0.3 to its landmark's photo), classifier sure of the other landmark: fused right only
    # at w = 1 (at 0.75: 0.75 * 0.3 = 0.225 < 0.25 * 1) -> 1.0
    ([(unit(0.3, 0, 0.91 ** 0.5), [0.0001, 0.9999], 10), (unit(0, 0.3, 0.91 ** 0.5), [0.9999, 0.0001], 20)], 1.0),
    # classifier right (0.6 vs 0.4), kNN sure of the other landmark (cosine 1): right only at w = 0
    # (at 0.25: 0.75 * 0.6 = 0.45 < 0.25 + 0.75 * 0.4 = 0.55) -> 0.0
    ([(unit(0, 1, 0), [0.6, 0.4], 10), (unit(1, 0, 0), [0.4, 0.6], 20)], 0.0),
    # q0 (true 10): kNN 0.6 for 10, classifier 0.7 for 20: right iff 0.6w + 0.3(1-w) > 0.7(1-w), i.e. w > 0.4;
    # q1 (true 20): kNN 0.4 for 10, classifier 0.8 for 20: right iff 0.8(1-w) > 0.4w + 0.2(1-w), i.e. w < 0.6;
    # both right only at 0.5 (GAP 1), one at 0.25 and 0.75 (GAP <= 1/2), none at 0 and 1 -> 0.5
    ([(unit(0.6, 0, 0.8), [0.3, 0.7], 10), (unit(0.4, 0, 0.84 ** 0.5), [0.2, 0.8], 20)], 0.5),
])
def test_search_knn_weight_picks_the_weight_with_the_best_gap(queries: list, expected: float) -> None:
    """The grid weight whose fused predictions get the best validation GAP is chosen; the recognizer is left alone."""
    recognizer, train, val, data = _calibration_case(queries)
    assert search_knn_weight(recognizer, train, val, data) == expected
    assert recognizer.config.knn_weight == 0.5 and recognizer.index is None


def test_search_knn_weight_breaks_ties_towards_knn() -> None:
    """When every weight gets the same GAP (kNN and classifier both right) the largest weight wins."""
    recognizer, train, val, data = _calibration_case([(unit(1, 0, 0), [0.9, 0.1], 10), (unit(0, 1, 0), [0.1, 0.9], 20)])
    assert search_knn_weight(recognizer, train, val, data) == 1.0


# -- the glr descriptor -----------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["none", "2"])
def test_finish_run_fits_the_descriptor_and_the_index_holds_what_the_saved_model_embeds(tiny_gldv2: Path,
                                                                                          tmp_path: Path,
                                                                                          stage: str) -> None:
    from landmarks.run_folder import RunFolder
    from landmarks.train.run import train

    overrides = ["model.backbone=test_efficientnet", "model.pretrained=none", "model.embedding_dim=16",
                 "model.descriptor_dims=6", f"model.descriptor_stage={stage}", "data.image_size_px=32",
                 "train.epochs=2", "train.batch_size=8",
                 "train.workers=0", "train.max_minutes=none", "data.val_fraction=0.25",
                 f"data.cache_dir={tmp_path / 'cache'}"]
    run = train(load_config("glr", overrides), tiny_gldv2, tmp_path / "run")
    descriptor = RunFolder(run).load_model().head.descriptor
    assert descriptor.dims == 6 and descriptor.projection.abs().sum() > 0  # fitted, and saved fitted
    recognizer = Recognizer.load(run, backend="torch")
    index = EmbeddingIndex.load(run / "index")
    assert index.vectors().shape[1] == 16 + 6
    split = split_frame(run)
    photos = split[split["valid"].astype(bool)].head(5)
    embeddings, _ = recognizer.embedder(np.stack([decode_image(p, 32) for p in photos["path"]]))
    position = {image_id: i for i, image_id in enumerate(index.image_ids)}
    stored = index.vectors()[[position[i] for i in photos["id"]]]
    # the index was computed from training's one backbone pass (feature maps kept in float16, no second pass); the
    # saved model embeds photos anew in float32: the same embeddings to float16's precision
    np.testing.assert_allclose(embeddings, stored, atol=1e-3)
    assert (embeddings * stored).sum(1).min() > 0.9999
