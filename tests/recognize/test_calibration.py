"""Calibration of the fused score: fitting, threshold choice, the non-landmark bank split, calibration.json."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from landmarks.errors import ConfigError, DataError
from landmarks.recognize.calibration import (
    FEATURES,
    Calibration,
    choose_threshold,
    expected_calibration_error,
    fit_calibration,
    fit_logistic,
    pool_adjacent_violators,
    precision_coverage,
    precision_lower_bound,
    prediction_features,
    reliability_bins,
    split_non_landmark_bank,
)


def scores_only(scores) -> np.ndarray:
    features = np.zeros((len(scores), len(FEATURES)))
    features[:, 0] = scores
    return features


def noisy_samples(seed: int = 0, count: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Scores in [0, 1] where P(right) = score (a perfectly calibrated score)."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0, 1, count)
    return scores, (rng.uniform(0, 1, count) < scores).astype(int)


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_monotone_methods_are_strictly_increasing_and_in_unit_interval(method):
    scores, correct = noisy_samples()
    calibration = fit_calibration(scores_only(scores), correct, method)
    grid = np.linspace(-0.2, 1.2, 301)
    mapped = calibration.map_scores(grid)
    assert np.all((mapped >= 0) & (mapped <= 1))
    inside = (grid >= 0) & (grid <= 1)
    assert np.all(np.diff(mapped[inside]) > 0)
    assert np.all(np.diff(mapped) >= 0)
    assert calibration.monotone


def test_platt_recovers_a_logistic_relation():
    rng = np.random.default_rng(1)
    scores = rng.uniform(0, 1, 20000)
    correct = (rng.uniform(0, 1, len(scores)) < 1 / (1 + np.exp(-(8 * scores - 4)))).astype(int)
    calibration = fit_calibration(scores_only(scores), correct, "platt")
    assert calibration.parameters["slope"] == pytest.approx(8, rel=0.1)
    assert calibration.parameters["intercept"] == pytest.approx(-4, rel=0.1)


def test_logistic_without_features_is_the_log_odds_of_the_base_rate():
    # by hand: 3 right of 4 -> bias = log(3 / 1); a constant feature carries nothing
    weights, bias = fit_logistic(np.zeros((4, 1)), np.array([1, 1, 1, 0]))
    assert bias == pytest.approx(np.log(3), abs=1e-6)
    assert weights[0] == pytest.approx(0, abs=1e-9)


def test_isotonic_by_hand():
    # scores 0.1, 0.2, 0.3, 0.4 with right answers 0, 1, 0, 1: the middle pair violates the order and is pooled
    x, y = pool_adjacent_violators(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 0, 1]))
    np.testing.assert_allclose(x, [0.1, 0.25, 0.4])
    np.testing.assert_allclose(y, [0.0, 0.5, 1.0])
    calibration = fit_calibration(scores_only([0.1, 0.2, 0.3, 0.4]), [0, 1, 0, 1], "isotonic")
    assert calibration.map_scores([0.25])[0] == pytest.approx(0.5, abs=1e-3)
    assert calibration.map_scores([0.325])[0] == pytest.approx(0.75, abs=1e-3)  # halfway between 0.25 and 0.4


def test_calibrated_confidence_matches_the_observed_share_right():
    rng = np.random.default_rng(2)
    scores = rng.uniform(0, 1, 5000)
    correct = (rng.uniform(0, 1, len(scores)) < 1 / (1 + np.exp(-(8 * scores - 4)))).astype(int)
    squashed = 0.1 + 0.4 * scores  # well ranked, badly scaled: 0.5 means right 90 % of the time
    for method in ("platt", "isotonic"):
        calibration = fit_calibration(scores_only(squashed), correct, method)
        assert expected_calibration_error(calibration.map_scores(squashed), correct) < 0.05
    assert expected_calibration_error(squashed, correct) > 0.15


def test_gate_uses_the_other_features():
    rng = np.random.default_rng(3)
    features = rng.uniform(0, 1, (2000, len(FEATURES)))
    correct = (features[:, 3] < 0.5).astype(int)  # only the nearest non-landmark photo tells
    gate = fit_calibration(features, correct, "gate")
    assert not gate.monotone
    probabilities = gate(features)
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    assert ((probabilities > 0.5) == correct.astype(bool)).mean() > 0.95


def test_only_right_answers_leave_the_score_as_it_is():
    calibration = fit_calibration(scores_only([0.2, 0.9]), [1, 1], "platt")
    assert calibration.method == "none"
    np.testing.assert_allclose(calibration.map_scores([0.2, 0.9]), [0.2, 0.9])


def test_unknown_method_is_a_config_error():
    with pytest.raises(ConfigError, match="calibration method"):
        fit_calibration(scores_only([0.1, 0.9]), [0, 1], "magic")


def test_threshold_is_the_lowest_confidence_reaching_the_target_precision():
    confidences = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    correct = np.array([1, 1, 1, 0, 1, 0, 0])
    # answers at >= 0.8: 3/3 right; >= 0.7: 3/4; >= 0.6: 4/5 = 0.8; >= 0.5: 4/6; >= 0.4: 4/7
    assert choose_threshold(confidences, correct, 1.0) == (0.8, True)
    assert choose_threshold(confidences, correct, 0.8) == (0.6, True)
    assert choose_threshold(confidences, correct, 0.75) == (0.6, True)
    assert choose_threshold(confidences, correct, 0.5) == (0.4, True)


def test_threshold_when_the_target_is_never_reached():
    threshold, reached = choose_threshold(np.array([0.9, 0.8, 0.7]), np.array([0, 1, 0]), 0.95)
    assert not reached and threshold == 0.8  # best precision: 1/2 at >= 0.8
    with pytest.raises(ConfigError):
        choose_threshold(np.array([0.5]), np.array([1]), 1.5)


def test_precision_lower_bound_by_hand():
    # Wilson's bound for 40 of 40 right at 90 %: 40 / (40 + z^2), z = 1.2816; 0.5 is the share itself
    bound = precision_lower_bound(np.array([40, 40, 0]), np.array([40, 41, 0]), 0.9)
    np.testing.assert_allclose(bound[0], 40 / (40 + 1.2816**2), atol=1e-4)
    assert 0.92 < bound[1] < 0.923 and bound[2] == 1.0
    np.testing.assert_allclose(precision_lower_bound(np.array([3, 40]), np.array([4, 41]), 0.5), [0.75, 40 / 41])


def test_threshold_with_certainty_asks_for_more_evidence():
    """40 right answers, then 3 wrong ones lower down: 40 of 42 (95.2 %) is enough for the measured precision, but
    Wilson's 90 % bound is only 92 % at 40 of 41; 40 of 40 bounds it at 96 %, so the threshold stays above the first
    wrong answer."""
    confidences = np.concatenate([np.linspace(0.99, 0.60, 40), [0.55, 0.50, 0.45]])
    correct = np.concatenate([np.ones(40, int), np.zeros(3, int)])
    assert choose_threshold(confidences, correct, 0.95) == (0.50, True)
    assert choose_threshold(confidences, correct, 0.95, certainty=0.9) == (pytest.approx(0.60), True)
    threshold, reached = choose_threshold(confidences[:10], correct[:10], 0.95, certainty=0.9)  # 10 of 10: 88.6 %
    assert not reached and threshold == pytest.approx(0.99 - 9 * 0.01)
    with pytest.raises(ConfigError):
        choose_threshold(confidences, correct, 0.95, certainty=1.0)


def test_precision_coverage_by_hand():
    table = precision_coverage(np.array([0.9, 0.6, 0.6, 0.3]), np.array([1, 1, 0, 0]), np.array([1, 1, 1, 0]))
    np.testing.assert_allclose(table["threshold"], [0.3, 0.6, 0.9])
    np.testing.assert_array_equal(table["answers"], [4, 3, 1])
    np.testing.assert_allclose(table["precision"], [0.5, 2 / 3, 1.0])
    np.testing.assert_allclose(table["coverage"], [2 / 3, 2 / 3, 1 / 3])
    np.testing.assert_allclose(table["false_landmark_rate"], [1.0, 0.0, 0.0])


def test_reliability_bins_by_hand():
    table = reliability_bins(np.array([0.05, 0.15, 0.12, 0.95]), np.array([0, 1, 0, 1]), bins=10)
    assert table["count"].tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert table["observed"][1] == pytest.approx(0.5) and table["mean_confidence"][1] == pytest.approx(0.135)
    assert np.isnan(table["observed"][5])


def test_prediction_features_by_hand():
    candidate = lambda i, s: SimpleNamespace(landmark_id=i, score=s)  # noqa: E731
    neighbour = lambda i, s: SimpleNamespace(landmark_id=i, similarity=s)  # noqa: E731
    predictions = [
        SimpleNamespace(landmark_id=10, candidates=[candidate(10, 0.8), candidate(20, 0.3)],
                        neighbours=[neighbour(10, 0.9), neighbour(-1, 0.7), neighbour(10, 0.6), neighbour(20, 0.5)]),
        SimpleNamespace(landmark_id=20, candidates=[candidate(20, 0.4)], neighbours=[]),
    ]
    np.testing.assert_allclose(prediction_features(predictions), [[0.8, 0.5, 0.5, 0.7, 0.9], [0.4, 0.4, 0.0, 0.0, 0.0]])


def test_calibration_json_round_trip(tmp_path: Path):
    scores, correct = noisy_samples()
    calibration = fit_calibration(scores_only(scores), correct, "isotonic")
    calibration.threshold, calibration.target_precision = 0.61, 0.95
    calibration.fitted_on = {"held-out photos": 91}
    path = calibration.save(tmp_path)
    assert json.loads(path.read_text())["method"] == "isotonic"
    loaded = Calibration.load(tmp_path)
    assert loaded == calibration
    np.testing.assert_allclose(loaded.map_scores(scores), calibration.map_scores(scores))
    assert Calibration.load(tmp_path / "nothing") is None
    path.write_text("{}")
    with pytest.raises(DataError, match="not a calibration file"):
        Calibration.load(tmp_path)


def test_bank_split_is_disjoint_deterministic_and_by_content(tmp_path: Path):
    bank = tmp_path / "bank"
    bank.mkdir()
    for i in range(200):
        (bank / f"{i:03d}.jpg").write_bytes(f"photo {i}".encode())
    paths = sorted(bank.iterdir())
    references, negatives = split_non_landmark_bank(paths, 0.5, seed=1)
    assert set(references).isdisjoint(negatives) and set(references) | set(negatives) == set(paths)
    assert 70 < len(references) < 130
    assert split_non_landmark_bank(list(reversed(paths)), 0.5, seed=1) == (references, negatives)
    assert split_non_landmark_bank(paths, 0.5, seed=2) != (references, negatives)
    # renaming a photo or adding others does not move it
    renamed = bank / "zzz.jpg"
    references[0].rename(renamed)
    (bank / "new.jpg").write_bytes(b"another photo")
    moved_references, _ = split_non_landmark_bank(sorted(bank.iterdir()), 0.5, seed=1)
    assert renamed in moved_references and set(references[1:]) <= set(moved_references)


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
