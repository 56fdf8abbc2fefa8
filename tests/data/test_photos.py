"""data.cache: photos decoded when read, and what auto chooses."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from tests_helpers import build_tiny_gldv2
from landmarks.data.catalog import read_catalog
from landmarks.data.images import decode_image
from landmarks.data.photos import PhotosOnRead, choose_cache
from landmarks.data.shards import ShardIndex, find_shards, pack_gldv2


def test_photos_on_read_decode_files_and_shards_alike(tmp_path: Path) -> None:
    source = build_tiny_gldv2(tmp_path / "files")
    pack_gldv2(source, tmp_path / "tars", per_shard=7)
    frame = read_catalog(source, "train").frame
    paths, ids = [*frame["path"], str(tmp_path / "gone.jpg")], [*frame["id"], "0000000000000gone"]
    files = PhotosOnRead(paths, ids, 20)
    shards = PhotosOnRead(paths, ids, 20, ShardIndex.scan(find_shards(tmp_path / "tars"), tmp_path))
    for photos in (files, shards):
        assert photos.valid.tolist() == [True] * len(frame) + [False] and photos.num_failed == 1
        assert np.array_equal(photos.images[3], decode_image(frame["path"][3], 20))
        stack = photos.images[np.array([0, 5])]
        assert stack.shape == (2, 20, 20, 3) and np.array_equal(stack[1], decode_image(frame["path"][5], 20))
        assert photos.images[len(frame)].sum() == 0  # a photo that is not there reads as black


def test_auto_chooses_memmap_when_it_fits_the_share_of_free_disk(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        assert choose_cache("auto", 10, 32, tmp_path, 0.5, from_shards=False) == "memmap"
        assert choose_cache("auto", 10**12, 384, tmp_path, 0.5, from_shards=False) == "none"
        assert choose_cache("auto", 10, 32, tmp_path, 0.5, from_shards=True) == "none"
    assert "data.cache=auto: none" in caplog.text and "data.cache=auto: memmap" in caplog.text
    assert choose_cache("memmap", 10**12, 384, tmp_path, 0.5, from_shards=False) == "memmap"
