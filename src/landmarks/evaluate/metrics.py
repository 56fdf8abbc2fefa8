"""Recognition and retrieval metrics: accuracy, top-k, Kaggle's GAP, mAP@k, per-landmark report, confusions.

Every function is pure (numpy/pandas in, a number or a DataFrame out). Landmark id -1 (``NO_LANDMARK``)
means "no landmark": in the truth, a query that shows none; in a prediction, an empty prediction.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from landmarks.data.catalog import NO_LANDMARK, NO_LANDMARK_NAME



def _ids(values: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.int64)
    if array.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {array.shape}.")
    return array


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"Expected one value per query, got lengths {lengths}.")


def _name(landmark_id: int, names: Mapping[int, str]) -> str:
    if landmark_id == NO_LANDMARK:
        return NO_LANDMARK_NAME
    return str(names.get(int(landmark_id), str(landmark_id)))


def global_average_precision(
    predicted_ids: Sequence[int], confidences: Sequence[float], true_ids: Sequence[int]
) -> float:
    """Kaggle's Global Average Precision (micro-AP) of the Google Landmark Recognition challenges.

    Each query has one prediction (a landmark id and a confidence); predicted id -1 is an empty
    prediction, which is not ranked and costs nothing. The non-empty predictions are sorted by
    confidence, highest first (a stable sort: ties keep their input order), and

        GAP = 1/M * sum_i P(i) * rel(i)

    where i runs over the ranked predictions, P(i) is the precision of the first i of them,
    rel(i) = 1 when prediction i is the query's landmark (else 0), and M is the number of queries
    that show a landmark (true id != -1). Queries without a landmark never count in M, but a
    prediction on one is a false positive that lowers the precision of every rank below it;
    a query with a landmark but an empty prediction counts in M and can only lower GAP.
    GAP is 0.0 when M = 0.
    """
    predicted = _ids(predicted_ids, "predicted_ids")
    true = _ids(true_ids, "true_ids")
    confidence = np.asarray(confidences, dtype=np.float64)
    _same_length(predicted_ids=predicted, confidences=confidence, true_ids=true)
    queries_with_landmark = int((true != NO_LANDMARK).sum())
    if queries_with_landmark == 0:
        return 0.0
    made = predicted != NO_LANDMARK
    order = np.argsort(-confidence[made], kind="stable")
    relevant = (predicted[made] == true[made])[order]  # predicted != -1 here, so a hit implies true != -1
    precision = np.cumsum(relevant) / np.arange(1, len(relevant) + 1)
    return float((precision * relevant).sum() / queries_with_landmark)


def accuracy(predicted_ids: Sequence[int], true_ids: Sequence[int]) -> float:
    """Share of the queries that show a landmark (true id != -1) whose predicted id is right.

    Queries without a landmark are left out entirely; an empty prediction (-1) on a landmark query
    counts as wrong. 0.0 when no query shows a landmark.
    """
    predicted, true = _ids(predicted_ids, "predicted_ids"), _ids(true_ids, "true_ids")
    _same_length(predicted_ids=predicted, true_ids=true)
    keep = true != NO_LANDMARK
    return float((predicted[keep] == true[keep]).mean()) if keep.any() else 0.0


def top_k_accuracy(ranked_ids: np.ndarray, true_ids: Sequence[int], k: int) -> float:
    """Share of the queries that show a landmark (true id != -1) whose landmark is among the first k ranked ids.

    ``ranked_ids`` is (N, K), best first, padded with -1; only the first k columns are read. Queries without
    a landmark are left out entirely. 0.0 when no query shows a landmark.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    ranked = np.asarray(ranked_ids, dtype=np.int64)
    if ranked.ndim != 2:
        raise ValueError(f"ranked_ids must be (queries, k), got shape {ranked.shape}.")
    true = _ids(true_ids, "true_ids")
    _same_length(ranked_ids=ranked, true_ids=true)
    keep = true != NO_LANDMARK
    if not keep.any():
        return 0.0
    return float((ranked[keep, :k] == true[keep, None]).any(axis=1).mean())


