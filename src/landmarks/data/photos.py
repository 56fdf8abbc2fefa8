"""``data.cache``: photos decoded once into the memory-mapped image cache, or decoded when read (``none``).

``PhotosOnRead`` has the image cache's interface (``images[i]``, ``images[[i, j]]``, ``valid``, ``size_px``) and
keeps no pixels: each photo is decoded from its file, or from its tar shard, when a DataLoader worker (or the
finishing steps) reads it. ``choose_cache`` settles ``auto``.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from landmarks.data.images import decode_image, decode_image_bytes, default_cache_dir
from landmarks.data.shards import ShardIndex
from landmarks.errors import ImageError

log = logging.getLogger(__name__)


class _Reader:
    """``images`` of ``PhotosOnRead``: an int gives one (S, S, 3) photo, a sequence or slice a stack of them."""

    def __init__(self, photos: "PhotosOnRead"):
        self.photos = photos

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, item: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
        if isinstance(item, (int, np.integer)):
            return self.photos.read(int(item))
        rows = range(len(self.photos))[item] if isinstance(item, slice) else np.asarray(item).reshape(-1)
        size = self.photos.size_px
        return np.stack([self.photos.read(int(i)) for i in rows]) if len(rows) else np.zeros((0, size, size, 3), np.uint8)


class PhotosOnRead:
    """Photos decoded when read, from their files or (``shards``) their tar shards; no image cache is written.

    ``valid`` says which photos are there (a file, or a member of a shard); one that turns out unreadable when
    decoded is logged and reads as black, since the epoch that meets it cannot skip it any more."""

    def __init__(self, paths: Sequence[str], ids: Sequence[str], size_px: int, shards: ShardIndex | None = None):
        self.paths, self.ids, self.size_px, self.shards = list(paths), list(ids), int(size_px), shards
        if shards is not None:
            self.valid = np.array([i in shards.locations for i in self.ids], dtype=bool)
            where = "in no shard"
        else:
            self.valid = np.array([os.path.isfile(p) for p in self.paths], dtype=bool)
            where = "missing"
        self.failures = [(self.paths[i], f"{self.paths[i]} is {where}.") for i in np.flatnonzero(~self.valid)]
        self.images = _Reader(self)
        self.count = len(self.paths)

    def __len__(self) -> int:
        return self.count

    @property
    def num_failed(self) -> int:
        return len(self.failures)

    def __repr__(self) -> str:
        source = f"{len(self.shards.shards)} tar shards" if self.shards is not None else "files"
        return f"PhotosOnRead({self.count} photos at {self.size_px} px from {source}, {self.num_failed} missing)"

    def read(self, row: int) -> np.ndarray:
        try:
            if self.shards is not None:
                return decode_image_bytes(self.shards.read(self.ids[row]), self.size_px, f"{self.ids[row]}.jpg")
            return decode_image(self.paths[row], self.size_px)
        except (ImageError, KeyError, OSError) as error:
            log.warning("photo %s could not be read (%s); it reads as black", self.paths[row], error)
            return np.zeros((self.size_px, self.size_px, 3), np.uint8)


def memmap_bytes(count: int, size_px: int) -> int:
    return int(count) * size_px * size_px * 3


def choose_cache(mode: str, count: int, size_px: int, cache_dir: str | Path | None, disk_share: float,
                 from_shards: bool) -> str:
    """``memmap`` or ``none`` for ``data.cache`` (``auto``: memmap when the cache fits ``disk_share`` of the free
    disk under the cache folder and the photos are files; the log says which and why)."""
    if mode != "auto":
        return mode
    if from_shards:
        log.info("data.cache=auto: none (the photos are in tar shards: streamed, decoded in the DataLoader workers)")
        return "none"
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    probe = next((p for p in (root, *root.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free
    needed = memmap_bytes(count, size_px)
    chosen = "memmap" if needed <= disk_share * free else "none"
    log.info("data.cache=auto: %s (the cache would take %.1f GB, %.0f%% of the %.1f GB free under %s allows %.1f GB)",
             chosen, needed / 1e9, 100 * disk_share, free / 1e9, probe, disk_share * free / 1e9)
    return chosen
