"""Fitting the confidence map and choosing the threshold of "no known landmark", after training.

``fit_calibration`` fits ``recognize.calibration`` (platt, isotonic, gate or none; ``landmarks.recognize.confidence``
applies them) to calibration answers (``landmarks.train.open_set`` gathers them); ``choose_threshold`` sets
``recognize.min_confidence`` for ``recognize.target_precision``: the lowest confidence at which the answers above it
are right that often, with ``recognize.precision_certainty`` (Wilson's one-sided lower bound, so a few hundred
answers do not set the threshold on luck).
"""

from __future__ import annotations

import logging

import numpy as np

from landmarks.errors import ConfigError
from landmarks.evaluate.metrics import precision_coverage, precision_lower_bound
from landmarks.recognize.confidence import FEATURES, METHODS, Calibration, sigmoid

log = logging.getLogger(__name__)

L2_PENALTY = 1e-2  # ridge on the logistic weights (not the bias): keeps the weights of a separable set finite


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2_PENALTY, iterations: int = 100) -> tuple[np.ndarray, float]:
    """Weights and bias of a logistic regression of ``y`` (0/1) on ``x`` (N, D) by Newton's method (ridge on weights)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(y), -1)
    y = np.asarray(y, dtype=np.float64)
    design = np.hstack([x, np.ones((len(x), 1))])
    theta = np.zeros(design.shape[1])
    penalty = np.full(design.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = sigmoid(design @ theta)
        gradient = design.T @ (p - y) + penalty * theta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty) + 1e-9 * np.eye(len(theta))
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return theta[:-1], float(theta[-1])


def pool_adjacent_violators(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic (non-decreasing) regression of ``y`` on ``x``: the pooled blocks' mean x and mean y, in order of x."""
    order = np.argsort(x, kind="stable")
    xs, ys = np.asarray(x, dtype=np.float64)[order], np.asarray(y, dtype=np.float64)[order]
    # equal x values start as one block so that the map is a function of x
    unique_x, starts = np.unique(xs, return_index=True)
    sums = np.add.reduceat(ys, starts)
    counts = np.diff(np.append(starts, len(xs))).astype(np.float64)
    block_x, block_y, block_n = [], [], []
    for ux, s, n in zip(unique_x, sums, counts):
        block_x.append(ux * n)
        block_y.append(s)
        block_n.append(n)
        while len(block_y) > 1 and block_y[-2] / block_n[-2] > block_y[-1] / block_n[-1]:
            bx, by, bn = block_x.pop(), block_y.pop(), block_n.pop()
            block_x[-1] += bx
            block_y[-1] += by
            block_n[-1] += bn
    n = np.asarray(block_n)
    return np.asarray(block_x) / n, np.asarray(block_y) / n


def fit_calibration(features: np.ndarray, correct: np.ndarray, method: str = "platt") -> Calibration:
    """Fit ``method`` to calibration samples: ``features`` from ``prediction_features``, ``correct`` 0/1.

    The threshold is left at 0.5; ``choose_threshold`` sets it. With only right or only wrong answers to learn
    from, nothing can be fitted and the map is the fused score itself (method ``none``)."""
    features = np.asarray(features, dtype=np.float64).reshape(-1, len(FEATURES))
    y = np.asarray(correct, dtype=np.float64)
    if method == "none" or len(np.unique(y)) < 2:
        if method != "none":
            log.warning("calibration needs both right and wrong answers (got %d right of %d); confidence left as the "
                        "fused score", int(y.sum()), len(y))
        return Calibration("none", {}, 0.5)
    scores = features[:, 0]
    if method == "platt":
        (slope,), intercept = fit_logistic(scores[:, None], y)
        if slope <= 0:  # a score that does not rank right answers higher: keep the order, flatten the scale
            slope = 1e-6
        return Calibration("platt", {"slope": float(slope), "intercept": float(intercept)}, 0.5)
    if method == "isotonic":
        x, p = pool_adjacent_violators(scores, y)
        return Calibration("isotonic", {"x": x.round(6).tolist(), "y": p.round(6).tolist()}, 0.5)
    if method == "gate":
        mean = features.mean(axis=0)
        scale = features.std(axis=0)
        scale[scale < 1e-9] = 1.0
        weights, bias = fit_logistic((features - mean) / scale, y)
        return Calibration("gate", {"features": list(FEATURES), "weights": weights.tolist(), "bias": bias,
                                    "mean": mean.tolist(), "scale": scale.tolist()}, 0.5)
    raise ConfigError(f"Unknown calibration method {method!r}; expected one of {', '.join(METHODS)}.")


def choose_threshold(confidences: np.ndarray, correct: np.ndarray, target_precision: float,
                     certainty: float = 0.5) -> tuple[float, bool]:
    """The lowest confidence t at which the answers with confidence >= t are right at least ``target_precision``
    of the time, with ``certainty`` (Wilson's lower bound of their precision reaches the target; 0.5: their measured
    precision does), and whether the target was reached. When it never is, the threshold with the best precision
    (the lowest such) and False."""
    if not 0.0 < target_precision <= 1.0:
        raise ConfigError(f"recognize.target_precision must be in (0, 1], got {target_precision}.")
    if not 0.5 <= certainty < 1.0:
        raise ConfigError(f"recognize.precision_certainty must be in [0.5, 1), got {certainty}.")
    confidences = np.asarray(confidences, dtype=np.float64)
    if len(confidences) == 0:
        return 1.0, False
    table = precision_coverage(confidences, correct, np.ones(len(confidences), bool))
    bound = precision_lower_bound(table["precision"] * table["answers"], table["answers"], certainty)
    reached = np.flatnonzero(bound >= target_precision - 1e-12)
    if len(reached):
        return float(table["threshold"][reached[0]]), True
    best = int(np.argmax(table["precision"]))
    return float(table["threshold"][best]), False
