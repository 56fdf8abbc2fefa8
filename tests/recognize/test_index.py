"""EmbeddingIndex: exact and approximate search against brute force, persistence, enrolment, threads, validation."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from landmarks.errors import DataError
from landmarks.recognize.index import EmbeddingIndex, brute_force_search, default_nlist, default_nprobe


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def clustered(count: int, centres: int = 100, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(references, their landmark ids, centres): photos = normalise(centre + noise), cosine to centre ~0.7."""
    rng = np.random.default_rng(seed)
    middle = unit(rng.normal(size=(centres, dim)))
    labels = rng.integers(0, centres, count)
    return unit(middle[labels] + rng.normal(scale=1 / np.sqrt(dim), size=(count, dim))), labels, middle


def queries_near(middle: np.ndarray, count: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(middle), count)
    return unit(middle[labels] + rng.normal(scale=1 / np.sqrt(middle.shape[1]), size=(count, middle.shape[1])))


def ids(count: int, prefix: str = "img") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(count)]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    references, labels, middle = clustered(5000)
    return references, labels, queries_near(middle, 300)


def test_brute_force_by_hand():
    references = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    queries = np.array([[0.8, 0.6], [0, -1]], dtype=np.float32)
    similarities, positions = brute_force_search(references, queries, 4)
    # query 0: 0.8, 0.6, 0.48+0.48=0.96 -> [2, 0, 1]; query 1: 0, -1, -0.8 -> [0, 2, 1]
    assert positions.tolist() == [[2, 0, 1, -1], [0, 2, 1, -1]]
    np.testing.assert_allclose(similarities[:, :3], [[0.96, 0.8, 0.6], [0.0, -0.8, -1.0]], atol=1e-6)
    assert np.isneginf(similarities[:, 3]).all()


def test_flat_equals_brute_force(data):
    references, labels, queries = data
    index = EmbeddingIndex.build(references, ids(len(references)), labels, "flat")
    similarities, positions = index.search(queries, 10)
    exact_similarities, exact_positions = brute_force_search(references, queries, 10)
    assert similarities.dtype == np.float32 and positions.dtype == np.int64 and positions.shape == (300, 10)
    np.testing.assert_array_equal(positions, exact_positions)
    np.testing.assert_allclose(similarities, exact_similarities, atol=1e-5)
    np.testing.assert_array_equal(index.landmark_ids_at(positions), labels[exact_positions])


@pytest.mark.parametrize("index_type", ["ivf", "ivfpq"])
def test_approximate_recall_against_brute_force(data, index_type):
    references, labels, queries = data
    index = EmbeddingIndex.build(references, ids(len(references)), labels, index_type)
    assert index.index_type == index_type and index.nlist == default_nlist(5000)
    assert index.nprobe == default_nprobe(index.nlist)
    similarities, positions = index.search(queries, 5)
    exact_similarities, exact_positions = brute_force_search(references, queries, 5)
    recall_at_1 = float((positions[:, 0] == exact_positions[:, 0]).mean())
    assert recall_at_1 >= 0.9, recall_at_1
    hits = positions[:, 0] == exact_positions[:, 0]
    # IVF-flat and the re-ranked IVF-PQ both report exact inner products for what they return.
    np.testing.assert_allclose(similarities[hits, 0], exact_similarities[hits, 0], atol=1e-5)
    np.testing.assert_allclose(similarities[:, 0], np.sum(queries * references[positions[:, 0]], axis=1), atol=1e-5)


def test_explicit_nlist_nprobe_and_pq_m(data):
    references, labels, _ = data
    index = EmbeddingIndex.build(references, ids(len(references)), labels, "ivfpq", nlist=20, nprobe=3, pq_m=16)
    assert (index.nlist, index.nprobe) == (20, 3)
    index.nprobe = 500  # clipped to nlist
    assert index.nprobe == 20
    with pytest.raises(ValueError, match="pq_m must divide"):
        EmbeddingIndex.build(references, ids(len(references)), labels, "ivfpq", pq_m=7)
    with pytest.raises(ValueError, match="nlist"):
        EmbeddingIndex.build(references[:100], ids(100), labels[:100], "ivf", nlist=1000)


def test_auto_picks_flat_for_small_counts(data):
    references, labels, _ = data
    index = EmbeddingIndex.build(references, ids(len(references)), labels)
    assert index.index_type == "flat" and index.nprobe is None and index.nlist is None
    assert EmbeddingIndex.choose_type(99_999) == "flat"
    assert EmbeddingIndex.choose_type(1_000_000) == "ivfpq"


def test_too_few_references_for_ivf_fall_back_to_flat():
    references, labels, _ = clustered(20, centres=3, dim=16)
    index = EmbeddingIndex.build(references, ids(20), labels, "ivfpq")
    assert index.index_type == "flat" and len(index) == 20


