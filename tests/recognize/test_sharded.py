"""Sharded embedding: N workers' shards merged give the index a single worker builds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from landmarks.cli import main
from landmarks.errors import DataError
from landmarks.recognize.index import EmbeddingIndex


def test_three_shards_merge_into_the_single_worker_index(tiny_run_dir: Path, tiny_gldv2: Path, tmp_path: Path, capsys):
    run = tiny_run_dir
    assert main(["-q", "index", str(run), "--data", str(tiny_gldv2), "--out", str(tmp_path / "all.npz")]) == 0
    for shard in range(3):
        assert main(["-q", "index", str(run), "--data", str(tiny_gldv2), "--shard", str(shard), "--num-shards", "3",
                     "--out", str(tmp_path / f"s{shard}.npz")]) == 0
    single_run, sharded_run = tmp_path / "single", tmp_path / "sharded"
    for folder in (single_run, sharded_run):
        folder.mkdir()
    assert main(["-q", "index", str(single_run), "--merge", str(tmp_path / "all.npz")]) == 0
    assert main(["-q", "index", str(sharded_run), "--merge", *(str(tmp_path / f"s{k}.npz") for k in (2, 0, 1))]) == 0
    single, sharded = EmbeddingIndex.load(single_run / "index"), EmbeddingIndex.load(sharded_run / "index")
    assert single.image_ids == sharded.image_ids and np.array_equal(single.landmark_ids, sharded.landmark_ids)
    vectors = single.index.reconstruct_n(0, len(single))
    assert np.array_equal(vectors, sharded.index.reconstruct_n(0, len(sharded)))
    assert np.array_equal(single.search(vectors[:5], 3)[1], sharded.search(vectors[:5], 3)[1])


def test_missing_shard_is_refused(tiny_run_dir: Path, tiny_gldv2: Path, tmp_path: Path, capsys):
    main(["-q", "index", str(tiny_run_dir), "--data", str(tiny_gldv2), "--num-shards", "2", "--out", str(tmp_path / "s0.npz")])
    from landmarks.recognize.sharded import merge_shards

    with pytest.raises(DataError, match=r"Shards \[0\] do not make up all 2 shards"):
        merge_shards([tmp_path / "s0.npz"])


def test_non_landmark_photos_join_the_index_with_id_minus_one(tiny_run_dir: Path, tmp_path: Path, capsys):
    import shutil

    from tests_helpers import make_photo

    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    before = len(EmbeddingIndex.load(run / "index"))
    for i in range(3):
        make_photo(tmp_path / "indoor" / f"{i}.jpg", (90, 90, 90), seed=i)
    assert main(["index", str(run), "--non-landmarks", str(tmp_path / "indoor")]) == 0
    assert "added 3 non-landmark reference photos" in capsys.readouterr().out
    index = EmbeddingIndex.load(run / "index")
    assert len(index) == before + 3 and list(index.landmark_ids[-3:]) == [-1, -1, -1]


def test_two_bank_photos_of_the_same_name_in_two_folders_are_two_references(tiny_run_dir: Path, tmp_path: Path):
    import shutil

    from tests_helpers import make_photo

    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    make_photo(tmp_path / "bank" / "kitchen" / "IMG_0001.jpg", (90, 90, 90), seed=1)
    make_photo(tmp_path / "bank" / "garden" / "IMG_0001.jpg", (30, 160, 30), seed=2)
    assert main(["index", str(run), "--non-landmarks", str(tmp_path / "bank")]) == 0
    index = EmbeddingIndex.load(run / "index")
    ids = [i for i in index.image_ids if i.startswith("non-landmark:")]
    assert sorted(ids) == ["non-landmark:garden/IMG_0001.jpg", "non-landmark:kitchen/IMG_0001.jpg"]
    assert index.remove(index.positions_of([("non-landmark:garden/IMG_0001.jpg", -1)])) == 1  # removes one only
    assert [i for i in index.image_ids if i.startswith("non-landmark:")] == ["non-landmark:kitchen/IMG_0001.jpg"]
