"""Weight imprinting: a taught landmark's class centres from its photos' neck embeddings."""

from __future__ import annotations

import numpy as np
from landmarks.recognize.centres import (
    centre_count, centre_scores, imprint_centres, neck_part, reference_fingerprint,
)
from tests_helpers import unit


def test_one_centre_is_the_normalised_mean_of_the_normalised_neck_parts():
    # neck = the first 2 values; the descriptor (last 2) must not move the centre
    embeddings = np.stack([np.r_[unit(1, 0), unit(0, 5)], np.r_[2 * unit(0, 1), unit(7, 0)]]).astype(np.float32)
    [centre] = imprint_centres(embeddings, neck_dims=2, subcenters=3)
    np.testing.assert_allclose(centre, unit(1, 1), atol=1e-6)


def test_centre_count_follows_the_photos_up_to_the_sub_centres():
    assert [centre_count(n, 3) for n in (1, 4, 5, 9, 10, 14, 15, 40)] == [1, 1, 1, 1, 2, 2, 3, 3]
    assert centre_count(40, 1) == 1


def test_two_clusters_of_photos_imprint_two_centres_one_on_each():
    rng = np.random.default_rng(0)
    east = np.stack([unit(1, 0.05 * rng.standard_normal(), 0) for _ in range(6)])
    north = np.stack([unit(0.05 * rng.standard_normal(), 1, 0) for _ in range(6)])
    centres = imprint_centres(np.concatenate([east, north]), neck_dims=3, subcenters=3, photos_per_centre=6)
    assert centres.shape == (2, 3)
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0, atol=1e-6)
    assert sorted(np.argmax(np.abs(centres), axis=1).tolist()) == [0, 1]


def test_scores_are_the_cosine_to_the_nearest_centre_clipped_to_zero():
    centres = {7: np.stack([unit(1, 0, 0), unit(0, 1, 0)]), 3: unit(0, 0, 1)[None]}
    queries = np.stack([unit(0.6, 0.8, 0), unit(0, 0, -1)])
    ids, scores = centre_scores(queries, centres, neck_dims=3)
    assert ids.tolist() == [3, 7]
    np.testing.assert_allclose(scores, [[0.0, 0.8], [0.0, 0.0]], atol=1e-6)


def test_neck_part_and_fingerprint():
    np.testing.assert_allclose(neck_part(np.array([[3.0, 4.0, 9.0]]), 2), [[0.6, 0.8]], atol=1e-6)
    assert reference_fingerprint(["b", "a"]) == reference_fingerprint(["a", "b"]) != reference_fingerprint(["a"])
    assert imprint_centres(np.zeros((0, 4), np.float32), neck_dims=2).shape == (0, 2)
