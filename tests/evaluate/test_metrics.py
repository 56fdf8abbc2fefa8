import numpy as np
import pandas as pd
import pytest

from landmarks.evaluate.metrics import (
    precision_coverage,
    precision_lower_bound,
    reliability_bins,
    accuracy,
    confused_pairs,
    global_average_precision,
    mean_average_precision_at_k,
    per_landmark_report,
    top_k_accuracy,
)

# ---------------------------------------------------------------- GAP


def test_gap_all_correct_is_one():
    # ranked 0.9, 0.5, 0.1, all right: P(1) = 1, P(2) = 2/2, P(3) = 3/3 -> (1 + 1 + 1) / M=3 = 1
    assert global_average_precision([1, 2, 3], [0.9, 0.5, 0.1], [1, 2, 3]) == pytest.approx(1.0)


def test_gap_wrong_prediction_ranked_first():
    # ranked: wrong (0.9), right (0.8), right (0.7); M = 3
    # rank 1: rel 0; rank 2: P = 1/2, rel 1; rank 3: P = 2/3, rel 1 -> (1/2 + 2/3) / 3 = (7/6) / 3 = 7/18
    assert global_average_precision([5, 2, 3], [0.9, 0.8, 0.7], [1, 2, 3]) == pytest.approx(7 / 18)


def test_gap_ranks_by_confidence_not_input_order():
    # same predictions as above but the wrong one has the lowest confidence: ranked right, right, wrong
    # P(1) = 1, P(2) = 1, rank 3 rel 0 -> (1 + 1) / 3 = 2/3
    assert global_average_precision([5, 2, 3], [0.1, 0.8, 0.7], [1, 2, 3]) == pytest.approx(2 / 3)


def test_gap_non_landmark_query_ranked_above_a_correct_one():
    # query 0 shows no landmark but gets A (0.9): a false positive at rank 1.
    # query 1 gets B (0.8), right, at rank 2: P(2) = 1/2. M = 1 (query 0 does not count) -> GAP = (1/2) / 1 = 1/2
    assert global_average_precision([4, 2], [0.9, 0.8], [-1, 2]) == pytest.approx(0.5)
    # ranked below the correct one it costs nothing: rank 1 right, P(1) = 1, M = 1 -> GAP = 1
    assert global_average_precision([4, 2], [0.1, 0.8], [-1, 2]) == pytest.approx(1.0)


def test_gap_empty_prediction_costs_nothing_but_its_landmark_query_counts_in_m():
    # query 1 shows landmark 2 but has no prediction: M = 2, only query 0 is ranked, right: P(1) = 1 -> 1/2
    assert global_average_precision([1, -1], [0.9, 0.0], [1, 2]) == pytest.approx(0.5)
    # an empty prediction, even with a high confidence, is never ranked: it cannot push the right one to rank 2
    # query 0 (right, 0.5) stays at rank 1 -> P(1) = 1, M = 2 (queries 0 and 2) -> 1/2
    assert global_average_precision([1, -1, -1], [0.5, 0.99, 0.99], [1, -1, 3]) == pytest.approx(0.5)


def test_gap_non_landmark_queries_do_not_count_in_m():
    # three non-landmark queries with empty predictions and one right landmark query: M = 1, P(1) = 1 -> 1
    assert global_average_precision([-1, -1, 7, -1], [0.2, 0.3, 0.6, 0.1], [-1, -1, 7, -1]) == pytest.approx(1.0)
    # were they counted, GAP would be 1/4


def test_gap_ties_keep_input_order():
    # equal confidences: input order decides. Wrong first: rank 1 rel 0, rank 2 P = 1/2 -> (1/2) / M=2 = 1/4
    assert global_average_precision([9, 2], [0.5, 0.5], [1, 2]) == pytest.approx(0.25)
    # right first: P(1) = 1, rank 2 wrong -> 1 / 2 = 1/2
    assert global_average_precision([2, 9], [0.5, 0.5], [2, 1]) == pytest.approx(0.5)


def test_gap_is_zero_without_landmark_queries():
    assert global_average_precision([1, 2], [0.5, 0.5], [-1, -1]) == 0.0
    assert global_average_precision([], [], []) == 0.0


