"""The open-set proxy of benchmarks/bench_open_set.py: hidden landmarks never reach training and return as -1."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

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


def test_variants_are_measured_on_one_run_with_and_without_the_bank(tiny_gldv2: Path, tmp_path: Path) -> None:
    from tests_helpers import make_photo

    from bench_open_set import evaluate_variants, split_bank_for_bench
    from landmarks.config import load_config
    from landmarks.train.run import train

    proxy = tmp_path / "proxy"
    make_proxy(tiny_gldv2, seed=3, out=proxy)
    bank = tmp_path / "bank"
    for i in range(12):
        make_photo(bank / f"{i}.jpg", (100 + 10 * i, 120, 140 - 8 * i), seed=400 + i)
    held_out = split_bank_for_bench(bank, 3, tmp_path / "bank-for-training")
    assert held_out and not {p.name for p in held_out} & {p.name for p in (tmp_path / "bank-for-training").iterdir()}
    overrides = ["data.image_size_px=32", "train.epochs=1", "train.batch_size=16", "train.workers=0",
                 f"data.cache_dir={tmp_path / 'cache'}"]
    run = train(load_config("seed-cnn", overrides), proxy, tmp_path / "run")  # trained without the bank
    rows = evaluate_variants(run, proxy, held_out, tmp_path / "bank-for-training", 0.95, tmp_path / "embeddings.npz")
    table = pd.DataFrame(rows)
    assert set(table["bank"]) == {False, True}
    assert set(table["variant"]) == {"min_confidence 0.3", "calibrated (platt), own landmark left out",
                                     "calibrated (isotonic), own landmark left out",
                                     "calibrated (gate), own landmark left out"}  # no ArcFace head: no calibration model
    for column in ("precision", "coverage", "hidden_named", "bank_named", "gap"):
        assert table[column].between(0, 1).all(), column
    as_before = table[table["variant"] == "min_confidence 0.3"]
    assert (as_before["threshold"] == 0.3).all()
    platt = table[table["variant"] == "calibrated (platt), own landmark left out"].sort_values("bank")
    # a strictly increasing map keeps the order of the answers: GAP as before calibration
    assert platt["gap"].to_numpy() == pytest.approx(as_before.sort_values("bank")["gap"].to_numpy())
    assert (tmp_path / "embeddings.npz").exists()
