"""Building a run's reference index from photos: non-landmark photos, and embeddings computed by N workers, each on its shard of the catalog, merged into one index.

Shard k of N takes rows k, k+N, k+2N, ... of the catalog, so shards are balanced whatever the order. Each
worker writes ``shard-k-of-N.npz`` (positions, image ids, landmark ids, embeddings); the merge puts rows back
in catalog order, so the merged index is the one a single worker would have built.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from landmarks.data.catalog import NO_LANDMARK, non_landmark_id, non_landmark_photos, read_catalog
from landmarks.errors import DataError
from landmarks.recognize.embed import Embedder, embed_paths, load_embedder
from landmarks.recognize.index import EmbeddingIndex
from landmarks.run_folder import RunFolder

log = logging.getLogger(__name__)


def shard_rows(count: int, shard: int, num_shards: int) -> np.ndarray:
    if not 0 <= shard < num_shards:
        raise DataError(f"Shard {shard} does not exist: shards are numbered 0 to {num_shards - 1}.")
    return np.arange(shard, count, num_shards)


def embed_shard(embedder: Embedder, data_dir: Path, shard: int, num_shards: int, out: Path) -> Path:
    """Embed this worker's shard of DIR's training photos into ``out`` (.npz)."""
    frame = read_catalog(data_dir).frame
    rows = shard_rows(len(frame), shard, num_shards)
    embeddings, _, valid, _ = embed_paths(embedder, frame["path"].to_numpy()[rows].tolist(), desc=f"shard {shard}/{num_shards}")
    rows = rows[valid]
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, positions=rows, image_ids=frame["id"].to_numpy()[rows].astype(str),
             landmark_ids=frame["landmark_id"].to_numpy()[rows], embeddings=embeddings, total=len(frame),
             num_shards=num_shards, shard=shard)
    return out


def merge_shards(files: Sequence[Path], index_type: str = "auto") -> EmbeddingIndex:
    """One index from every shard's file, rows in catalog order; a missing or repeated shard is an error."""
    parts = [np.load(f) for f in files]
    if not parts:
        raise DataError("No shard files to merge.")
    expected = int(parts[0]["num_shards"])
    seen = sorted(int(p["shard"]) for p in parts)
    if seen != list(range(expected)):
        raise DataError(f"Shards {seen} do not make up all {expected} shards.")
    positions = np.concatenate([p["positions"] for p in parts])
    order = np.argsort(positions, kind="stable")
    embeddings = np.concatenate([p["embeddings"] for p in parts if len(p["embeddings"])])[order]
    image_ids = np.concatenate([p["image_ids"] for p in parts])[order].tolist()
    landmark_ids = np.concatenate([p["landmark_ids"] for p in parts])[order]
    return EmbeddingIndex.build(embeddings, image_ids, landmark_ids, index_type=index_type)


def add_non_landmarks(run_dir: Path, folder: Path, backend: str = "auto") -> tuple[int, int]:
    """Add the photos under ``folder`` (showing no known landmark) to the run's index as landmark -1, so that a
    query close to one of them loses confidence; returns (photos added, unreadable photos skipped)."""
    photos = non_landmark_photos(folder, "--non-landmarks")
    run = RunFolder(run_dir)
    run.require(RunFolder.INDEX)
    index = run.load_index()
    embeddings, _, valid, failures = embed_paths(load_embedder(run, backend), photos, desc="non-landmarks")
    kept = [non_landmark_id(folder, p) for p, ok in zip(photos, valid) if ok]
    index.add(embeddings, kept, [NO_LANDMARK] * len(kept))
    run.save_index(index)
    return len(kept), len(failures)
