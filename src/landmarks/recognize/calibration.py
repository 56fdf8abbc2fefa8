"""Calibration: turn the Recognizer's fused score into P(the answer is right), and choose "no known landmark".

The fused score (``Recognizer.score``) ranks answers well but its scale means nothing: a selfie can score 0.4.
After training, each run fits a map from that score (and, for the ``gate`` method, a few cheap features of the
same prediction) to the probability that the answer is right, on photos the weights never learned from:

- **held-out photos** (the validation split) searched against the training photos only: right or wrong answers;
- **hidden landmarks**, photos of landmarks the answering model was never trained on (every answer is wrong), in
  one of two ways (``recognize.hidden_landmarks``):
  ``model`` (ArcFace heads): six calibration models, fresh necks and ArcFace heads each trained on the run's
  pooled backbone features of a random three quarters of the landmarks, answer about the validation photos of
  those and about photos of the quarter they never saw, as ``benchmarks/bench_open_set.py`` hides landmarks;
  seconds of training, since the features were computed anyway while embedding the splits.
  ``leave-out`` (other heads, or asked for): the held-out photos asked again with their own landmark left out of
  the candidates (its reference photos dropped from the kNN, its classifier column removed). This approximates
  ``bench_open_set.py``'s hidden landmarks without any training, but for trained weights it is optimistic: the
  embedding was trained to pull those photos towards their (now hidden) landmark and away from the others,
  whereas a landmark never seen in training lies closer to the known ones (on the proxy, with the bank, glr's
  known answers were right 73 % of the time at a threshold chosen for 95 %; 92 % with the calibration models).
  Weights that never saw the photos (``baseline-knn``: 96 %) make it exact;
- **non-landmark photos** from a bank (``data.non_landmarks=DIR``), the part of it that is not in the index
  (``split_non_landmark_bank``): every answer is wrong.

"Probability" is relative to that mix (about one hidden-landmark photo per held-out photo, plus the bank).
The functions that gather those answers from a run live in ``landmarks.evaluate.calibrate``.

Methods (``recognize.calibration``):

- ``platt``: logistic regression on the fused score, ``p = 1 / (1 + exp(-(a * score + b)))`` with ``a > 0``:
  strictly increasing, so answers keep their order and GAP cannot change;
- ``isotonic``: pool-adjacent-violators on the fused score, interpolated linearly between the pooled blocks and
  mixed with 0.1 % of the score itself so that it is strictly increasing (ties would reorder GAP's ranking);
- ``gate``: logistic regression over ``FEATURES`` (score, margin to the second landmark, neighbour agreement,
  nearest non-landmark photo, nearest photo of the answer); may reorder answers, so GAP may move either way;
- ``none``: the fused score itself, threshold left at ``recognize.min_confidence``.

The threshold (``recognize.min_confidence``) is the lowest calibrated confidence at which the known answers on
the calibration data are right at least ``recognize.target_precision`` of the time (``choose_threshold``).
Everything is saved in ``RUN/calibration.json`` and read back by ``Recognizer.load``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, Protocol, Sequence

import numpy as np

from landmarks.data.catalog import NO_LANDMARK
from landmarks.errors import ConfigError, DataError
from landmarks.utils import write_json

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
METHODS = ("platt", "isotonic", "gate", "none")
FEATURES = ("score", "margin", "agreement", "non_landmark_similarity", "knn_similarity")
ISOTONIC_TILT = 1e-3  # weight of the score itself in the isotonic map, so that it is strictly increasing
L2_PENALTY = 1e-2  # ridge on the logistic weights (not the bias): keeps the weights of a separable set finite
NON_LANDMARK_REFERENCE_FRACTION = 0.5  # share of a non-landmark bank that becomes references (-1), the rest negatives


# -- features ---------------------------------------------------------------------------------------
class Prediction(Protocol):
    """What calibration reads of ``landmarks.recognize.recognizer.Prediction`` (not imported: it imports this)."""

    landmark_id: int
    confidence: float
    known: bool
    candidates: list  # of Candidate: landmark_id, name, score
    neighbours: list  # of Neighbour: image_id, landmark_id, similarity


def prediction_features(predictions: Sequence[Prediction]) -> np.ndarray:
    """(N, len(FEATURES)) features of predictions scored with uncalibrated (fused) candidate scores.

    score: the best candidate's fused score; margin: best minus second candidate (the score when alone);
    agreement: share of the reported nearest reference photos that show the best landmark; non_landmark_similarity:
    cosine similarity of the nearest non-landmark reference photo among them (0 when none); knn_similarity: that
    of the nearest reference photo of the best landmark among them (0 when none).
    """
    rows = np.zeros((len(predictions), len(FEATURES)), dtype=np.float64)
    for row, prediction in enumerate(predictions):
        scores = [float(c.score) for c in prediction.candidates]
        best = scores[0] if scores else 0.0
        neighbours = prediction.neighbours
        agreement = (
            sum(int(n.landmark_id) == int(prediction.landmark_id) for n in neighbours) / len(neighbours)
            if neighbours else 0.0
        )
        non_landmark = max([float(n.similarity) for n in neighbours if int(n.landmark_id) == NO_LANDMARK], default=0.0)
        knn = max([float(n.similarity) for n in neighbours if int(n.landmark_id) == int(prediction.landmark_id)],
                  default=0.0)
        rows[row] = (best, best - (scores[1] if len(scores) > 1 else 0.0), agreement, max(0.0, non_landmark),
                     max(0.0, knn))
    return rows


# -- fitting ----------------------------------------------------------------------------------------
def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2_PENALTY, iterations: int = 100) -> tuple[np.ndarray, float]:
    """Weights and bias of a logistic regression of ``y`` (0/1) on ``x`` (N, D) by Newton's method (ridge on weights)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(y), -1)
    y = np.asarray(y, dtype=np.float64)
    design = np.hstack([x, np.ones((len(x), 1))])
    theta = np.zeros(design.shape[1])
    penalty = np.full(design.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = _sigmoid(design @ theta)
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


# -- the calibration --------------------------------------------------------------------------------
@dataclass
class Calibration:
    """A fitted map from prediction features to P(right), and the "no known landmark" threshold on its scale."""

    method: str
    parameters: dict[str, Any]
    threshold: float
    target_precision: float | None = None
    fitted_on: dict[str, Any] = field(default_factory=dict)  # what the calibration data was, with counts
    measured: dict[str, Any] = field(default_factory=dict)  # precision/coverage at the threshold, log loss, ECE

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"Unknown calibration method {self.method!r}; expected one of {', '.join(METHODS)}.")

    @property
    def monotone(self) -> bool:
        """True when the map depends on the fused score alone and keeps its order (GAP unchanged)."""
        return self.method != "gate"

    def map_scores(self, scores: np.ndarray | Sequence[float]) -> np.ndarray:
        """P(right) of fused scores (monotone methods only; the gate needs every feature)."""
        s = np.asarray(scores, dtype=np.float64)
        if self.method == "none":
            return np.clip(s, 0.0, 1.0)
        if self.method == "platt":
            return _sigmoid(self.parameters["slope"] * s + self.parameters["intercept"])
        if self.method == "isotonic":
            x, y = np.asarray(self.parameters["x"]), np.asarray(self.parameters["y"])
            return (1 - ISOTONIC_TILT) * np.interp(s, x, y) + ISOTONIC_TILT * np.clip(s, 0.0, 1.0)
        raise ValueError("the gate maps features, not scores: use __call__")

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """P(right) for rows of ``prediction_features``."""
        features = np.asarray(features, dtype=np.float64).reshape(-1, len(FEATURES))
        if self.method != "gate":
            return self.map_scores(features[:, 0])
        mean, scale = np.asarray(self.parameters["mean"]), np.asarray(self.parameters["scale"])
        z = ((features - mean) / scale) @ np.asarray(self.parameters["weights"]) + self.parameters["bias"]
        return _sigmoid(z)

    def apply(self, predictions: Sequence[Prediction], min_confidence: float) -> None:
        """Replace, in place, the fused scores of predictions by P(right) and decide ``known`` against
        ``min_confidence``. Monotone maps rescale every candidate's score (their order stays); the gate rescales
        the best answer only, the runners-up keep their fused score."""
        probabilities = self(prediction_features(predictions))
        for prediction, probability in zip(predictions, probabilities):
            if self.monotone and prediction.candidates:
                mapped = self.map_scores([c.score for c in prediction.candidates])
                for candidate, value in zip(prediction.candidates, mapped):
                    candidate.score = round(float(value), 9)  # 9 digits: keep the order of near-certain answers
            elif prediction.candidates:
                prediction.candidates[0].score = round(float(probability), 9)
            prediction.confidence = round(float(probability), 9)
            prediction.known = prediction.confidence >= min_confidence

    # -- files ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, run_dir: Path) -> Path:
        path = Path(run_dir) / CALIBRATION_FILE
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, run_dir: Path) -> "Calibration | None":
        """The run's calibration.json, or None when the run has none."""
        path = Path(run_dir) / CALIBRATION_FILE
        if not path.exists():
            return None
        try:
            raw = json.loads(path.read_text())
            return cls(**{k: raw[k] for k in ("method", "parameters", "threshold")},
                       **{k: raw[k] for k in ("target_precision", "fitted_on", "measured") if k in raw})
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(f"{path} is not a calibration file ({error}); delete it or train the run again.") from None


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