def test_gap_mixed_example():
    # queries (pred, conf, true): q0 (1, .9, 1) right; q1 (2, .8, -1) false positive; q2 (-1, .99, 3) empty;
    # q3 (4, .7, 4) right; q4 (5, .6, 6) wrong. M = 4 (q0, q2, q3, q4).
    # ranked: q0 rel 1 P = 1/1; q1 rel 0; q3 rel 1 P = 2/3; q4 rel 0 -> (1 + 2/3) / 4 = 5/12
    predicted, confidence, true = [1, 2, -1, 4, 5], [0.9, 0.8, 0.99, 0.7, 0.6], [1, -1, 3, 4, 6]
    assert global_average_precision(predicted, confidence, true) == pytest.approx(5 / 12)


def test_gap_lengths_must_match():
    with pytest.raises(ValueError, match="one value per query"):
        global_average_precision([1, 2], [0.5], [1, 2])


# ---------------------------------------------------------------- accuracy / top-k


def test_accuracy_ignores_non_landmark_queries():
    true = [1, 2, -1, 3]
    # queries with a landmark: 0 (right), 1 (wrong), 3 (right); query 2 left out -> 2/3
    assert accuracy([1, 5, 7, 3], true) == pytest.approx(2 / 3)
    # an empty prediction on a landmark query is wrong: 1/3
    assert accuracy([1, -1, -1, -1], true) == pytest.approx(1 / 3)
    assert accuracy([1, 2], [-1, -1]) == 0.0


def test_top_k_accuracy_ignores_non_landmark_queries():
    true = [1, 2, -1, 3]
    ranked = np.array([[5, 1, 3], [2, 9, 8], [7, 8, 1], [4, 6, 3]])
    # k=1: q0 5 != 1, q1 2 == 2, q3 4 != 3 -> 1/3 (q2 left out)
    assert top_k_accuracy(ranked, true, 1) == pytest.approx(1 / 3)
    # k=2: q0 has 1 in [5, 1], q1 yes, q3 no -> 2/3
    assert top_k_accuracy(ranked, true, 2) == pytest.approx(2 / 3)
    # k=3: q3 has 3 at rank 3 -> 3/3
    assert top_k_accuracy(ranked, true, 3) == pytest.approx(1.0)
    # k beyond the columns reads all of them
    assert top_k_accuracy(ranked, true, 10) == pytest.approx(1.0)
    # -1 padding never matches
    assert top_k_accuracy(np.array([[-1, -1]]), [4], 2) == 0.0


# ---------------------------------------------------------------- mAP@k


def test_map_at_k_normalises_by_min_of_relevant_count_and_k():
    retrieved = np.array([[1, 2, 1, -1], [3, 3, 9, 3], [5, 5, 5, 5], [7, 7, 7, 7]])
    true = [1, 3, -1, 7]
    counts = [4, 3, 4, 0]
    # k=4:
    # q0: hits at ranks 1, 3: P(1) = 1, P(3) = 2/3 -> (1 + 2/3) / min(4, 4) = 5/12
    # q1: hits at ranks 1, 2, 4: P = 1, 1, 3/4 -> (1 + 1 + 3/4) / min(3, 4) = (11/4) / 3 = 11/12
    # q2: true -1, skipped; q3: m = 0, skipped -> mean (5/12 + 11/12) / 2 = 16/24 = 2/3
    assert mean_average_precision_at_k(retrieved, true, counts, k=4) == pytest.approx(2 / 3)
    # k=2 (only the first two neighbours count, and min(m, k) = 2 for both):
    # q0: hit at rank 1 -> 1 / min(4, 2) = 1/2; q1: hits at 1, 2 -> (1 + 1) / min(3, 2) = 1 -> mean 3/4
    assert mean_average_precision_at_k(retrieved, true, counts, k=2) == pytest.approx(0.75)
    # one query alone, k=4: q0 -> 5/12
    assert mean_average_precision_at_k(retrieved[:1], true[:1], counts[:1], k=4) == pytest.approx(5 / 12)


def test_map_at_k_padding_and_empty():
    # -1 padding is never relevant even for a -1 "truth" (such queries are skipped anyway)
    # q0: true 2, m = 1, neighbours [-1, 2]: hit at rank 2, P(2) = 1/2 -> (1/2) / min(1, 100) = 1/2
    assert mean_average_precision_at_k(np.array([[-1, 2]]), [2], [1]) == pytest.approx(0.5)
    assert mean_average_precision_at_k(np.array([[1, 1]]), [-1], [3]) == 0.0


