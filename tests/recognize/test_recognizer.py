"""The Recognizer on a tiny run: fusion, neighbours, non-landmark references, enrolment, unreadable files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from landmarks.config import RecognizeConfig
from landmarks.data.images import decode_image
from landmarks.recognize.index import EmbeddingIndex
from landmarks.recognize.recognizer import Recognizer
from tests_helpers import FixedEmbedder, unit


def make(knn_weight: float = 0.5, penalty: float = 1.0) -> Recognizer:
    refs = np.stack([unit(1, 0, 0), unit(0.9, 0.1, 0), unit(0, 1, 0), unit(0, 0, 1)])
    index = EmbeddingIndex.build(refs, ["a1", "a2", "b1", "none1"], np.array([10, 10, 20, -1]), "flat")
    config = RecognizeConfig(knn_k=3, knn_weight=knn_weight, top_k=2, non_landmark_penalty=penalty, show_neighbours=2)
    return Recognizer(FixedEmbedder(), np.array([10, 20]), {10: "tower", 20: "bridge"}, index, config)


def test_fused_score_by_hand():
    recognizer = make(knn_weight=0.5)
    # query == a1: knn(10) = 1.0, knn(20) = 0 (b1 not among 3 nearest? it is: sims a1 1, a2 .994, b1 0, none1 0)
    logits = np.log(np.array([[0.8, 0.2]], dtype=np.float32))  # classifier probabilities 0.8 / 0.2
    [prediction] = recognizer.score(unit(1, 0, 0)[None], logits)
    assert prediction.landmark_id == 10 and prediction.name == "tower"
    assert prediction.confidence == pytest.approx(0.5 * 1.0 + 0.5 * 0.8, abs=1e-5)
    assert [n.image_id for n in prediction.neighbours] == ["a1", "a2"]
    assert prediction.candidates[1].landmark_id == 20 and prediction.candidates[1].score == pytest.approx(0.5 * 0.2, abs=1e-5)


def test_a_close_non_landmark_reference_lowers_the_confidence():
    recognizer = make(knn_weight=1.0, penalty=1.0)
    query = unit(0.5, 0, 0.8)  # closer to the non-landmark photo than to the tower's
    [prediction] = recognizer.score(query[None], np.zeros((1, 2), np.float32))
    tower_similarity = float(query @ unit(1, 0, 0))
    non_landmark_similarity = float(query @ unit(0, 0, 1))
    expected = tower_similarity - (non_landmark_similarity - tower_similarity)
    assert prediction.confidence == pytest.approx(max(0.0, expected), abs=1e-5)
    assert prediction.confidence < tower_similarity


def test_enrolled_landmark_is_found_without_retraining():
    recognizer = make()
    new_id = recognizer.next_landmark_id()
    assert new_id == 21
    recognizer.add_references(np.stack([unit(0.3, 0.3, -0.9)]), ["new1"], new_id, "fountain")
    [prediction] = recognizer.score(unit(0.3, 0.3, -0.9)[None], np.zeros((1, 2), np.float32))
    assert prediction.name == "fountain" and prediction.confidence == pytest.approx(1.0, abs=1e-5)


def test_predict_paths_skips_unreadable_files(tiny_run_dir: Path, tiny_gldv2: Path, tmp_path: Path):
    recognizer = Recognizer.load(tiny_run_dir, backend="torch")
    good = sorted(str(p) for p in (tiny_gldv2 / "test").rglob("*.jpg"))[:2]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    predictions, failures = recognizer.predict_paths([good[0], str(bad), good[1], str(tmp_path / "missing.jpg")])
    assert [p is None for p in predictions] == [False, True, False, True]
    assert {Path(f[0]).name for f in failures} == {"bad.jpg", "missing.jpg"}
    expected = recognizer.predict(np.stack([decode_image(path, recognizer.input_size_px) for path in good]))
    for prediction, alone in zip([predictions[0], predictions[2]], expected):
        assert prediction.landmark_id == alone.landmark_id
        assert prediction.confidence == pytest.approx(alone.confidence, abs=1e-5)


# -- taught landmarks: imprinted class centres ----------------------------------------------------------
def make_cosine(knn_weight: float = 0.5) -> Recognizer:
    """A cosine head (logit scale 10) over a 2-d neck followed by a 1-d descriptor, landmarks 10 and 20 trained."""
    recognizer = make(knn_weight)
    recognizer.logit_scale = 10.0
    recognizer.set_head_shape({"embedding_dim": 3, "config": {"embedding_dim": 2, "descriptor_dims": 1,
                                                              "arcface_subcenters": 3}})
    return recognizer


def test_a_taught_landmark_is_scored_by_its_imprinted_centre():
    recognizer = make_cosine(knn_weight=0.5)
    assert recognizer.neck_dims == 2 and recognizer.subcenters == 3
    photos = np.stack([unit(0.3, 0.3, -0.9), unit(0.4, 0.2, -0.9)])
    recognizer.add_references(photos, ["new1", "new2"], 21, "fountain")
    imprinted = recognizer.imprint(21)
    assert imprinted.photos == 2 and imprinted.centres.shape == (1, 2)
    centre = unit(1, 1) + unit(2, 1)
    centre /= np.linalg.norm(centre)
    np.testing.assert_allclose(recognizer.centres[21][0], centre, atol=1e-6)
    query = unit(0.35, 0.1, -0.9)
    [prediction] = recognizer.score(query[None], np.zeros((1, 2), np.float32))
    knn = float((photos @ query).max())
    cosine = float(unit(0.35, 0.1) @ centre)
    assert prediction.landmark_id == 21
    assert prediction.confidence == pytest.approx(0.5 * knn + 0.5 * cosine, abs=1e-5)
    assert recognizer.imprint(10) is None and 10 not in recognizer.centres  # trained: its centre is the head's


def test_centres_follow_the_photos_and_are_restored_only_when_they_still_match():
    recognizer = make_cosine()
    recognizer.add_references(np.stack([unit(0, 1, 0.1), unit(0.1, 1, 0)]), ["n1", "n2"], 30, "gate")
    stored = recognizer.imprint(30)
    other = make_cosine()
    other.add_references(np.stack([unit(0, 1, 0.1), unit(0.1, 1, 0)]), ["n1", "n2"], 30, "gate")
    stored.centres = np.stack([unit(1, 0)])  # as stored: kept, since the photos are the same
    assert other.restore_centres({30: stored}) == []
    np.testing.assert_allclose(other.centres[30], [unit(1, 0)])
    other.remove_references([("n2", 30)])  # the photos changed since: imprinted again from n1 alone
    [fresh] = other.restore_centres({30: stored})
    np.testing.assert_allclose(other.centres[30][0], unit(0, 1), atol=1e-6)
    assert fresh.photos == 1
    other.remove_references([("n1", 30)])
    assert other.imprint(30) is None and 30 not in other.centres


def test_a_softmax_head_imprints_nothing_and_the_knn_score_stands_in():
    recognizer = make()
    recognizer.add_references(np.stack([unit(0.3, 0.3, -0.9)]), ["new1"], 21, "fountain")
    assert not recognizer.imprints and recognizer.imprint(21) is None
