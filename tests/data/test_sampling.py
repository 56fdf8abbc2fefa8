import numpy as np
import pandas as pd
import pytest

from landmarks.data.sampling import class_counts, sample_top_landmarks, stratified_split


def _frame(counts: dict[int, int]) -> pd.DataFrame:
    ids = [landmark for landmark, n in counts.items() for _ in range(n)]
    return pd.DataFrame({"id": [f"{i:016x}" for i in range(len(ids))], "path": "", "landmark_id": ids})


def test_top_k_and_per_class_cap_by_hand():
    frame = _frame({10: 5, 20: 9, 30: 2, 40: 5, 99: 1})
    frame.loc[len(frame)] = ["ffff", "", -1]  # a non-landmark row is never sampled
    sampled = sample_top_landmarks(frame, classes=3, per_class=4, seed=1)
    # most frequent: 20 (9), then 10 and 40 (5 each); 30 (2), 99 (1) and the -1 row are left out
    assert sorted(sampled["landmark_id"].unique()) == [10, 20, 40]
    assert sampled["landmark_id"].value_counts().to_dict() == {10: 4, 20: 4, 40: 4}
    assert set(sampled["id"]) <= set(frame["id"]) and sampled.index.tolist() == list(range(12))
    rows = frame.set_index("id").loc[sampled["id"], "landmark_id"].tolist()
    assert rows == sampled["landmark_id"].tolist()  # every photo keeps its own landmark


def test_ties_are_broken_by_the_smaller_landmark_id():
    frame = _frame({40: 5, 10: 5, 20: 9, 30: 5})
    assert sorted(sample_top_landmarks(frame, 2, None)["landmark_id"].unique()) == [10, 20]
    assert sorted(sample_top_landmarks(frame, 3, None)["landmark_id"].unique()) == [10, 20, 30]


def test_no_limits_keeps_every_landmark_photo_in_order():
    frame = _frame({3: 2, 1: 3})
    frame.loc[len(frame)] = ["ffff", "", -1]
    sampled = sample_top_landmarks(frame, None, None)
    assert sampled["id"].tolist() == frame["id"].iloc[:5].tolist()


def test_cap_keeps_original_row_order():
    frame = _frame({1: 30, 2: 30}).sample(frac=1, random_state=0).reset_index(drop=True)
    sampled = sample_top_landmarks(frame, None, 5, seed=3)
    positions = frame.reset_index().set_index("id").loc[sampled["id"], "index"].to_numpy()
    assert len(sampled) == 10 and np.all(np.diff(positions) > 0)


def test_sampling_is_deterministic_for_a_seed():
    frame = _frame({1: 50, 2: 40, 3: 30})
    a = sample_top_landmarks(frame, 2, 10, seed=7)["id"].tolist()
    b = sample_top_landmarks(frame, 2, 10, seed=7)["id"].tolist()
    c = sample_top_landmarks(frame, 2, 10, seed=8)["id"].tolist()
    assert a == b and a != c


def _check_partition(labels, train, val, test):
    assert len(np.intersect1d(train, val)) == len(np.intersect1d(train, test)) == len(np.intersect1d(val, test)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, val, test])), np.arange(len(labels)))
    assert set(labels[train]) == set(labels)  # every landmark has a training photo


def test_stratified_split_counts_by_hand_and_no_overlap():
    labels = np.repeat(np.arange(7), [100, 40, 10, 5, 3, 2, 1])
    np.random.default_rng(0).shuffle(labels)
    train, val, test = stratified_split(labels, 0.2, 0.1, seed=3)
    _check_partition(labels, train, val, test)
    n_train, n_val, n_test = (np.bincount(labels[x], minlength=7) for x in (train, val, test))
    # n=100: 20/10; 40: 8/4; 10: 2/1; 5: round(1.0)=1, round(0.5)=1; 3: 1/1 (min one each); 2: 1 val; 1: train only
    assert n_val.tolist() == [20, 8, 2, 1, 1, 1, 0]
    assert n_test.tolist() == [10, 4, 1, 1, 1, 0, 0]
    assert n_train.tolist() == [70, 28, 7, 3, 1, 1, 1]
    again = stratified_split(labels, 0.2, 0.1, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip((train, val, test), again))
    other = stratified_split(labels, 0.2, 0.1, seed=4)
    assert not np.array_equal(val, other[1])


def test_stratified_split_without_val_or_test():
    labels = np.repeat(np.arange(3), [10, 2, 1])
    train, val, test = stratified_split(labels, 0.0, 0.0)
    assert len(train) == 13 and len(val) == len(test) == 0
    train, val, test = stratified_split(labels, 0.2, 0.0)
    _check_partition(labels, train, val, test)
    assert np.bincount(labels[val], minlength=3).tolist() == [2, 1, 0] and len(test) == 0


def test_stratified_split_on_many_classes_is_close_to_70_20_10():
    rng = np.random.default_rng(1)
    labels = np.repeat(rng.permutation(2000) * 3 + 5, rng.integers(20, 200, 2000))  # sparse ids
    train, val, test = stratified_split(labels, 0.2, 0.1, seed=0)
    _check_partition(labels, train, val, test)
    assert len(val) / len(labels) == pytest.approx(0.2, abs=0.01)
    assert len(test) / len(labels) == pytest.approx(0.1, abs=0.01)


def test_class_counts():
    assert class_counts(np.array([0, 2, 2, 2]), 4).tolist() == [1, 0, 3, 0]
