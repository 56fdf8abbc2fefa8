"""A FAISS index over L2-normalised float32 embeddings (inner product = cosine similarity), with image and landmark ids.

Index types (``index_type``):

- ``flat``: exact search (``IndexFlatIP``); every query scans every reference (a BLAS matrix product when
  queries come in batches: 4.1 ms/query at 1M references, 512-d, batches of 1000, 2 cores; the time grows
  linearly with the number of references).
- ``ivf``: ``IndexIVFFlat`` with ``METRIC_INNER_PRODUCT``: references are grouped into ``nlist`` cells
  (spherical k-means) and a query scans the ``nprobe`` cells nearest to it; vectors stay uncompressed.
- ``ivfpq``: IVF + 4-bit product quantization scanned with SIMD (``IndexIVFPQFastScan``, ``pq_m`` sub-quantizers,
  ``pq_m / 2`` bytes a vector) wrapped in ``IndexRefineFlat``: the PQ scan gives a shortlist of
  ``REFINE_K_FACTOR * k`` candidates that are re-ranked by their exact inner product with the stored vectors, so
  similarities are exact and the top-1 is exact search's whenever the shortlist holds it.
- ``auto``: ``flat`` below ``FLAT_BELOW`` references, ``ivfpq`` from there on.

Why ``auto`` never picks ``ivf`` and why ``nprobe`` is a large fraction of ``nlist``: on embeddings of many
landmarks with few photos each (GLDv2: median 9 photos), the k-means cells follow the big landmarks; a small
landmark's photos fall in cells chosen by their noise, so a new photo of it finds its neighbours' cell only when
a query scans ~40-50 % of the cells. IVF-flat scanning that much is slower than exact search (it is not a BLAS
product); the PQ fast scan reads 32 bytes instead of 2 KB a vector and re-ranks exactly, which at 1M references
gives recall@1 0.973 against exact search at 0.24 ms/query (benchmarks/bench_index.py, section "Million-scale kNN"
of benchmarks/RESULTS.md). On embeddings with tighter clusters a smaller ``nprobe`` gives the same recall faster:
set ``index.nprobe``.

Approximate indexes are trained on a random sample of the references (seed 0), so a build is reproducible.

Removal (``remove``, used by the web service's undo): a flat index drops the vectors in place (FAISS
``remove_ids``, the later ones move down); an IVF or IVF-PQ index is emptied and the kept vectors are added
again (their exact copies: ``IndexRefineFlat`` keeps them beside the PQ codes, IVF-flat hands them back through
its direct map), because ``remove_ids`` there would leave holes in the ids that positions rely on. The cells and
codebooks stay as trained. Tested against brute force over the kept vectors (tests/recognize/test_index.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
from pathlib import Path
from typing import Iterable, Iterator, Sequence, get_args

import faiss
import numpy as np
import pandas as pd

from landmarks.config import IndexType
from landmarks.errors import DataError
from landmarks.utils import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

INDEX_TYPES: tuple[str, ...] = get_args(IndexType)
FLAT_BELOW = 100_000  # auto: exact search below this many references (4.1 ms/query at 1M, so ~0.4 ms at 100k)
MAX_NLIST = 65_536
MIN_POINTS_PER_CELL = 39  # FAISS' k-means wants at least this many training points per centroid
TRAIN_POINTS_PER_CELL = 64  # k-means training sample: this many references per IVF cell
KMEANS_ITERATIONS = 10
NPROBE_FRACTION = 0.5  # default nprobe = this fraction of nlist (see the module docstring)
REFINE_K_FACTOR = 16  # ivfpq: candidates re-ranked exactly = k_factor * k
PADDING_SIMILARITY = -np.inf  # similarity reported where fewer than k references were found (position -1)


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _faiss_threads(count: int) -> Iterator[None]:
    """FAISS' OpenMP threads set to ``count`` for a block, then back to all cores.

    PQ training runs thousands of tiny parallel loops; on a machine whose cores are busy with other processes
    their spinning threads made it 30x slower (19 s instead of 0.3 s), so it runs on one thread."""
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(available_cores())


def default_nlist(count: int) -> int:
    """IVF cells: ~sqrt(n) (1,000 at 1M), at most ``MAX_NLIST`` and at most n / 39 (enough training points per cell).

    At 1M references 4 sqrt(n) cells gave the same recall per ms of search but a 5x longer build."""
    nlist = int(round(math.sqrt(max(count, 1))))
    return int(max(1, min(nlist, MAX_NLIST, count // MIN_POINTS_PER_CELL)))


def default_nprobe(nlist: int) -> int:
    """Cells scanned per query: half of them (recall@1 >= 0.95 against exact search, benchmarks/bench_index.py)."""
    return int(min(nlist, max(1, math.ceil(NPROBE_FRACTION * nlist))))


def default_pq_m(dim: int) -> int:
    """PQ sub-quantizers: one per 8 dimensions (64 for 512-d, 32 bytes a vector at 4 bits each), a divisor of ``dim``."""
    for m in range(max(1, dim // 8), 0, -1):
        if dim % m == 0:
            return m
    return 1  # pragma: no cover - range always reaches 1


def brute_force_search(references: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k in NumPy: (similarities (N, k) float32, positions (N, k) int64), -1 padded.

    Ties are broken by the lower position. Ground truth for the approximate indexes (tests, benchmarks)."""
    references = np.asarray(references, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    similarities = np.full((len(queries), k), PADDING_SIMILARITY, dtype=np.float32)
    positions = np.full((len(queries), k), -1, dtype=np.int64)
    found = min(k, len(references))
    if found == 0 or len(queries) == 0:
        return similarities, positions
    batch = max(1, 2**26 // max(1, len(references)))  # ~256 MB of scores at a time
    for start in range(0, len(queries), batch):
        scores = queries[start : start + batch] @ references.T
        top = np.argpartition(-scores, found - 1, axis=1)[:, :found] if found < scores.shape[1] else (
            np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy())
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)
        rows = slice(start, start + len(scores))
        positions[rows, :found] = np.take_along_axis(top, order, axis=1)
        similarities[rows, :found] = np.take_along_axis(top_scores, order, axis=1)
    return similarities, positions


def _as_matrix(embeddings: np.ndarray, name: str = "embeddings", dim: int | None = None) -> np.ndarray:
    """A C-contiguous float32 (count, dim) copy-if-needed of ``embeddings``; ValueError when that is impossible."""
    try:
        matrix = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be convertible to a float32 array ({error})") from None
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (count, dim), got shape {matrix.shape}")
    if matrix.shape[1] == 0:
        raise ValueError(f"{name} must have at least one dimension, got shape {matrix.shape}")
    if dim is not None and matrix.shape[1] != dim:
        raise ValueError(f"{name} have {matrix.shape[1]} dimensions but the index holds {dim}-d vectors")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return matrix


def _check_lengths(vectors: np.ndarray, image_ids: Sequence[str], landmark_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    labels = np.asarray(landmark_ids)
    if labels.ndim != 1:
        raise ValueError(f"landmark_ids must be 1-D, got shape {labels.shape}")
    if len(vectors) != len(image_ids) or len(vectors) != len(labels):
        raise ValueError(
            f"{len(vectors)} embeddings but {len(image_ids)} image ids and {len(labels)} landmark ids; they must match"
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"landmark_ids must be integers, got dtype {labels.dtype}")
    return labels.astype(np.int64)


def _warn_if_not_unit(vectors: np.ndarray) -> None:
    sample = vectors[:: max(1, len(vectors) // 1000)]
    if len(sample) and not np.allclose(np.linalg.norm(sample, axis=1), 1.0, atol=1e-2):
        log.warning("embeddings are not L2-normalised: inner products are not cosine similarities")


class EmbeddingIndex:
    """References searchable by cosine similarity; exact (flat) or approximate (IVF, IVF-PQ) by size or by choice.

    ``search``, ``add``, ``remove`` and ``save`` hold one re-entrant lock, so a served index can enrol new references
    while it answers queries; positions returned by one ``search`` are only valid until the next ``remove`` (the
    web service holds a readers-writer lock around search + lookup for that reason)."""

    def __init__(self, index: faiss.Index, image_ids: Sequence[str], landmark_ids: np.ndarray, index_type: str):
        if index.ntotal != len(image_ids) or index.ntotal != len(landmark_ids):
            raise ValueError(f"index holds {index.ntotal} vectors but {len(image_ids)} image ids / {len(landmark_ids)} landmark ids")
        self.index = index
        self.image_ids = [str(i) for i in image_ids]
        self.landmark_ids = np.asarray(landmark_ids, dtype=np.int64)
        self.index_type = index_type
        self.lock = threading.RLock()
        self._counts: dict[int, int] | None = None
        faiss.omp_set_num_threads(available_cores())

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def __repr__(self) -> str:
        extra = f", nlist={self.nlist}, nprobe={self.nprobe}" if self.nlist else ""
        return f"EmbeddingIndex(type={self.index_type}, count={len(self)}, dim={self.dim}{extra})"

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def nlist(self) -> int | None:
        """IVF cells (None for a flat index)."""
        ivf = self._ivf()
        return int(ivf.nlist) if ivf is not None else None

    @property
    def nprobe(self) -> int | None:
        """IVF cells scanned per query (None for a flat index); settable to trade speed for recall."""
        ivf = self._ivf()
        return int(ivf.nprobe) if ivf is not None else None

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        ivf = self._ivf()
        if ivf is None:
            raise ValueError("a flat index has no nprobe")
        if not 1 <= int(value):
            raise ValueError(f"nprobe must be at least 1, got {value}")
        with self.lock:
            ivf.nprobe = int(min(int(value), ivf.nlist))

    def _ivf(self) -> faiss.IndexIVF | None:
        try:
            return faiss.extract_index_ivf(self.index)
        except RuntimeError:
            return None

    @staticmethod
    def choose_type(count: int) -> str:
        """The index type ``auto`` picks for ``count`` references: exact below ``FLAT_BELOW``, IVF-PQ + re-ranking above."""
        return "flat" if count < FLAT_BELOW else "ivfpq"

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        image_ids: Sequence[str],
        landmark_ids: np.ndarray,
        index_type: str = "auto",
        nlist: int | None = None,
        nprobe: int | None = None,
        pq_m: int | None = None,
    ) -> "EmbeddingIndex":
        """An index over ``embeddings`` (count, dim), L2-normalised float32, with each row's image and landmark id."""
        vectors = _as_matrix(embeddings)
        labels = _check_lengths(vectors, image_ids, landmark_ids)
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type {index_type!r} is not one of {', '.join(INDEX_TYPES)}")
        _warn_if_not_unit(vectors)
        faiss.omp_set_num_threads(available_cores())
        count, dim = vectors.shape
        kind = cls.choose_type(count) if index_type == "auto" else index_type
        if kind != "flat" and count < MIN_POINTS_PER_CELL:
            log.info("%d references are too few to train an %s index; using exact search", count, kind)
            kind = "flat"
        if kind == "flat":
            index: faiss.Index = faiss.IndexFlatIP(dim)
        else:
            index = cls._trained_ivf(vectors, kind, nlist, nprobe, pq_m)
        index.add(vectors)
        built = cls(index, list(image_ids), labels, kind)
        log.info("built %r", built)
        return built

    @staticmethod
    def _trained_ivf(vectors: np.ndarray, kind: str, nlist: int | None, nprobe: int | None, pq_m: int | None) -> faiss.Index:
        """An empty, trained IVF-flat or IVF-PQ(+refine) index for ``vectors``."""
        count, dim = vectors.shape
        nlist = default_nlist(count) if nlist is None else int(nlist)
        if not 1 <= nlist <= count:
            raise ValueError(f"nlist must be between 1 and the number of references ({count}), got {nlist}")
        if kind == "ivfpq":
            pq_m = default_pq_m(dim) if pq_m is None else int(pq_m)
            if pq_m < 1 or dim % pq_m:
                raise ValueError(f"pq_m must divide the embedding size {dim}, got {pq_m}")
        train_size = min(count, max(TRAIN_POINTS_PER_CELL * nlist, 4096))
        rows = np.sort(np.random.default_rng(0).choice(count, train_size, replace=False)) if train_size < count else slice(None)
        sample = vectors[rows]
        # Coarse cells: spherical k-means (centroids on the unit sphere, as the embeddings), all cores.
        parameters = faiss.ClusteringParameters()
        parameters.niter = KMEANS_ITERATIONS
        parameters.seed = 0
        parameters.spherical = True
        parameters.max_points_per_centroid = TRAIN_POINTS_PER_CELL
        parameters.verbose = False
        quantizer = faiss.IndexFlatIP(dim)
        if nlist > train_size // MIN_POINTS_PER_CELL:
            log.info("training %d IVF cells on only %d references", nlist, train_size)
        clustering = faiss.Clustering(dim, nlist, parameters)
        clustering.train(sample, quantizer)  # leaves the nlist centroids in the quantizer: IVF training skips them
        if kind == "ivf":
            ivf: faiss.IndexIVF = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index: faiss.Index = ivf
        else:
            ivf = faiss.IndexIVFPQFastScan(quantizer, dim, nlist, pq_m, 4, faiss.METRIC_INNER_PRODUCT)
            with _faiss_threads(1):
                ivf.train(sample)  # the PQ codebooks, on residuals to the cells
            index = faiss.IndexRefineFlat(ivf)
            index.k_factor = REFINE_K_FACTOR
        ivf.nprobe = int(min(nlist, default_nprobe(nlist) if nprobe is None else max(1, int(nprobe))))
        return index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities float32, positions int64), both (N, k), best first; position -1 and similarity -inf pad
        when fewer than k references were found."""
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        matrix = _as_matrix(queries, "queries", self.dim)
        with self.lock:
            if len(matrix) == 0 or self.index.ntotal == 0:
                return (np.full((len(matrix), k), PADDING_SIMILARITY, np.float32), np.full((len(matrix), k), -1, np.int64))
            similarities, positions = self.index.search(matrix, int(k))
        positions = positions.astype(np.int64, copy=False)
        similarities = np.where(positions >= 0, similarities, PADDING_SIMILARITY).astype(np.float32, copy=False)
        return similarities, positions

    def landmark_ids_at(self, positions: np.ndarray) -> np.ndarray:
        """The landmark id of each position (any shape), -1 where the position is -1."""
        positions = np.asarray(positions, dtype=np.int64)
        with self.lock:
            labels = self.landmark_ids
        if not len(labels):
            return np.full(positions.shape, -1, dtype=np.int64)
        return np.where(positions >= 0, labels[np.clip(positions, 0, len(labels) - 1)], -1)

    def count_of(self, landmark_id: int) -> int:
        """Reference photos of a landmark (0 when it has none)."""
        with self.lock:
            if self._counts is None:
                ids, counts = np.unique(self.landmark_ids, return_counts=True)
                self._counts = dict(zip(ids.tolist(), counts.tolist()))
            return self._counts.get(int(landmark_id), 0)

    def add(self, embeddings: np.ndarray, image_ids: Sequence[str], landmark_ids: Sequence[int] | np.ndarray) -> None:
        """Append references (e.g. a newly enrolled landmark); searchable at once, positions continue from len()."""
        vectors = _as_matrix(embeddings, dim=self.dim)
        labels = _check_lengths(vectors, image_ids, landmark_ids)
        _warn_if_not_unit(vectors)
        with self.lock:
            self.index.add(vectors)
            self.image_ids.extend(str(i) for i in image_ids)
            self.landmark_ids = np.concatenate([self.landmark_ids, labels])
            self._counts = None

    def vectors(self, positions: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """The stored embeddings (float32, exact for every index type) at ``positions``, or all of them."""
        with self.lock:
            wanted = np.arange(len(self), dtype=np.int64) if positions is None else np.asarray(positions, dtype=np.int64)
            if wanted.size and (wanted.min() < 0 or wanted.max() >= len(self)):
                raise ValueError(f"positions must lie in [0, {len(self)}), got {wanted.min()}..{wanted.max()}")
            if self.index_type == "ivfpq":  # the refine index keeps the exact vectors beside the PQ codes
                exact = faiss.downcast_index(faiss.downcast_index(self.index).refine_index)
            elif self.index_type == "ivf":
                exact = self._ivf()
                exact.make_direct_map()  # no-op once made; IVF lists are not addressable by id without it
            else:
                exact = self.index
            if positions is None:
                return exact.reconstruct_n(0, len(self)) if len(self) else np.zeros((0, self.dim), np.float32)
            return np.stack([exact.reconstruct(int(p)) for p in wanted]) if wanted.size else np.zeros((0, self.dim), np.float32)

    def remove(self, positions: Sequence[int] | np.ndarray) -> int:
        """Remove the references at ``positions``; the others keep their order and are renumbered from 0.

        Flat: FAISS' ``remove_ids`` (the vectors after each removed one move down). IVF and IVF-PQ: the kept vectors
        (exact, see ``vectors``) are added again to the emptied, still trained index, because FAISS' ``remove_ids``
        there leaves holes in the ids that positions rely on. Returns how many were removed."""
        with self.lock:
            doomed = np.unique(np.asarray(positions, dtype=np.int64))
            if not doomed.size:
                return 0
            if doomed.min() < 0 or doomed.max() >= len(self):
                raise ValueError(f"positions must lie in [0, {len(self)}), got {doomed.min()}..{doomed.max()}")
            keep = np.ones(len(self), dtype=bool)
            keep[doomed] = False
            if self.index_type == "flat":
                self.index.remove_ids(faiss.IDSelectorBatch(doomed))
            else:
                kept = self.vectors(np.flatnonzero(keep))
                self.index.reset()
                if self.index_type == "ivf":
                    self._ivf().make_direct_map(False)
                if len(kept):
                    self.index.add(kept)
            self.image_ids = [i for i, k in zip(self.image_ids, keep) if k]
            self.landmark_ids = self.landmark_ids[keep]
            self._counts = None
            if self.index.ntotal != len(self.image_ids):  # pragma: no cover - a FAISS contract, checked anyway
                raise RuntimeError(f"index holds {self.index.ntotal} vectors after removal but {len(self.image_ids)} ids")
            return int(doomed.size)

    def positions_of(self, pairs: Iterable[tuple[str, int]]) -> np.ndarray:
        """Positions of the references given as (image id, landmark id) pairs (one pass over the ids)."""
        wanted = {(str(i), int(l)) for i, l in pairs}
        with self.lock:
            return np.asarray([p for p, (i, l) in enumerate(zip(self.image_ids, self.landmark_ids.tolist()))
                               if (i, l) in wanted], dtype=np.int64)

    def save(self, folder: Path) -> None:
        """``index.faiss``, ``references.csv`` (position,image_id,landmark_id) and ``index.json`` (type, dim, count,
        nlist, nprobe), each written to a temporary file in ``folder`` and renamed over the old one."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with self.lock:
            meta = {"type": self.index_type, "dim": self.dim, "count": len(self), "nlist": self.nlist,
                    "nprobe": self.nprobe, "metric": "inner_product"}
            references = pd.DataFrame({"position": np.arange(len(self), dtype=np.int64), "image_id": self.image_ids,
                                       "landmark_id": self.landmark_ids})
            with atomic_path(folder / "index.faiss") as tmp:
                faiss.write_index(self.index, str(tmp))
            with atomic_path(folder / "references.csv") as tmp:
                references.to_csv(tmp, index=False)
            atomic_write_text(folder / "index.json", json.dumps(meta, indent=1) + "\n")  # last: vouches for the rest

    @classmethod
    def load(cls, folder: Path) -> "EmbeddingIndex":
        """The index that ``save`` wrote into ``folder``."""
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"Index folder {folder} does not exist.")
        missing = [n for n in ("index.faiss", "references.csv", "index.json") if not (folder / n).is_file()]
        if missing:
            raise DataError(f"Index folder {folder} is incomplete (missing {', '.join(missing)}).")
        try:
            meta = json.loads((folder / "index.json").read_text())
            references = pd.read_csv(folder / "references.csv", dtype={"image_id": str, "landmark_id": np.int64},
                                     keep_default_na=False)
            index = faiss.read_index(str(folder / "index.faiss"))
        except (OSError, ValueError, RuntimeError, pd.errors.ParserError) as error:
            raise DataError(f"Index folder {folder} holds an unreadable index ({str(error).splitlines()[0]}).") from None
        if not index.ntotal == len(references) == int(meta.get("count", len(references))):
            raise DataError(
                f"Index folder {folder} is inconsistent: {index.ntotal} vectors, {len(references)} references, "
                f"index.json says {meta.get('count')}."
            )
        loaded = cls(index, references["image_id"].tolist(), references["landmark_id"].to_numpy(), str(meta.get("type", "flat")))
        if meta.get("nprobe") and loaded.nlist:
            loaded.nprobe = int(meta["nprobe"])
        return loaded
