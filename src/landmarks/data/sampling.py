"""Sampling the most frequent landmarks and stratified train/validation/test splits, vectorised for millions of rows."""

from __future__ import annotations

import numpy as np
import pandas as pd


def sample_top_landmarks(frame: pd.DataFrame, classes: int | None, per_class: int | None, seed: int = 42) -> pd.DataFrame:
    """The ``classes`` most frequent landmarks (ties: smaller id first), at most ``per_class`` random photos each."""
    frame = frame[frame["landmark_id"] >= 0]
    if classes:
        counts = frame["landmark_id"].value_counts()
        order = pd.DataFrame({"landmark_id": counts.index, "count": counts.to_numpy()})
        order = order.sort_values(["count", "landmark_id"], ascending=[False, True], kind="stable")
        frame = frame[frame["landmark_id"].isin(order["landmark_id"].iloc[:classes])]
    if per_class:
        rng = np.random.default_rng(seed)
        shuffled = frame.iloc[rng.permutation(len(frame))]
        rank = shuffled.groupby("landmark_id", sort=False).cumcount().to_numpy()
        frame = shuffled[rank < per_class].sort_index()
    return frame.reset_index(drop=True)


def stratified_split(
    labels: np.ndarray, val_fraction: float = 0.2, test_fraction: float = 0.1, seed: int = 42
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays (train, val, test): per class round(n * fraction) photos to val and test, at least one to train."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]  # grouped by class, random within a class
    sorted_labels = labels[order]
    starts = np.r_[0, np.flatnonzero(sorted_labels[1:] != sorted_labels[:-1]) + 1]
    sizes = np.diff(np.r_[starts, len(labels)])
    rank = np.arange(len(labels)) - np.repeat(starts, sizes)
    size = np.repeat(sizes, sizes)
    n_val = np.floor(size * val_fraction + 0.5).astype(np.int64)
    n_test = np.floor(size * test_fraction + 0.5).astype(np.int64)
    n_val = np.minimum(n_val, size - 1)  # at least one training photo
    n_test = np.minimum(n_test, size - 1 - n_val)
    is_val = rank < n_val
    is_test = (rank >= n_val) & (rank < n_val + n_test)
    is_train = ~(is_val | is_test)
    return np.sort(order[is_train]), np.sort(order[is_val]), np.sort(order[is_test])
