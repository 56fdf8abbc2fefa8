"""Fitting the confidence map and choosing the threshold: by hand and on noisy samples."""

from __future__ import annotations


import numpy as np
import pytest

from landmarks.errors import ConfigError
from landmarks.recognize.confidence import FEATURES
from landmarks.train.fit_confidence import choose_threshold, fit_calibration, fit_logistic, pool_adjacent_violators
from landmarks.evaluate.metrics import expected_calibration_error
from tests_helpers import noisy_samples, scores_only


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