# -- threshold --------------------------------------------------------------------------------------
def precision_coverage(confidences: np.ndarray, correct: np.ndarray, is_landmark: np.ndarray) -> dict[str, np.ndarray]:
    """Per candidate threshold t (every distinct confidence, ascending): answers given (confidence >= t), their
    precision, coverage (right answers / photos that show a known landmark) and the share of the other photos
    answered with a landmark."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    is_landmark = np.asarray(is_landmark, dtype=bool)
    thresholds = np.unique(confidences)
    order = np.argsort(-confidences, kind="stable")
    sorted_conf = confidences[order]
    right_cum = np.cumsum(correct[order])
    other_cum = np.cumsum(~is_landmark[order])
    # answers at threshold t: every sample with confidence >= t
    given = len(confidences) - np.searchsorted(sorted_conf[::-1], thresholds, side="left")
    right = np.where(given > 0, right_cum[np.maximum(given - 1, 0)], 0)
    others = np.where(given > 0, other_cum[np.maximum(given - 1, 0)], 0)
    return {
        "threshold": thresholds,
        "answers": given,
        "precision": np.divide(right, given, out=np.ones(len(given)), where=given > 0),
        "coverage": right / max(1, int(is_landmark.sum())),
        "false_landmark_rate": others / max(1, int((~is_landmark).sum())),
    }


def precision_lower_bound(right: np.ndarray, answers: np.ndarray, certainty: float) -> np.ndarray:
    """One-sided Wilson lower bound of ``right / answers`` at ``certainty`` (0.5: the share itself; 1 where no answer)."""
    right, answers = np.asarray(right, np.float64), np.asarray(answers, np.float64)
    share = np.divide(right, answers, out=np.ones(len(answers)), where=answers > 0)
    z = NormalDist().inv_cdf(certainty)
    if z <= 0:
        return share
    n = np.maximum(answers, 1.0)
    centre = share + z * z / (2 * n)
    spread = z * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return np.where(answers > 0, (centre - spread) / (1 + z * z / n), 1.0)


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


# -- summaries --------------------------------------------------------------------------------------
def reliability_bins(confidences: np.ndarray, correct: np.ndarray, bins: int = 10) -> dict[str, np.ndarray]:
    """Equal-width bins of confidence: count, mean confidence and share right per bin (NaN where empty)."""
    confidences = np.clip(np.asarray(confidences, dtype=np.float64), 0.0, 1.0)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidences, edges[1:-1]), 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, confidences, minlength=bins) / count
        observed = np.bincount(which, correct, minlength=bins) / count
    return {"edges": edges, "count": count, "mean_confidence": mean_confidence, "observed": observed}


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Mean |confidence - share right| over equal-width bins, weighted by their counts (0 = calibrated)."""
    table = reliability_bins(confidences, correct, bins)
    filled = table["count"] > 0
    if not filled.any():
        return 0.0
    gaps = np.abs(table["mean_confidence"][filled] - table["observed"][filled])
    return float((gaps * table["count"][filled]).sum() / table["count"][filled].sum())


def log_loss(confidences: np.ndarray, correct: np.ndarray) -> float:
    p = np.clip(np.asarray(confidences, dtype=np.float64), 1e-6, 1 - 1e-6)
    y = np.asarray(correct, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()) if len(y) else math.nan


# -- the non-landmark bank --------------------------------------------------------------------------
def split_non_landmark_bank(
    paths: Sequence[str | Path], reference_fraction: float = NON_LANDMARK_REFERENCE_FRACTION, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """Split a bank of non-landmark photos into (references, calibration negatives), never both.

    Each photo goes by the SHA-1 of the seed and its bytes, so the split does not depend on the photos' names,
    order or number: adding photos never moves the others."""
    references, negatives = [], []
    for path in sorted(Path(p) for p in paths):
        digest = hashlib.sha1(f"{seed}:".encode() + path.read_bytes()).digest()
        (references if int.from_bytes(digest[:8], "big") / 2**64 < reference_fraction else negatives).append(path)
    return references, negatives
