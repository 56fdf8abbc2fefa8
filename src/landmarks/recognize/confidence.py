"""Confidence: the map from the Recognizer's fused score to P(the answer is right), and "no known landmark".

The fused score (``Recognizer.score``) ranks answers well but its scale means nothing: a selfie can score 0.4.
After training, each run fits a map from that score (and, for the ``gate`` method, a few cheap features of the
same prediction, ``prediction_features``) to the probability that the answer is right, on photos the weights never
learned from (``landmarks.train.open_set`` gathers those answers, ``landmarks.train.fit_confidence`` fits the map
and the threshold). This module applies what was fitted, at prediction time:

- ``platt``: logistic regression on the fused score, ``p = 1 / (1 + exp(-(a * score + b)))`` with ``a > 0``:
  strictly increasing, so answers keep their order and GAP cannot change;
- ``isotonic``: pool-adjacent-violators on the fused score, interpolated linearly between the pooled blocks and
  mixed with 0.1 % of the score itself so that it is strictly increasing (ties would reorder GAP's ranking);
- ``gate``: logistic regression over ``FEATURES`` (score, margin to the second landmark, neighbour agreement,
  nearest non-landmark photo, nearest photo of the answer); may reorder answers, so GAP may move either way;
- ``none``: the fused score itself.

A prediction is a known answer when its confidence reaches the threshold (``recognize.min_confidence``):
``is_known``, the one place that decides it (the live page's ``scoring.js`` mirrors it). The map and the threshold
are stored in the run's ``scoring.json`` (``landmarks.run_folder``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from landmarks.data.catalog import NO_LANDMARK
from landmarks.errors import ConfigError
from landmarks.recognize.prediction import Prediction

METHODS = ("platt", "isotonic", "gate", "none")

FEATURES = ("score", "margin", "agreement", "non_landmark_similarity", "knn_similarity")

ISOTONIC_TILT = 1e-3  # weight of the score itself in the isotonic map, so that it is strictly increasing


def is_known(confidence: float, min_confidence: float) -> bool:
    """Whether an answer is given as a known landmark: its confidence reached the threshold (``known``)."""
    return confidence >= min_confidence


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


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


@dataclass
class Calibration:
    """A fitted map from prediction features to P(right), and the "no known landmark" threshold on its scale."""

    method: str
    parameters: dict[str, Any]
    threshold: float
    target_precision: float | None = None
    fitted_on: dict[str, Any] = field(default_factory=dict)  # what the calibration data was, with counts
    measured: dict[str, Any] = field(default_factory=dict)  # precision/coverage at the threshold, log loss, ECE
    # the map of answers that name a taught landmark ({"method", "parameters"}, the same method), fitted on those
    # answers alone (their fused score means less: a few reference photos, an imprinted centre); None: the one map
    taught: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"Unknown calibration method {self.method!r}; expected one of {', '.join(METHODS)}.")

    @property
    def monotone(self) -> bool:
        """True when the map depends on the fused score alone and keeps its order (GAP unchanged; with a ``taught``
        map, the order within trained and within taught landmarks)."""
        return self.method != "gate"

    def taught_map(self) -> "Calibration":
        """The map of answers naming a taught landmark: ``taught`` when fitted, else this one."""
        if not self.taught:
            return self
        return Calibration(self.taught["method"], self.taught["parameters"], self.threshold)

    def map_scores(self, scores: np.ndarray | Sequence[float], taught: np.ndarray | Sequence[bool] | None = None
                   ) -> np.ndarray:
        """P(right) of fused scores (monotone methods only; the gate needs every feature); ``taught``: which scores
        are of taught landmarks (``taught_map``)."""
        if taught is not None and self.taught:
            taught = np.asarray(taught, dtype=bool)
            scores = np.asarray(scores, dtype=np.float64)
            out = self.map_scores(scores)
            out[taught] = self.taught_map().map_scores(scores[taught])
            return out
        s = np.asarray(scores, dtype=np.float64)
        if self.method == "none":
            return np.clip(s, 0.0, 1.0)
        if self.method == "platt":
            return sigmoid(self.parameters["slope"] * s + self.parameters["intercept"])
        if self.method == "isotonic":
            x, y = np.asarray(self.parameters["x"]), np.asarray(self.parameters["y"])
            return (1 - ISOTONIC_TILT) * np.interp(s, x, y) + ISOTONIC_TILT * np.clip(s, 0.0, 1.0)
        raise ValueError("the gate maps features, not scores: use __call__")

    def __call__(self, features: np.ndarray, taught: np.ndarray | Sequence[bool] | None = None) -> np.ndarray:
        """P(right) for rows of ``prediction_features``; ``taught``: which rows' answers name a taught landmark."""
        features = np.asarray(features, dtype=np.float64).reshape(-1, len(FEATURES))
        if taught is not None and self.taught:
            taught = np.asarray(taught, dtype=bool)
            out = Calibration(self.method, self.parameters, self.threshold)(features)
            out[taught] = self.taught_map()(features[taught])
            return out
        if self.method != "gate":
            return self.map_scores(features[:, 0])
        mean, scale = np.asarray(self.parameters["mean"]), np.asarray(self.parameters["scale"])
        z = ((features - mean) / scale) @ np.asarray(self.parameters["weights"]) + self.parameters["bias"]
        return sigmoid(z)

    def apply(self, predictions: Sequence[Prediction], min_confidence: float,
              is_taught: Callable[[int], bool] | None = None) -> None:
        """Replace, in place, the fused scores of predictions by P(right) and decide ``known`` against
        ``min_confidence``. Monotone maps rescale every candidate's score (their order stays; with a ``taught`` map,
        a taught landmark's by that map, ``is_taught`` telling them apart, and the candidates are ordered again by
        P(right)); the gate rescales the best answer only, the runners-up keep their fused score."""
        taught = np.array([bool(is_taught and is_taught(p.landmark_id)) for p in predictions], dtype=bool)
        probabilities = self(prediction_features(predictions), taught)
        for prediction, probability in zip(predictions, probabilities):
            if self.monotone and prediction.candidates:
                kinds = [bool(is_taught and is_taught(c.landmark_id)) for c in prediction.candidates]
                mapped = self.map_scores([c.score for c in prediction.candidates], kinds)
                for candidate, value in zip(prediction.candidates, mapped):
                    candidate.score = round(float(value), 9)  # 9 digits: keep the order of near-certain answers
                if self.taught:
                    prediction.candidates.sort(key=lambda c: (-c.score, c.landmark_id))
                    best = prediction.candidates[0]
                    prediction.landmark_id, prediction.name, probability = best.landmark_id, best.name, best.score
            elif prediction.candidates:
                prediction.candidates[0].score = round(float(probability), 9)
            prediction.confidence = round(float(probability), 9)
            prediction.known = is_known(prediction.confidence, min_confidence)

    # -- stored form ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Calibration":
        """KeyError or TypeError when ``raw`` is not a stored calibration."""
        return cls(**{k: raw[k] for k in ("method", "parameters", "threshold")},
                   **{k: raw[k] for k in ("target_precision", "fitted_on", "measured", "taught") if k in raw})


