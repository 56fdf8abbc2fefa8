"""Training data made ready: a catalog sampled, encoded to class indices, split, and decoded into the image cache."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from landmarks.config import Config
from landmarks.data.catalog import INFO_COLUMNS, read_catalog
from landmarks.data.images import ImageCache
from landmarks.data.photos import PhotosOnRead, choose_cache
from landmarks.data.shards import ShardIndex, find_shards
from landmarks.errors import ConfigError
from landmarks.data.sampling import sample_top_landmarks, stratified_split

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """A catalog encoded to class indices, split, and decoded into the image cache."""

    frame: pd.DataFrame  # id, path, landmark_id, class_index, split
    names: dict[int, str]
    landmark_ids: np.ndarray  # class_index -> landmark_id
    cache: ImageCache | PhotosOnRead  # the memory-mapped image cache, or photos decoded when read (data.cache=none)
    info: dict[int, dict[str, float | str]] = field(default_factory=dict)  # latitude, longitude, url, description
    shards: ShardIndex | None = None  # the training photos' tar shards, when the data folder has them

    @property
    def streamed(self) -> bool:
        """Training photos streamed from tar shards (not read one by one)."""
        return self.shards is not None and isinstance(self.cache, PhotosOnRead)

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero((self.frame["split"] == split).to_numpy() & self.cache.valid)

    @property
    def num_classes(self) -> int:
        return len(self.landmark_ids)


def prepare_data(config: Config, data_dir: Path) -> PreparedData:
    """Read, sample, encode and split the training data, and fill the image cache."""
    catalog = read_catalog(data_dir, "train")
    frame = catalog.frame[catalog.frame["landmark_id"] >= 0]
    if config.data.top_classes or config.data.max_per_class:
        frame = sample_top_landmarks(frame, config.data.top_classes, config.data.max_per_class, config.train.seed)
    frame = frame.reset_index(drop=True).copy()
    landmark_ids = np.sort(frame["landmark_id"].unique())
    frame["class_index"] = np.searchsorted(landmark_ids, frame["landmark_id"].to_numpy())
    train_idx, val_idx, test_idx = stratified_split(
        frame["class_index"].to_numpy(), config.data.val_fraction, config.data.test_fraction, config.train.seed
    )
    split = np.empty(len(frame), dtype=object)
    split[train_idx], split[val_idx], split[test_idx] = "train", "val", "test"
    frame["split"] = split
    cache = photo_source(config, Path(data_dir), frame)
    names = {int(i): catalog.name_of(int(i)) for i in landmark_ids}
    info = {int(i): catalog.info[int(i)] for i in landmark_ids if int(i) in catalog.info}
    return PreparedData(frame, names, landmark_ids, cache, info, getattr(cache, "shards", None))


def photo_source(config: Config, data_dir: Path, frame: pd.DataFrame) -> ImageCache | PhotosOnRead:
    """``data.cache``: the image cache (memmap) or photos decoded when read (none), from files or tar shards."""
    shards = find_shards(data_dir, "train")
    size = config.data.image_size_px
    mode = choose_cache(config.data.cache, len(frame), size, config.data.cache_dir, config.data.cache_disk_share,
                        bool(shards))
    if shards and mode == "memmap":
        raise ConfigError(f"{data_dir / 'train'} holds tar shards, which are streamed: set data.cache=none (or auto); "
                          "data.cache=memmap reads extracted photos.")
    if mode == "memmap":
        return ImageCache.build(frame["path"].tolist(), size, config.data.cache_dir, workers=max(1, config.train.workers))
    index = ShardIndex.scan(shards, config.data.cache_dir) if shards else None
    photos = PhotosOnRead(frame["path"].tolist(), frame["id"].astype(str).tolist(), size, index)
    log.info("data.cache=none: %s, decoded in the DataLoader workers every epoch; no image cache written", photos)
    if photos.num_failed:
        log.warning("skipped %d photos of train.csv that are %s", photos.num_failed,
                    "in no shard" if index is not None else "missing")
    return photos


def labels_table(data: PreparedData) -> pd.DataFrame:
    """The run's labels: class_index, landmark_id, name, and the info columns the data has (latitude, longitude,
    url, description; empty where a landmark has none)."""
    labels = pd.DataFrame({"class_index": np.arange(data.num_classes), "landmark_id": data.landmark_ids,
                           "name": [data.names[int(i)] for i in data.landmark_ids]})
    for column in INFO_COLUMNS:
        if any(column in data.info.get(int(i), {}) for i in data.landmark_ids):
            labels[column] = [data.info.get(int(i), {}).get(column, "") for i in data.landmark_ids]
    return labels


def split_table(data: PreparedData) -> pd.DataFrame:
    """Every photo, its split and whether it could be read."""
    return data.frame[["id", "path", "landmark_id", "split"]].assign(valid=data.cache.valid)
