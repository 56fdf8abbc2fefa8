"""The confidence map at prediction time: features, the stored form, the Recognizer applying it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from landmarks.recognize.confidence import is_known, Calibration, prediction_features
from landmarks.train.fit_confidence import fit_calibration
from tests_helpers import noisy_samples, scores_only


def test_prediction_features_by_hand():
    candidate = lambda i, s: SimpleNamespace(landmark_id=i, score=s)  # noqa: E731
    neighbour = lambda i, s: SimpleNamespace(landmark_id=i, similarity=s)  # noqa: E731
    predictions = [
        SimpleNamespace(landmark_id=10, candidates=[candidate(10, 0.8), candidate(20, 0.3)],
                        neighbours=[neighbour(10, 0.9), neighbour(-1, 0.7), neighbour(10, 0.6), neighbour(20, 0.5)]),
        SimpleNamespace(landmark_id=20, candidates=[candidate(20, 0.4)], neighbours=[]),
    ]
    np.testing.assert_allclose(prediction_features(predictions), [[0.8, 0.5, 0.5, 0.7, 0.9], [0.4, 0.4, 0.0, 0.0, 0.0]])


def test_a_calibration_survives_its_stored_form():
    scores, correct = noisy_samples()
    calibration = fit_calibration(scores_only(scores), correct, "isotonic")
    calibration.threshold, calibration.target_precision = 0.61, 0.95
    calibration.fitted_on = {"held-out photos": 91}
    stored = json.loads(json.dumps(calibration.to_dict()))
    assert stored["method"] == "isotonic"
    loaded = Calibration.from_dict(stored)
    assert loaded == calibration
    np.testing.assert_allclose(loaded.map_scores(scores), calibration.map_scores(scores))
    with pytest.raises(KeyError):
        Calibration.from_dict({})


def test_is_known_is_the_threshold_reached():
    assert is_known(0.5, 0.5) and is_known(0.9, 0.5) and not is_known(0.499, 0.5)


def test_recognizer_applies_the_calibration():
    from landmarks.config import RecognizeConfig
    from landmarks.recognize.index import EmbeddingIndex
    from landmarks.recognize.recognizer import Recognizer

    references = np.eye(3, dtype=np.float32)
    index = EmbeddingIndex.build(references, ["a", "b", "c"], np.array([10, 20, 30]), "flat")
    config = RecognizeConfig(knn_k=3, knn_weight=1.0, top_k=3, min_confidence=0.6)
    recognizer = Recognizer(None, np.array([10, 20, 30]), {10: "a", 20: "b", 30: "c"}, index, config)
    query = np.array([[0.8, 0.6, 0.0]], dtype=np.float32)  # fused scores: 0.8 (a), 0.6 (b), 0 (c)
    [raw] = recognizer.score(query, np.zeros((1, 3), np.float32))
    assert raw.confidence == pytest.approx(0.8, abs=1e-5) and raw.known
    recognizer.calibration = Calibration("platt", {"slope": 10.0, "intercept": -7.0}, threshold=0.6)
    [calibrated] = recognizer.score(query, np.zeros((1, 3), np.float32))
    by_hand = 1 / (1 + np.exp(-(10 * 0.8 - 7)))  # 0.731
    assert calibrated.landmark_id == 10 and calibrated.confidence == pytest.approx(by_hand, abs=1e-5)
    assert calibrated.known  # 0.731 >= 0.6
    assert [c.landmark_id for c in calibrated.candidates] == [10, 20, 30]
    assert calibrated.candidates[1].score == pytest.approx(1 / (1 + np.exp(-(10 * 0.6 - 7))), abs=1e-5)  # 0.269
    [doubtful] = recognizer.score(np.array([[0.7, 0.71, 0.0]], dtype=np.float32) / 1.0, np.zeros((1, 3), np.float32))
    assert doubtful.confidence == pytest.approx(1 / (1 + np.exp(-(10 * 0.71 - 7))), abs=1e-4)  # 0.525
    assert not doubtful.known


def test_teaching_outlook_reads_the_measured_coverage_and_the_minimum_photos():
    from landmarks.recognize.confidence import MIN_TEACHING_PHOTOS, teaching_outlook

    measured = {"coverage": 0.7, "taught": {"trained_coverage": 0.6, "min_photos": 10,
                                            "by_photos": {"3": {"coverage": 0.2}, "5": {"coverage": 0.4},
                                                          "10": {"coverage": 0.65}}}}
    calibration = Calibration("platt", {"slope": 1.0, "intercept": 0.0}, 0.5, measured=measured)
    four = teaching_outlook(calibration, 4, taught=True)
    assert four.expected_coverage == pytest.approx(0.3) and four.more_photos_help
    assert "at least 10" in four.sentence() and "about 30%" in four.sentence()
    assert teaching_outlook(calibration, 12, taught=True).sentence() is None
    assert teaching_outlook(calibration, 12, taught=True).expected_coverage == pytest.approx(0.65)
    trained = teaching_outlook(calibration, 3, taught=False)
    assert trained.expected_coverage == pytest.approx(0.6) and trained.sentence() is None
    plain = teaching_outlook(None, 2, taught=True)  # not calibrated on taught landmarks: the measured default
    assert plain.expected_coverage is None and plain.min_photos == MIN_TEACHING_PHOTOS and plain.more_photos_help


def test_a_taught_map_rescores_taught_landmarks_and_the_answers_are_ordered_again():
    from landmarks.recognize.prediction import Candidate, Prediction

    calibration = Calibration("platt", {"slope": 10.0, "intercept": -5.0}, 0.5,
                              taught={"method": "platt", "parameters": {"slope": 10.0, "intercept": -3.0}})
    trained_then_taught = Prediction(7, "trained", 0.5, [Candidate(7, "trained", 0.5), Candidate(99, "taught", 0.4)])
    calibration.apply([trained_then_taught], 0.6, is_taught=lambda i: i == 99)
    # trained: sigmoid(10 * 0.5 - 5) = 0.5; taught: sigmoid(10 * 0.4 - 3) = 0.731: the taught landmark is the answer
    assert trained_then_taught.landmark_id == 99 and trained_then_taught.name == "taught"
    assert trained_then_taught.confidence == pytest.approx(1 / (1 + np.exp(-1.0)), abs=1e-6)
    assert trained_then_taught.known
    assert [c.landmark_id for c in trained_then_taught.candidates] == [99, 7]
    features = scores_only([0.4, 0.4])
    np.testing.assert_allclose(calibration(features, [False, True]), [1 / (1 + np.exp(1.0)), 1 / (1 + np.exp(-1.0))])
    assert Calibration.from_dict(calibration.to_dict()).taught == calibration.taught