def mean_average_precision_at_k(
    retrieved_labels: np.ndarray, true_ids: Sequence[int], relevant_counts: Sequence[int], k: int = 100
) -> float:
    """Retrieval mAP@k of the GLDv2 retrieval task (Weyand et al. 2020).

    ``retrieved_labels[q]`` holds the landmark ids of query q's ranked neighbours (best first, -1 padding
    never relevant) and ``relevant_counts[q]`` = m_q, the number of reference photos of q's landmark. For
    each query with a landmark and m_q > 0:

        AP@k(q) = 1/min(m_q, k) * sum_{i<=k} P_q(i) * rel_q(i)

    with P_q(i) the precision of q's first i neighbours and rel_q(i) = 1 when neighbour i shows q's
    landmark. mAP@k is the mean over those queries (queries with true id -1 or m_q = 0 are skipped);
    0.0 when none is left.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    retrieved = np.asarray(retrieved_labels, dtype=np.int64)
    if retrieved.ndim != 2:
        raise ValueError(f"retrieved_labels must be (queries, neighbours), got shape {retrieved.shape}.")
    true = _ids(true_ids, "true_ids")
    counts = _ids(relevant_counts, "relevant_counts")
    _same_length(retrieved_labels=retrieved, true_ids=true, relevant_counts=counts)
    keep = (true != NO_LANDMARK) & (counts > 0)
    if not keep.any():
        return 0.0
    retrieved = retrieved[keep, :k]
    relevant = (retrieved == true[keep, None]) & (retrieved != NO_LANDMARK)
    precision = np.cumsum(relevant, axis=1) / np.arange(1, relevant.shape[1] + 1)
    average_precision = (precision * relevant).sum(axis=1) / np.minimum(counts[keep], k)
    return float(average_precision.mean())


def per_landmark_report(
    predicted_ids: Sequence[int], true_ids: Sequence[int], names: Mapping[int, str]
) -> pd.DataFrame:
    """One row per landmark seen in the truth or the predictions (-1 left out), most frequent in the truth first.

    Columns: landmark_id, name, support (queries that show it), predicted (queries predicted as it),
    correct, precision = correct / predicted and recall = correct / support (0.0 where the denominator is 0).
    """
    predicted, true = _ids(predicted_ids, "predicted_ids"), _ids(true_ids, "true_ids")
    _same_length(predicted_ids=predicted, true_ids=true)
    ids = np.array(sorted((set(true.tolist()) | set(predicted.tolist())) - {NO_LANDMARK}), dtype=np.int64)
    support = pd.Series(true).value_counts()
    predicted_counts = pd.Series(predicted).value_counts()
    correct_counts = pd.Series(true[predicted == true]).value_counts()
    report = pd.DataFrame(
        {
            "landmark_id": ids,
            "name": [_name(i, names) for i in ids],
            "support": support.reindex(ids, fill_value=0).to_numpy(dtype=np.int64),
            "predicted": predicted_counts.reindex(ids, fill_value=0).to_numpy(dtype=np.int64),
            "correct": correct_counts.reindex(ids, fill_value=0).to_numpy(dtype=np.int64),
        }
    )
    correct = report["correct"].to_numpy(dtype=np.float64)
    report["precision"] = np.divide(correct, report["predicted"], out=np.zeros(len(report)), where=report["predicted"] > 0)
    report["recall"] = np.divide(correct, report["support"], out=np.zeros(len(report)), where=report["support"] > 0)
    report = report.sort_values(["support", "landmark_id"], ascending=[False, True], kind="stable")
    return report.reset_index(drop=True)


def confused_pairs(
    predicted_ids: Sequence[int], true_ids: Sequence[int], names: Mapping[int, str], top: int = 20
) -> pd.DataFrame:
    """The ``top`` most frequent mistakes as (true, predicted) pairs with their count, most frequent first.

    A mistake is a landmark prediction (predicted id != -1) that differs from the truth: one landmark taken
    for another, or a query without a landmark taken for one (true_id -1, true_name "no known landmark").
    Empty predictions are not listed. Columns: true_id, true_name, predicted_id, predicted_name, count.
    """
    predicted, true = _ids(predicted_ids, "predicted_ids"), _ids(true_ids, "true_ids")
    _same_length(predicted_ids=predicted, true_ids=true)
    wrong = (predicted != true) & (predicted != NO_LANDMARK)
    frame = pd.DataFrame({"true_id": true[wrong], "predicted_id": predicted[wrong]})
    pairs = frame.groupby(["true_id", "predicted_id"], sort=True).size().rename("count").reset_index()
    pairs = pairs.sort_values("count", ascending=False, kind="stable").head(top).reset_index(drop=True)
    return pd.DataFrame(
        {
            "true_id": pairs["true_id"].to_numpy(dtype=np.int64),
            "true_name": [_name(i, names) for i in pairs["true_id"]],
            "predicted_id": pairs["predicted_id"].to_numpy(dtype=np.int64),
            "predicted_name": [_name(i, names) for i in pairs["predicted_id"]],
            "count": pairs["count"].to_numpy(dtype=np.int64),
        }
    )
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


def known_answers(correct: np.ndarray, known: np.ndarray, is_landmark: np.ndarray) -> dict[str, float | int | None]:
    """What the known answers are worth: a photo's answer is known when its confidence reached the threshold.

    known_answers = #known; precision_of_known_answers = #(known and right) / #known; coverage = #(known and right) /
    #photos that show a known landmark; non_landmark_named = #(known, photo shows no known landmark) / #such photos.
    A share whose denominator is 0 is None. ``correct``: the answer is right (only a landmark photo's can be)."""
    correct, known, is_landmark = (np.asarray(a, dtype=bool) for a in (correct, known, is_landmark))
    _same_length(correct=correct, known=known, is_landmark=is_landmark)
    right = known & correct & is_landmark
    others = ~is_landmark
    return {
        "known_answers": int(known.sum()),
        "precision_of_known_answers": float(right.sum() / known.sum()) if known.any() else None,
        "coverage": float(right.sum() / is_landmark.sum()) if is_landmark.any() else None,
        "non_landmark_named": float((known & others).sum() / others.sum()) if others.any() else None,
    }