MIN_TEACHING_PHOTOS = 5  # runs calibrated without taught landmarks: below this, "more photos will help" (bench_enrol)


@dataclass
class TeachingOutlook:
    """How sure a run is about a landmark taught from ``photos`` photos: the share of its other photos it is
    expected to name, right and above the threshold (None when the calibration did not measure it), and whether
    more photos would help (fewer than ``min_photos``)."""

    photos: int
    expected_coverage: float | None
    min_photos: int

    @property
    def more_photos_help(self) -> bool:
        return self.photos < self.min_photos

    def sentence(self) -> str | None:
        """One sentence for a landmark taught from too few photos, else None."""
        if not self.more_photos_help:
            return None
        expected = (f"; from {self.photos} it names about {self.expected_coverage:.0%} of its photos"
                    if self.expected_coverage is not None else "")
        return (f"Taught from {self.photos} photo{'s' if self.photos != 1 else ''}: more photos (at least "
                f"{self.min_photos}, from different angles) will help the service recognise it{expected}.")


def teaching_outlook(calibration: Calibration | None, photos: int, taught: bool) -> TeachingOutlook:
    """The outlook of a landmark with ``photos`` reference photos; ``taught``: enrolled after training (else the
    calibration's coverage of trained landmarks, and no minimum). The expected coverage of a taught landmark is
    read off ``Calibration.measured["taught"]`` (coverage per number of teaching photos, linearly between them)."""
    measured = (calibration.measured.get("taught") if calibration is not None else None) or {}
    if not taught:
        coverage = measured.get("trained_coverage", calibration.measured.get("coverage") if calibration else None)
        return TeachingOutlook(photos, coverage, 0)
    by_photos = {int(n): f["coverage"] for n, f in measured.get("by_photos", {}).items()}
    coverage = None
    if by_photos:
        counts = sorted(by_photos)
        coverage = float(np.interp(photos, counts, [by_photos[n] for n in counts]))
    return TeachingOutlook(photos, coverage, int(measured.get("min_photos", MIN_TEACHING_PHOTOS)))
