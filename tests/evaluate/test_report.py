"""Evaluation reports: compute_metrics by hand, evaluate and submit through the Recognizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from landmarks.config import RecognizeConfig
from landmarks.data.catalog import NO_LANDMARK, NO_LANDMARK_NAME
from landmarks.errors import DataError
from landmarks.evaluate import metrics
from landmarks.evaluate.report import compute_metrics, evaluate_run, write_submission
from landmarks.recognize.index import EmbeddingIndex
from landmarks.recognize.prediction import Candidate, Prediction
from landmarks.recognize.recognizer import Recognizer
from tests_helpers import FixedEmbedder, assert_png, unit


# -- compute_metrics on hand-made predictions ------------------------------------------------------------
def _prediction(landmark_id: int, confidence: float, ranked: list[int]) -> Prediction:
    return Prediction(landmark_id, str(landmark_id), confidence, [Candidate(l, str(l), 0.0) for l in ranked])


def _metrics_recognizer(with_index: bool) -> Recognizer:
    index = EmbeddingIndex.build(np.stack([unit(1, 0, 0), unit(0.8, 0.6, 0), unit(0, 1, 0)]), ["a1", "a2", "b1"],
                                 np.array([10, 10, 20]), "flat") if with_index else None
    return Recognizer(FixedEmbedder(), np.array([10, 20]), {10: "tower", 20: "bridge"}, index, RecognizeConfig())


# -- evaluate_run and write_submission on the tiny run -------------------------------------------------
def _test_photo(data_dir: Path, landmark: bool) -> tuple[str, Path]:
    """(id, path) of the first test photo that shows a landmark (or shows none)."""
    solution = pd.read_csv(data_dir / "test_solution.csv", dtype=str, keep_default_na=False)
    image_id = solution.loc[(solution["landmarks"] != "") == landmark, "id"].iloc[0]
    return image_id, data_dir / "test" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


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
