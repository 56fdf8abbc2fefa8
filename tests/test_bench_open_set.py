"""The open-set proxy of benchmarks/bench_open_set.py: hidden landmarks never reach training and return as -1."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from landmarks.data.catalog import read_catalog

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from bench_open_set import make_proxy  # noqa: E402


def test_proxy_hides_landmarks_from_training_and_labels_them_no_landmark(tiny_gldv2: Path, tmp_path: Path) -> None:
    out = tmp_path / "proxy"
    counts = make_proxy(tiny_gldv2, seed=3, out=out)
    original = read_catalog(tiny_gldv2, "train").frame.set_index("id")["landmark_id"]
    train = read_catalog(out, "train").frame
    queries = read_catalog(out, "test").frame

    assert counts["hidden"] == 1 and counts["landmarks"] == 3
    hidden = set(original.unique()) - set(train["landmark_id"])
    assert len(hidden) == 1
    assert set(train["id"]).isdisjoint(queries["id"])
    truth = original[queries["id"]].to_numpy()
    is_hidden = pd.Series(truth).isin(hidden).to_numpy()
    assert (queries["landmark_id"].to_numpy()[is_hidden] == -1).all()
    assert (queries["landmark_id"].to_numpy()[~is_hidden] == truth[~is_hidden]).all()
    assert is_hidden.sum() == counts["hidden_queries"] == counts["known_queries"] == (~is_hidden).sum()
    assert all(Path(p).is_file() for p in queries["path"])
