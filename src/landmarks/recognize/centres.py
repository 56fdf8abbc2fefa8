"""Class centres of taught landmarks: weight imprinting (Qi, Brown and Lowe, "Low-Shot Learning with Imprinted
Weights", CVPR 2018) for the run's sub-center ArcFace head.

A landmark taught in the service (enrolled, or given approved photos) has reference photos but no column in the
classifier, so the classifier half of its fused score had nothing to say. Its centres are imprinted from the
L2-normalised neck embeddings of its reference photos, as Qi et al. set the weights of a new class of a cosine
classifier: one centre, their normalised mean, or, with enough photos, up to the head's ``k`` sub-centres from a
spherical k-means of them (``faiss.Kmeans(spherical=True)``), one centre per ``PHOTOS_PER_CENTRE`` photos. A query's
classifier score for the landmark is then its cosine to the nearest centre, in [0, 1], as for a trained landmark.

The neck is the part of the embedding the classifier reads: its first ``neck_dims`` values (``model.embedding_dim``
when the embedding also carries a descriptor, ``model.descriptor_dims``).
"""

from __future__ import annotations

import hashlib

import faiss
import numpy as np

KMEANS_ITERATIONS = 20
PHOTOS_PER_CENTRE = 5  # a sub-centre from fewer photos than this is noise: with 5 to 9 photos, one centre


def spherical_kmeans(vectors: np.ndarray, clusters: int, iterations: int = KMEANS_ITERATIONS,
                     seed: int = 0) -> np.ndarray:
    """Cluster assignment of each L2-normalised row: FAISS's cosine k-means (``faiss.Kmeans(spherical=True)``)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    count = len(vectors)
    clusters = max(1, min(clusters, count))
    if clusters == count:
        return np.arange(count)
    kmeans = faiss.Kmeans(vectors.shape[1], clusters, niter=iterations, seed=seed, spherical=True,
                          min_points_per_centroid=1, verbose=False)
    kmeans.train(vectors)
    _, assignment = kmeans.index.search(vectors, 1)
    return assignment[:, 0].astype(np.int64)


def normalized_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def neck_part(embeddings: np.ndarray, neck_dims: int) -> np.ndarray:
    """The classifier's part of embeddings (N, D), each row L2-normalised."""
    return normalized_rows(np.asarray(embeddings, dtype=np.float32)[:, :neck_dims])


def centre_count(photos: int, subcenters: int, photos_per_centre: int = PHOTOS_PER_CENTRE) -> int:
    """How many centres ``photos`` photos imprint: one per ``photos_per_centre``, at least 1, at most ``subcenters``."""
    return int(max(1, min(max(1, subcenters), photos // max(1, photos_per_centre))))


def imprint_centres(embeddings: np.ndarray, neck_dims: int, subcenters: int = 1,
                    photos_per_centre: int = PHOTOS_PER_CENTRE, seed: int = 0) -> np.ndarray:
    """(centres, neck_dims) unit centres imprinted from a landmark's reference embeddings (N, D): the normalised mean
    of their normalised neck parts, or of each cluster of a spherical k-means of them (``centre_count``)."""
    necks = neck_part(embeddings, neck_dims)
    if not len(necks):
        return np.zeros((0, neck_dims), np.float32)
    assignment = spherical_kmeans(necks, centre_count(len(necks), subcenters, photos_per_centre), seed=seed)
    return normalized_rows(np.stack([necks[assignment == c].sum(axis=0) for c in np.unique(assignment)]))


def centre_scores(embeddings: np.ndarray, centres: dict[int, np.ndarray], neck_dims: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(landmark ids (T,), scores (N, T)): each query's cosine to the nearest centre of each landmark, in [0, 1]."""
    ids = np.asarray(sorted(centres), dtype=np.int64)
    if not len(ids) or not len(embeddings):
        return ids, np.zeros((len(embeddings), len(ids)), np.float32)
    necks = neck_part(embeddings, neck_dims)
    scores = np.stack([(necks @ np.asarray(centres[int(i)], np.float32).T).max(axis=1) for i in ids], axis=1)
    return ids, np.clip(scores, 0.0, 1.0).astype(np.float32)


def reference_fingerprint(image_ids: list[str]) -> str:
    """What a landmark's centres were imprinted from: the SHA-1 of its reference photos' ids, in sorted order."""
    return hashlib.sha1("\n".join(sorted(str(i) for i in image_ids)).encode()).hexdigest()