@pytest.mark.parametrize("index_type", ["flat", "ivf", "ivfpq"])
def test_save_load_round_trip(tmp_path: Path, data, index_type):
    references, labels, queries = data
    index = EmbeddingIndex.build(references, ids(len(references)), labels, index_type, nprobe=7 if index_type != "flat" else None)
    index.save(tmp_path / "index")
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["index.faiss", "index.json", "references.csv"]
    meta = json.loads((tmp_path / "index" / "index.json").read_text())
    assert meta["type"] == index_type and meta["dim"] == 64 and meta["count"] == 5000
    assert meta["nprobe"] == (7 if index_type != "flat" else None)
    table = pd.read_csv(tmp_path / "index" / "references.csv", dtype={"image_id": str})
    assert table.columns.tolist() == ["position", "image_id", "landmark_id"]
    assert table["position"].tolist() == list(range(5000)) and table["image_id"][3] == "img00003"
    assert table["landmark_id"].tolist() == labels.tolist()

    loaded = EmbeddingIndex.load(tmp_path / "index")
    assert (loaded.index_type, len(loaded), loaded.dim, loaded.nprobe) == (index_type, 5000, 64, index.nprobe)
    assert loaded.image_ids == index.image_ids
    np.testing.assert_array_equal(loaded.landmark_ids, labels)
    before, after = index.search(queries, 5), loaded.search(queries, 5)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0], atol=1e-6)


def test_ids_that_look_like_numbers_or_missing_values_survive(tmp_path: Path):
    references, labels, _ = clustered(4, centres=2, dim=8)
    image_ids = ["0012", "NA", "nan", "1e5"]
    EmbeddingIndex.build(references, image_ids, labels, "flat").save(tmp_path)
    assert EmbeddingIndex.load(tmp_path).image_ids == image_ids


