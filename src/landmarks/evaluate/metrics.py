"""Recognition and retrieval metrics: accuracy, top-k, Kaggle's GAP, mAP@k, per-landmark report, confusions."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

NO_LANDMARK = -1


def global_average_precision(predicted_ids: Sequence[int], confidences: Sequence[float], true_ids: Sequence[int]) -> float:
    """Kaggle's Global Average Precision (micro-AP) of the Google Landmark Recognition challenges.

    One prediction per query. Non-empty predictions (id != -1) are ranked by confidence, highest first (ties keep
    input order). GAP = 1/M * sum_i P(i) rel(i), with M the number of queries that show a landmark (true id != -1),
    P(i) the precision of the first i ranked predictions and rel(i) = 1 when prediction i is correct. A prediction
    on a query without a landmark is a false positive; an empty prediction costs nothing.
    """
    predicted = np.asarray(predicted_ids, dtype=np.int64)
    true = np.asarray(true_ids, dtype=np.int64)
    confidence = np.asarray(confidences, dtype=np.float64)
    total = int((true != NO_LANDMARK).sum())
    if total == 0:
        return 0.0
    made = predicted != NO_LANDMARK
    order = np.argsort(-confidence[made], kind="stable")
    correct = ((predicted[made] == true[made]) & (true[made] != NO_LANDMARK))[order]
    precision = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    return float((precision * correct).sum() / total)


def accuracy(predicted_ids: Sequence[int], true_ids: Sequence[int]) -> float:
    """Share of queries showing a landmark whose prediction is right (queries without a landmark are left out)."""
    predicted, true = np.asarray(predicted_ids), np.asarray(true_ids)
    keep = true != NO_LANDMARK
    return float((predicted[keep] == true[keep]).mean()) if keep.any() else 0.0


def top_k_accuracy(ranked_ids: np.ndarray, true_ids: Sequence[int], k: int) -> float:
    """Share of queries showing a landmark whose landmark is among the first k ranked ids."""
    ranked, true = np.asarray(ranked_ids)[:, :k], np.asarray(true_ids)
    keep = true != NO_LANDMARK
    if not keep.any():
        return 0.0
    return float((ranked[keep] == true[keep, None]).any(axis=1).mean())


def mean_average_precision_at_k(
    retrieved_labels: np.ndarray, true_ids: Sequence[int], relevant_counts: Sequence[int], k: int = 100
) -> float:
    """Retrieval mAP@k (GLDv2): AP@k = 1/min(m_q, k) * sum_{i<=k} P(i) rel(i), over queries with a landmark and m_q > 0."""
    retrieved = np.asarray(retrieved_labels)[:, :k]
    true = np.asarray(true_ids)
    counts = np.asarray(relevant_counts)
    keep = (true != NO_LANDMARK) & (counts > 0)
    if not keep.any():
        return 0.0
    relevant = (retrieved[keep] == true[keep, None]) & (retrieved[keep] != NO_LANDMARK)
    precision = np.cumsum(relevant, axis=1) / np.arange(1, relevant.shape[1] + 1)
    ap = (precision * relevant).sum(axis=1) / np.minimum(counts[keep], k)
    return float(ap.mean())


def per_landmark_report(predicted_ids: Sequence[int], true_ids: Sequence[int], names: Mapping[int, str]) -> pd.DataFrame:
    """Support, predictions, precision and recall per landmark (0 where undefined)."""
    frame = pd.DataFrame({"true": np.asarray(true_ids), "predicted": np.asarray(predicted_ids)})
    ids = sorted(set(frame["true"]) | set(frame["predicted"]) - {NO_LANDMARK})
    ids = [i for i in ids if i != NO_LANDMARK]
    support = frame["true"].value_counts()
    predicted = frame["predicted"].value_counts()
    correct = frame[frame["true"] == frame["predicted"]]["true"].value_counts()
    report = pd.DataFrame({"landmark_id": ids})
    report["name"] = [names.get(int(i), str(i)) for i in ids]
    report["support"] = [int(support.get(i, 0)) for i in ids]
    report["predicted"] = [int(predicted.get(i, 0)) for i in ids]
    report["correct"] = [int(correct.get(i, 0)) for i in ids]
    report["precision"] = np.where(report["predicted"] > 0, report["correct"] / report["predicted"].clip(lower=1), 0.0)
    report["recall"] = np.where(report["support"] > 0, report["correct"] / report["support"].clip(lower=1), 0.0)
    return report.sort_values(["support", "landmark_id"], ascending=[False, True], kind="stable").reset_index(drop=True)


def confused_pairs(predicted_ids: Sequence[int], true_ids: Sequence[int], names: Mapping[int, str], top: int = 20) -> pd.DataFrame:
    """The most frequent (true, predicted) mistakes, non-landmark queries taken for a landmark included."""
    frame = pd.DataFrame({"true_id": np.asarray(true_ids), "predicted_id": np.asarray(predicted_ids)})
    wrong = frame[(frame["true_id"] != frame["predicted_id"]) & (frame["predicted_id"] != NO_LANDMARK)]
    pairs = wrong.value_counts().rename("count").reset_index()
    pairs = pairs.sort_values(["count", "true_id", "predicted_id"], ascending=[False, True, True], kind="stable").head(top)
    pairs.insert(1, "true_name", [names.get(int(i), str(i)) if i != NO_LANDMARK else "(no landmark)" for i in pairs["true_id"]])
    pairs.insert(3, "predicted_name", [names.get(int(i), str(i)) for i in pairs["predicted_id"]])
    return pairs.reset_index(drop=True)