# ---------------------------------------------------------------- per-landmark report and confusions


def test_per_landmark_report_by_hand():
    names = {1: "tower", 2: "bridge"}
    predicted = [1, 1, 2, 1, -1, 3]
    true = [1, 2, 2, -1, 1, 2]
    report = per_landmark_report(predicted, true, names)
    assert list(report.columns) == ["landmark_id", "name", "support", "predicted", "correct", "precision", "recall"]
    # bridge (2): support 3 (rows 1, 2, 5), predicted 1 (row 2), correct 1 -> precision 1/1, recall 1/3
    # tower (1):  support 2 (rows 0, 4), predicted 3 (rows 0, 1, 3), correct 1 (row 0) -> precision 1/3, recall 1/2
    # 3 (no name): support 0, predicted 1 (row 5), correct 0 -> precision 0, recall undefined -> 0
    # -1 has no row. Sorted by support: 2, 1, 3.
    assert report["landmark_id"].tolist() == [2, 1, 3]
    assert report["name"].tolist() == ["bridge", "tower", "3"]
    assert report["support"].tolist() == [3, 2, 0]
    assert report["predicted"].tolist() == [1, 3, 1]
    assert report["correct"].tolist() == [1, 1, 0]
    assert report["precision"].tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    assert report["recall"].tolist() == pytest.approx([1 / 3, 1 / 2, 0.0])
    assert not report[["precision", "recall"]].isna().any().any()


def test_per_landmark_report_landmark_never_predicted_has_precision_zero():
    # landmark 5: support 1, never predicted -> precision undefined -> 0, recall 0/1 = 0
    report = per_landmark_report([-1], [5], {5: "arch"})
    assert report.to_dict("records") == [
        {"landmark_id": 5, "name": "arch", "support": 1, "predicted": 0, "correct": 0, "precision": 0.0, "recall": 0.0}
    ]
    assert per_landmark_report([], [], {}).empty


def test_confused_pairs_by_hand():
    names = {1: "tower", 2: "bridge", 3: "arch"}
    predicted = [1, 1, 2, 1, -1, 1, 1, 3]
    true = [1, 2, 2, -1, 1, 2, -1, 2]
    # mistakes (predicted != true, predicted != -1): rows 1 (2->1), 3 (-1->1), 5 (2->1), 6 (-1->1), 7 (2->3)
    # row 4 (1 -> empty) is not a confusion. Counts: (2,1) 2, (-1,1) 2, (2,3) 1
    pairs = confused_pairs(predicted, true, names)
    assert list(pairs.columns) == ["true_id", "true_name", "predicted_id", "predicted_name", "count"]
    assert pairs["count"].tolist() == [2, 2, 1]
    assert set(zip(pairs["true_name"][:2], pairs["predicted_name"][:2], pairs["count"][:2])) == {
        ("bridge", "tower", 2),
        ("no known landmark", "tower", 2),
    }
    assert pairs.iloc[2].to_dict() == {
        "true_id": 2, "true_name": "bridge", "predicted_id": 3, "predicted_name": "arch", "count": 1
    }
    assert (pairs.loc[pairs["true_name"] == "no known landmark", "true_id"] == -1).all()
    assert len(confused_pairs(predicted, true, names, top=1)) == 1


def test_confused_pairs_none():
    pairs = confused_pairs([1, -1], [1, 2], {})
    assert isinstance(pairs, pd.DataFrame) and pairs.empty
    assert list(pairs.columns) == ["true_id", "true_name", "predicted_id", "predicted_name", "count"]


def test_precision_lower_bound_by_hand():
    # Wilson's bound for 40 of 40 right at 90 %: 40 / (40 + z^2), z = 1.2816; 0.5 is the share itself
    bound = precision_lower_bound(np.array([40, 40, 0]), np.array([40, 41, 0]), 0.9)
    np.testing.assert_allclose(bound[0], 40 / (40 + 1.2816**2), atol=1e-4)
    assert 0.92 < bound[1] < 0.923 and bound[2] == 1.0
    np.testing.assert_allclose(precision_lower_bound(np.array([3, 40]), np.array([4, 41]), 0.5), [0.75, 40 / 41])


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
