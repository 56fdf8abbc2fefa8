"""A FAISS index over L2-normalised embeddings (inner product = cosine), with image and landmark ids."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np
import pandas as pd

from landmarks.errors import DataError

log = logging.getLogger(__name__)

FLAT_BELOW = 100_000  # auto: exact search below this many references
IVFPQ_FROM = 5_000_000  # auto: compressed IVF-PQ from this many references


def brute_force_search(references: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k in NumPy (ground truth for the approximate indexes)."""
    scores = queries @ references.T
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    positions = np.take_along_axis(top, order, axis=1)
    return np.take_along_axis(scores, positions, axis=1).astype(np.float32), positions.astype(np.int64)


def _as_matrix(embeddings: np.ndarray) -> np.ndarray:
    matrix = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    if matrix.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (count, dim), got shape {matrix.shape}")
    return matrix


class EmbeddingIndex:
    """References searchable by cosine similarity; exact (flat) or approximate (IVF, IVF-PQ) by size or by choice."""

    def __init__(self, index: faiss.Index, image_ids: list[str], landmark_ids: np.ndarray, index_type: str):
        self.index = index
        self.image_ids = list(image_ids)
        self.landmark_ids = np.asarray(landmark_ids, dtype=np.int64)
        self.index_type = index_type
        self.lock = threading.RLock()
        self._counts: dict[int, int] | None = None

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @staticmethod
    def choose_type(count: int) -> str:
        if count < FLAT_BELOW:
            return "flat"
        return "ivf" if count < IVFPQ_FROM else "ivfpq"

    @classmethod
    def build(cls, embeddings: np.ndarray, image_ids: Sequence[str], landmark_ids: np.ndarray, index_type: str = "auto",
              nlist: int | None = None, nprobe: int | None = None, pq_m: int | None = None) -> "EmbeddingIndex":
        vectors = _as_matrix(embeddings)
        if len(vectors) != len(image_ids) or len(vectors) != len(landmark_ids):
            raise ValueError(f"{len(vectors)} embeddings but {len(image_ids)} image ids and {len(landmark_ids)} landmark ids")
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        kind = cls.choose_type(len(vectors)) if index_type == "auto" else index_type
        dim = vectors.shape[1]
        if kind == "flat":
            index: faiss.Index = faiss.IndexFlatIP(dim)
        else:
            nlist = nlist or int(min(65536, max(16, 4 * math.sqrt(len(vectors)))))
            quantizer = faiss.IndexFlatIP(dim)
            if kind == "ivf":
                index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            else:
                pq_m = pq_m or 64
                ivfpq = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
                index = faiss.IndexRefineFlat(ivfpq)
                index.k_factor = 4
            sample = vectors[np.random.default_rng(0).choice(len(vectors), min(len(vectors), 64 * nlist), replace=False)]
            index.train(sample)
            faiss.extract_index_ivf(index).nprobe = nprobe or max(1, nlist // 32)
        index.add(vectors)
        return cls(index, list(image_ids), np.asarray(landmark_ids), kind)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, positions), both (N, k); -1 positions pad when there are fewer than k references."""
        with self.lock:
            return self.index.search(_as_matrix(queries), k)

    def landmark_ids_at(self, positions: np.ndarray) -> np.ndarray:
        with self.lock:
            labels = self.landmark_ids[np.clip(positions, 0, None)] if len(self.landmark_ids) else np.full_like(positions, -1)
        return np.where(positions >= 0, labels, -1)

    def count_of(self, landmark_id: int) -> int:
        """Reference photos of a landmark."""
        with self.lock:
            if self._counts is None:
                ids, counts = np.unique(self.landmark_ids, return_counts=True)
                self._counts = dict(zip(ids.tolist(), counts.tolist()))
            return self._counts.get(int(landmark_id), 0)

    def add(self, embeddings: np.ndarray, image_ids: Sequence[str], landmark_ids: Sequence[int]) -> None:
        """Append references (e.g. a newly enrolled landmark); searchable at once."""
        vectors = _as_matrix(embeddings)
        if len(vectors) != len(image_ids) or len(vectors) != len(landmark_ids):
            raise ValueError("embeddings, image_ids and landmark_ids must have the same length")
        with self.lock:
            self.index.add(vectors)
            self.image_ids.extend(image_ids)
            self.landmark_ids = np.concatenate([self.landmark_ids, np.asarray(landmark_ids, dtype=np.int64)])
            self._counts = None

    def save(self, folder: Path) -> None:
        """index.faiss, references.csv and index.json, each written to a temporary file and renamed."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with self.lock:
            tmp = folder / f".index.faiss.tmp-{os.getpid()}"
            faiss.write_index(self.index, str(tmp))
            references = pd.DataFrame({"position": np.arange(len(self.image_ids)), "image_id": self.image_ids,
                                       "landmark_id": self.landmark_ids})
            references.to_csv(folder / f".references.csv.tmp-{os.getpid()}", index=False)
            (folder / f".index.json.tmp-{os.getpid()}").write_text(json.dumps(
                {"type": self.index_type, "dim": self.dim, "count": len(self)}))
            for name in ("index.faiss", "references.csv", "index.json"):
                os.replace(folder / f".{name}.tmp-{os.getpid()}", folder / name)

    @classmethod
    def load(cls, folder: Path) -> "EmbeddingIndex":
        folder = Path(folder)
        if not (folder / "index.faiss").exists():
            raise DataError(f"{folder} holds no index (index.faiss is missing).")
        meta = json.loads((folder / "index.json").read_text())
        references = pd.read_csv(folder / "references.csv", dtype={"image_id": str})
        index = faiss.read_index(str(folder / "index.faiss"))
        return cls(index, references["image_id"].tolist(), references["landmark_id"].to_numpy(), meta["type"])
