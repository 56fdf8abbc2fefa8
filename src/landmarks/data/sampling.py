"""Sampling the most frequent landmarks and stratified train/validation/test splits, vectorised for millions of rows."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from landmarks.data.catalog import on_disk, read_catalog, write_catalog
from landmarks.errors import DataError

log = logging.getLogger(__name__)


def class_counts(landmark_ids: np.ndarray, num_classes: int) -> np.ndarray:
    """Photos per class index 0..num_classes-1 (int64)."""
    return np.bincount(np.asarray(landmark_ids, dtype=np.int64), minlength=num_classes)[:num_classes]


def _rank_within_groups(sorted_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For labels already grouped (equal labels adjacent): each row's rank in its group and its group's size."""
    n = len(sorted_labels)
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]) if n else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, sizes)
    return rank, np.repeat(sizes, sizes)


def _grouped_random_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A permutation of the rows that groups equal labels together, in random order within a group."""
    order = np.random.default_rng(seed).permutation(len(labels))
    return order[np.argsort(labels[order], kind="stable")]


def sample_top_landmarks(frame: pd.DataFrame, classes: int | None, per_class: int | None, seed: int = 42) -> pd.DataFrame:
    """The ``classes`` most frequent landmarks (ties: smaller landmark_id first), at most ``per_class`` random photos
    each; rows with landmark_id -1 are dropped. Rows keep their original order; the index is reset."""
    labels = frame["landmark_id"].to_numpy(dtype=np.int64)
    keep = labels >= 0
    if classes:
        present, counts = np.unique(labels[keep], return_counts=True)  # sorted by landmark_id
        top = present[np.argsort(-counts, kind="stable")[:classes]]  # stable: ties keep the smaller id first
        keep &= np.isin(labels, top)
    if per_class:
        positions = np.flatnonzero(keep)
        order = _grouped_random_order(labels[positions], seed)
        rank, _ = _rank_within_groups(labels[positions][order])
        keep = np.zeros(len(frame), dtype=bool)
        keep[positions[order[rank < per_class]]] = True
    return frame.iloc[np.flatnonzero(keep)].reset_index(drop=True)


def stratified_split(
    landmark_ids: np.ndarray, val_fraction: float = 0.2, test_fraction: float = 0.1, seed: int = 42
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted index arrays (train, val, test) into ``landmark_ids``, split class by class.

    A class of n photos gives round(n * val_fraction) to validation and round(n * test_fraction) to test
    (halves round up), but it always keeps one training photo, and a small class fills train, then val,
    then test: 1 photo -> train; 2 -> train + val; 3 -> train + val + test (when those fractions are > 0).
    """
    labels = np.asarray(landmark_ids)
    order = _grouped_random_order(labels, seed)
    rank, size = _rank_within_groups(labels[order])
    n_val = np.floor(size * val_fraction + 0.5).astype(np.int64)
    n_test = np.floor(size * test_fraction + 0.5).astype(np.int64)
    if val_fraction > 0:
        n_val = np.maximum(n_val, 1)
    if test_fraction > 0:
        n_test = np.maximum(n_test, 1)
    n_val = np.minimum(n_val, size - 1)  # at least one training photo
    n_test = np.minimum(n_test, size - 1 - n_val)
    is_val = rank < n_val
    is_test = (rank >= n_val) & (rank < n_val + n_test)
    is_train = ~(is_val | is_test)
    return np.sort(order[is_train]), np.sort(order[is_val]), np.sort(order[is_test])


def sample_dataset(data_dir: Path, classes: int, per_class: int, out_dir: Path, seed: int = 42) -> pd.DataFrame:
    """``landmarks sample``: the most frequent landmarks among the photos on disk, written as a new catalog in
    ``out_dir`` (no image copied); returns the sampled rows."""
    catalog = read_catalog(data_dir)
    frame = catalog.frame[catalog.frame["landmark_id"] >= 0]
    present = on_disk(frame)
    if not present.any():
        raise DataError(f"None of the {len(frame):,} photos listed in {data_dir} is on disk (download some shards first).")
    if not present.all():
        log.info("%d of %d listed photos are not on disk (shards not downloaded?): sampling from the %d that are",
                 (~present).sum(), len(frame), present.sum())
        frame = frame[present]
    sampled = sample_top_landmarks(frame, classes, per_class, seed)
    write_catalog(sampled, {int(i): catalog.name_of(int(i)) for i in sampled["landmark_id"].unique()}, out_dir,
                  catalog.info)
    return sampled