def test_load_errors(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        EmbeddingIndex.load(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "index.json").write_text("{}")
    with pytest.raises(DataError, match="incomplete"):
        EmbeddingIndex.load(tmp_path / "half")


def test_save_replaces_an_older_index_and_leaves_no_temporary_files(tmp_path: Path, data):
    references, labels, _ = data
    EmbeddingIndex.build(references[:10], ids(10), labels[:10], "flat").save(tmp_path)
    EmbeddingIndex.build(references[:30], ids(30), labels[:30], "flat").save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.faiss", "index.json", "references.csv"]
    assert len(EmbeddingIndex.load(tmp_path)) == 30


@pytest.mark.parametrize("index_type", ["flat", "ivf", "ivfpq"])
def test_add_makes_new_references_searchable(data, index_type):
    references, labels, _ = data
    index = EmbeddingIndex.build(references, ids(len(references)), labels, index_type)
    assert index.count_of(1234567) == 0
    new = unit(np.random.default_rng(7).normal(size=(3, 64)))
    index.add(new, ["new0", "new1", "new2"], [1234567] * 3)
    assert len(index) == 5003 and index.image_ids[-3:] == ["new0", "new1", "new2"]
    assert index.count_of(1234567) == 3
    similarities, positions = index.search(new, 1)
    assert positions[:, 0].tolist() == [5000, 5001, 5002]
    np.testing.assert_allclose(similarities[:, 0], 1.0, atol=1e-5)
    assert index.landmark_ids_at(positions)[:, 0].tolist() == [1234567] * 3


def test_padding_when_k_exceeds_the_references():
    references, labels, _ = clustered(3, centres=2, dim=8)
    index = EmbeddingIndex.build(references, ["a", "b", "c"], labels, "flat")
    similarities, positions = index.search(references[:2], 5)
    assert positions.shape == (2, 5) and (positions[:, 3:] == -1).all() and (positions[:, :3] >= 0).all()
    assert np.isneginf(similarities[:, 3:]).all() and np.isfinite(similarities[:, :3]).all()
    landmark_ids = index.landmark_ids_at(positions)
    assert (landmark_ids[:, 3:] == -1).all()
    np.testing.assert_array_equal(landmark_ids[:, :3], labels[positions[:, :3]])


def test_an_empty_index_pads_everything():
    index = EmbeddingIndex.build(np.zeros((0, 8), np.float32), [], np.zeros(0, np.int64), "flat")
    similarities, positions = index.search(np.ones((2, 8), np.float32) / np.sqrt(8), 3)
    assert (positions == -1).all() and np.isneginf(similarities).all() and len(index) == 0
    assert (index.landmark_ids_at(positions) == -1).all()


def test_count_of_counts_reference_photos_per_landmark():
    references, _, _ = clustered(6, centres=2, dim=8)
    index = EmbeddingIndex.build(references, ids(6), np.array([5, 5, 9, 5, -1, 9]), "flat")
    assert [index.count_of(5), index.count_of(9), index.count_of(-1), index.count_of(3)] == [3, 2, 1, 0]


def test_input_validation(data):
    references, labels, _ = data
    with pytest.raises(ValueError, match="2-D"):
        EmbeddingIndex.build(references[0], ["a"], labels[:1])
    with pytest.raises(ValueError, match="must match"):
        EmbeddingIndex.build(references[:10], ids(9), labels[:10])
    with pytest.raises(ValueError, match="must match"):
        EmbeddingIndex.build(references[:10], ids(10), labels[:8])
    with pytest.raises(ValueError, match="float32"):
        EmbeddingIndex.build([["a", "b"]], ["x"], [1])
    with pytest.raises(ValueError, match="NaN"):
        EmbeddingIndex.build(np.full((2, 4), np.nan), ["a", "b"], [1, 2])
    with pytest.raises(ValueError, match="index_type"):
        EmbeddingIndex.build(references[:10], ids(10), labels[:10], "hnsw")
    index = EmbeddingIndex.build(references[:10], ids(10), labels[:10], "flat")
    with pytest.raises(ValueError, match="64-d"):
        index.search(np.ones((1, 32), np.float32), 1)
    with pytest.raises(ValueError, match="k must be"):
        index.search(references[:1], 0)
    with pytest.raises(ValueError, match="must match"):
        index.add(references[:2], ["a"], [1, 2])
    assert len(index) == 10  # nothing half-added


def test_concurrent_add_and_search(data):
    references, labels, queries = data
    index = EmbeddingIndex.build(references[:2000], ids(2000), labels[:2000], "ivf")
    errors: list[BaseException] = []

    def enrol(worker: int) -> None:
        try:
            for batch in range(10):
                start = 2000 + (worker * 10 + batch) * 30
                index.add(references[start : start + 30], ids(30, f"w{worker}b{batch}-"), labels[start : start + 30])
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    def search() -> None:
        try:
            for _ in range(20):
                similarities, positions = index.search(queries[:50], 5)
                assert positions.shape == (50, 5)
                assert (index.landmark_ids_at(positions)[positions >= 0] >= 0).all()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=enrol, args=(w,)) for w in range(3)] + [threading.Thread(target=search) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(index) == 2000 + 3 * 10 * 30 == len(index.image_ids) == len(index.landmark_ids)
    # every vector is where its ids say: searching the added references finds themselves
    positions = index.search(references[2000:2900], 1)[1][:, 0]
    expected = [f"w{row // 300}b{row // 30 % 10}-{row % 30:05d}" for row in range(900)]
    assert [index.image_ids[p] for p in positions] == expected
    np.testing.assert_array_equal(index.landmark_ids[positions], labels[2000:2900])


@pytest.mark.parametrize("index_type", ["flat", "ivf", "ivfpq"])
def test_remove_leaves_the_others_searchable_as_brute_force_over_them(data, index_type, tmp_path: Path):
    references, labels, queries = data
    index = EmbeddingIndex.build(references, ids(len(references)), labels, index_type)
    doomed = np.random.default_rng(3).choice(len(references), 700, replace=False)
    assert index.remove(np.concatenate([doomed, doomed[:5]])) == 700  # duplicates count once
    keep = np.setdiff1d(np.arange(len(references)), doomed)
    assert len(index) == len(keep) and index.image_ids == [ids(len(references))[i] for i in keep]
    np.testing.assert_array_equal(index.landmark_ids, labels[keep])
    np.testing.assert_array_equal(index.vectors(), references[keep])
    similarities, positions = index.search(queries, 5)
    exact_similarities, exact_positions = brute_force_search(references[keep], queries, 5)
    if index_type == "flat":
        np.testing.assert_array_equal(positions, exact_positions)
    else:
        assert (positions[:, 0] == exact_positions[:, 0]).mean() >= 0.9
    assert not np.isin(positions, -1).any()
    found = {index.image_ids[p] for p in positions.ravel()}
    assert not found & {ids(len(references))[i] for i in doomed}  # a removed photo is never found
    index.save(tmp_path / "index")  # and stays removed after a restart
    again = EmbeddingIndex.load(tmp_path / "index")
    assert again.image_ids == index.image_ids and again.index_type == index_type
    np.testing.assert_array_equal(again.search(queries, 5)[1], positions)


def test_remove_everything_then_add_and_positions_of():
    references, labels, _ = clustered(60, centres=3, dim=8)
    index = EmbeddingIndex.build(references, ids(60), labels, "flat")
    assert index.positions_of([("img00002", int(labels[2])), ("img00002", 999), ("nope", 0)]).tolist() == [2]
    assert index.remove([]) == 0
    with pytest.raises(ValueError, match="positions must lie"):
        index.remove([60])
    assert index.remove(np.arange(60)) == 60 and len(index) == 0 and index.count_of(int(labels[0])) == 0
    index.add(references[:2], ["a", "b"], [5, 5])
    assert index.search(references[:1], 1)[1].tolist() == [[0]] and index.count_of(5) == 2


def test_concurrent_remove_and_search_never_return_a_removed_position(data):
    references, labels, queries = data
    index = EmbeddingIndex.build(references[:2000], ids(2000), labels[:2000], "flat")
    errors: list[BaseException] = []

    def searcher() -> None:
        try:
            for _ in range(30):
                _, positions = index.search(queries[:20], 3)
                assert positions.max() < 2000
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for thread in threads:
        thread.start()
    for step in range(20):
        index.remove(np.arange(step * 10, step * 10 + 10) % len(index))
    for thread in threads:
        thread.join()
    assert not errors and len(index) == 2000 - 200
