import numpy as np
import pandas as pd

from landmarks.data.sampling import sample_top_landmarks, stratified_split


def _frame(counts: dict[int, int]) -> pd.DataFrame:
    ids = [l for l, n in counts.items() for _ in range(n)]
    return pd.DataFrame({"id": [f"{i:016x}" for i in range(len(ids))], "path": "", "landmark_id": ids})


def test_top_k_and_per_class_cap_by_hand():
    frame = _frame({10: 5, 20: 9, 30: 2, 40: 5, 99: 1})
    frame.loc[len(frame)] = ["ffff", "", -1]  # a non-landmark row is never sampled
    sampled = sample_top_landmarks(frame, classes=3, per_class=4, seed=1)
    # most frequent: 20 (9), then 10 and 40 tie at 5 -> smaller id 10 first, so 20, 10, 40
    assert sorted(sampled["landmark_id"].unique()) == [10, 20, 40]
    assert sampled["landmark_id"].value_counts().to_dict() == {10: 4, 20: 4, 40: 4}


def test_sampling_is_deterministic_for_a_seed():
    frame = _frame({1: 50, 2: 40, 3: 30})
    a = sample_top_landmarks(frame, 2, 10, seed=7)["id"].tolist()
    b = sample_top_landmarks(frame, 2, 10, seed=7)["id"].tolist()
    c = sample_top_landmarks(frame, 2, 10, seed=8)["id"].tolist()
    assert a == b and a != c


def test_stratified_split_fractions_coverage_and_no_overlap():
    labels = np.repeat(np.arange(5), [100, 40, 10, 2, 1])
    train, val, test = stratified_split(labels, 0.2, 0.1, seed=3)
    assert len(np.intersect1d(train, val)) == len(np.intersect1d(train, test)) == len(np.intersect1d(val, test)) == 0
    assert len(train) + len(val) + len(test) == len(labels)
    assert set(labels[train]) == {0, 1, 2, 3, 4}  # every landmark is in training
    assert np.bincount(labels[val], minlength=5)[0] == 20 and np.bincount(labels[test], minlength=5)[0] == 10
    assert np.bincount(labels[val], minlength=5)[1] == 8 and np.bincount(labels[test], minlength=5)[1] == 4
    assert (labels[train] == 4).sum() == 1  # the single photo stays in training
    again = stratified_split(labels, 0.2, 0.1, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip((train, val, test), again))
