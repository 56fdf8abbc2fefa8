"""Evaluation reports: finish_run's run folder, the fusion-weight calibration, metrics by hand, evaluate and submit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from landmarks.config import Config, RecognizeConfig, dump_config, load_config
from landmarks.data.catalog import NO_LANDMARK, NO_LANDMARK_NAME
from landmarks.data.images import decode_image
from landmarks.data.prepared import PreparedData, prepare_data, write_labels
from landmarks.errors import DataError
from landmarks.evaluate import metrics, report
from landmarks.evaluate.report import calibrate_knn_weight, compute_metrics, evaluate_run, finish_run, write_submission
from landmarks.models.registry import build_model, save_model
from landmarks.recognize.index import EmbeddingIndex
from landmarks.recognize.recognizer import Candidate, Prediction, Recognizer
from tests_helpers import FixedEmbedder, unit

HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds",
                   "train_seconds", "images_per_second", "backbone_frozen"]


def assert_png(path: Path) -> None:
    """The file exists and is a whole PNG."""
    assert path.is_file(), path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 50, path


def split_frame(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "split.csv", dtype={"id": str})


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
    dump_config(config, run_dir / "config.yaml")
    save_model(model, run_dir, config.model)
    write_labels(data, run_dir)
    return finish_run(run_dir, config, data, model), data, config


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

    monkeypatch.setattr(report, "compute_metrics", spy)
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
    """recognize.calibrate: the weight calibrated on val vs train photos goes into config.yaml and metrics.json."""
    calls: list[tuple[np.ndarray, np.ndarray]] = []

    def fake(recognizer: Recognizer, references: tuple, queries: tuple, data: PreparedData) -> float:
        calls.append((references[0], queries[0]))
        return 0.75

    monkeypatch.setattr(report, "calibrate_knn_weight", fake)
    result, data, config = finish_untrained(tiny_gldv2, tmp_path / "run", ["recognize.calibrate=true"])
    [(references, queries)] = calls
    assert np.array_equal(references, data.indices("train")) and np.array_equal(queries, data.indices("val"))
    assert result["knn_weight"] == config.recognize.knn_weight == 0.75
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["recognize"]["knn_weight"] == 0.75
    assert Recognizer.load(tmp_path / "run", backend="torch").config.knn_weight == 0.75


# -- calibrate_knn_weight on hand-made embeddings ------------------------------------------------------
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
def test_calibrate_knn_weight_picks_the_weight_with_the_best_gap(queries: list, expected: float) -> None:
    """The grid weight whose fused predictions get the best validation GAP is chosen; the recognizer is left alone."""
    recognizer, train, val, data = _calibration_case(queries)
    assert calibrate_knn_weight(recognizer, train, val, data) == expected
    assert recognizer.config.knn_weight == 0.5 and recognizer.index is None


def test_calibrate_knn_weight_breaks_ties_towards_knn() -> None:
    """When every weight gets the same GAP (kNN and classifier both right) the largest weight wins."""
    recognizer, train, val, data = _calibration_case([(unit(1, 0, 0), [0.9, 0.1], 10), (unit(0, 1, 0), [0.1, 0.9], 20)])
    assert calibrate_knn_weight(recognizer, train, val, data) == 1.0


# -- compute_metrics on hand-made predictions ------------------------------------------------------------
def _prediction(landmark_id: int, confidence: float, ranked: list[int]) -> Prediction:
    return Prediction(landmark_id, str(landmark_id), confidence, [Candidate(l, str(l), 0.0) for l in ranked])


def _metrics_recognizer(with_index: bool) -> Recognizer:
    index = EmbeddingIndex.build(np.stack([unit(1, 0, 0), unit(0.8, 0.6, 0), unit(0, 1, 0)]), ["a1", "a2", "b1"],
                                 np.array([10, 10, 20]), "flat") if with_index else None
    return Recognizer(FixedEmbedder(), np.array([10, 20]), {10: "tower", 20: "bridge"}, index, RecognizeConfig())


def test_compute_metrics_by_hand() -> None:
    """Accuracy, top-5, GAP, mAP@100 and mean confidences of three hand-made predictions."""
    predictions = [_prediction(10, 0.9, [10, 20]), _prediction(10, 0.8, [10, 20]), _prediction(20, 0.3, [20])]
    true = [10, 20, NO_LANDMARK]
    # q0 (1, 0, 0): neighbours a1 (10), a2 (10), b1 (20); 2 references of 10: AP = (1/1 + 2/2) / 2 = 1
    # q1 (0.6, 0.8, 0): a2 0.96 (10), b1 0.8 (20), a1 0.6 (10); 1 reference of 20 at rank 2: AP = 1/2
    # q2 shows no landmark: left out of mAP -> (1 + 1/2) / 2 = 3/4
    embeddings = np.stack([unit(1, 0, 0), unit(0.6, 0.8, 0), unit(0, 0, 1)])
    result = compute_metrics(predictions, true, _metrics_recognizer(with_index=True), embeddings)
    assert result["queries"] == 3 and result["queries_with_landmark"] == 2
    assert result["accuracy"] == pytest.approx(1 / 2)  # q0 right, q1 wrong
    assert result["top5_accuracy"] == pytest.approx(1.0)  # q1's landmark is its second candidate
    # ranked by confidence: q0 right (P = 1), q1 wrong, q2 a false positive; M = 2 -> GAP = 1 / 2
    assert result["gap"] == pytest.approx(1 / 2)
    assert result["map_at_100"] == pytest.approx(3 / 4)
    assert result["mean_confidence_landmark"] == pytest.approx(0.85)
    assert result["mean_confidence_non_landmark"] == pytest.approx(0.3)


def test_compute_metrics_without_index_or_non_landmark_queries() -> None:
    """No index: no mAP; no photo without a landmark: no confidence split; an empty prediction is wrong."""
    predictions = [_prediction(10, 0.9, [10]), Prediction(NO_LANDMARK, NO_LANDMARK_NAME, 0.0)]
    result = compute_metrics(predictions, [10, 20], _metrics_recognizer(with_index=False), np.zeros((2, 3), np.float32))
    assert result == {"queries": 2, "queries_with_landmark": 2, "accuracy": 0.5, "top5_accuracy": 0.5, "gap": 0.5,
                      "known_answers": 1, "precision_of_known_answers": 1.0, "coverage": 0.5}


# -- evaluate_run and write_submission on the tiny run -------------------------------------------------
def _test_photo(data_dir: Path, landmark: bool) -> tuple[str, Path]:
    """(id, path) of the first test photo that shows a landmark (or shows none)."""
    solution = pd.read_csv(data_dir / "test_solution.csv", dtype=str, keep_default_na=False)
    image_id = solution.loc[(solution["landmarks"] != "") == landmark, "id"].iloc[0]
    return image_id, data_dir / "test" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def test_evaluate_run_scores_the_readable_test_photos(tiny_run_dir: Path, tiny_gldv2: Path, tmp_path: Path) -> None:
    """evaluate_run's metrics are those of the run's predictions on the readable photos; the broken one is counted."""
    _, broken = _test_photo(tiny_gldv2, landmark=False)
    broken.write_bytes(broken.read_bytes()[:60])  # a truncated JPEG
    result, out = evaluate_run(tiny_run_dir, tiny_gldv2, backend="torch", out_dir=tmp_path / "report")
    assert out == tmp_path / "report"
    assert result["unreadable_images"] == 1 and result["queries"] == 7 and result["queries_with_landmark"] == 6
    assert result["data"] == str(tiny_gldv2.resolve())

    catalog = pd.read_csv(tiny_gldv2 / "test_solution.csv", dtype=str, keep_default_na=False).set_index("id")
    test_ids = pd.read_csv(tiny_gldv2 / "test.csv", dtype=str)["id"]
    paths = [tiny_gldv2 / "test" / i[0] / i[1] / i[2] / f"{i}.jpg" for i in test_ids]
    predictions, failures = Recognizer.load(tiny_run_dir, backend="torch").predict_paths(paths)
    assert [Path(f[0]) for f in failures] == [broken]
    kept = [(p, catalog.loc[i, "landmarks"]) for p, i in zip(predictions, test_ids) if p is not None]
    true = [int(t) if t else NO_LANDMARK for _, t in kept]
    predicted = [p.landmark_id for p, _ in kept]
    assert result["accuracy"] == pytest.approx(metrics.accuracy(predicted, true))
    confidences = [p.confidence for p, _ in kept]
    assert result["gap"] == pytest.approx(metrics.global_average_precision(predicted, confidences, true))
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == pytest.approx(result)
    per_landmark = pd.read_csv(out / "per_landmark.csv")
    assert per_landmark["support"].sum() == 6
    assert per_landmark["correct"].sum() / 6 == pytest.approx(result["accuracy"])
    assert_png(out / "plots" / "confidence.png")  # landmark and non-landmark confidences
    assert_png(out / "plots" / "predictions.png")


def test_evaluate_run_without_ground_truth_is_a_data_error(tiny_run_dir: Path, tiny_gldv2: Path) -> None:
    """A test split without *_solution.csv cannot be evaluated: one sentence says so."""
    (tiny_gldv2 / "test_solution.csv").unlink()
    with pytest.raises(DataError, match="has no ground truth for its test photos"):
        evaluate_run(tiny_run_dir, tiny_gldv2, backend="torch")


def test_write_submission_rows_are_the_recognizer_predictions(tiny_run_dir: Path, tiny_gldv2: Path,
                                                               tmp_path: Path) -> None:
    """``id,landmarks`` in test.csv order with "<landmark_id> <score>"; unreadable or missing photos get ""."""
    broken_id, broken = _test_photo(tiny_gldv2, landmark=True)
    broken.write_bytes(broken.read_bytes()[:60])  # truncated
    missing_id, missing = _test_photo(tiny_gldv2, landmark=False)
    missing.unlink()
    out = tmp_path / "submission.csv"
    assert write_submission(tiny_run_dir, tiny_gldv2, out, backend="torch") == (8, 2)

    lines = out.read_text().splitlines()
    assert lines[0] == "id,landmarks" and len(lines) == 9
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    test_ids = pd.read_csv(tiny_gldv2 / "test.csv", dtype=str)["id"].tolist()
    assert frame["id"].tolist() == test_ids
    rows = dict(zip(frame["id"], frame["landmarks"]))
    assert rows[broken_id] == rows[missing_id] == ""
    recognizer = Recognizer.load(tiny_run_dir, backend="torch")
    for image_id, value in rows.items():
        if image_id in (broken_id, missing_id):
            continue
        [prediction], _ = recognizer.predict_paths([tiny_gldv2 / "test" / image_id[0] / image_id[1] / image_id[2] /
                                                    f"{image_id}.jpg"])
        assert prediction is not None
        landmark_id, confidence = value.split()
        # a photo embedded alone or in a batch may differ in the last float digits (CPU kernels differ by batch size)
        assert int(landmark_id) == prediction.landmark_id and float(confidence) == pytest.approx(prediction.confidence, abs=1e-5)
        assert prediction.landmark_id in (7, 55, 300, 1042)


def test_write_submission_formats_each_kind_of_prediction(tiny_run_dir: Path, tiny_gldv2: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """No landmark -> "", unreadable -> "", below min_confidence still written (GAP ranks it), 6 decimals."""
    made = [Prediction(NO_LANDMARK, NO_LANDMARK_NAME, 0.0), None,
            Prediction(55, "place_55", 0.1234567, known=False), Prediction(1042, "place_1042", 1.0)]

    def fake(self: Recognizer, paths: list, batch_size: int = 64, workers: int = 2) -> tuple[list, list]:
        return [made[i % len(made)] for i in range(len(paths))], [("x.jpg", "unreadable")]

    monkeypatch.setattr(Recognizer, "predict_paths", fake)
    out = tmp_path / "submission.csv"
    assert write_submission(tiny_run_dir, tiny_gldv2, out, backend="torch") == (8, 1)
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert frame["landmarks"].tolist() == ["", "", "55 0.123457", "1042 1.000000"] * 2


# -- the glr descriptor -----------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["none", "2"])
def test_finish_run_fits_the_descriptor_and_the_index_holds_what_the_saved_model_embeds(tiny_gldv2: Path,
                                                                                          tmp_path: Path,
                                                                                          stage: str) -> None:
    from landmarks.models.registry import load_model
    from landmarks.train.run import train

    overrides = ["model.backbone=test_efficientnet", "model.pretrained=none", "model.embedding_dim=16",
                 "model.descriptor_dims=6", f"model.descriptor_stage={stage}", "data.image_size_px=32",
                 "train.epochs=2", "train.batch_size=8",
                 "train.workers=0", "train.max_minutes=none", "data.val_fraction=0.25",
                 f"data.cache_dir={tmp_path / 'cache'}"]
    run = train(load_config("glr", overrides), tiny_gldv2, tmp_path / "run")
    descriptor = load_model(run).head.descriptor
    assert descriptor.dims == 6 and descriptor.projection.abs().sum() > 0  # fitted, and saved fitted
    recognizer = Recognizer.load(run, backend="torch")
    index = EmbeddingIndex.load(run / "index")
    assert index.vectors().shape[1] == 16 + 6
    split = split_frame(run)
    photos = split[split["valid"].astype(bool)].head(5)
    embeddings, _ = recognizer.embedder(np.stack([decode_image(p, 32) for p in photos["path"]]))
    position = {image_id: i for i, image_id in enumerate(index.image_ids)}
    stored = index.vectors()[[position[i] for i in photos["id"]]]
    # the index was computed from the pooled features captured in finish_run; the saved model embeds photos anew
    np.testing.assert_allclose(embeddings, stored, atol=1e-4)
