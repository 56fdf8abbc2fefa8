"""The training pipeline on GLDv2 tar shards with data.cache=none: no image cache, a run that answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests_helpers import build_tiny_gldv2
from landmarks.config import load_config
from landmarks.data.shards import pack_gldv2
from landmarks.errors import ConfigError
from landmarks.recognize.recognizer import Recognizer
from landmarks.train.run import train


def test_training_on_tar_shards_without_a_cache_writes_no_image_cache_and_answers(tmp_path: Path) -> None:
    source = build_tiny_gldv2(tmp_path / "files")
    pack_gldv2(source, tmp_path / "tars", per_shard=12)
    cache = tmp_path / "cache"
    config = load_config("glr", [
        "data.image_size_px=32", "data.cache=none", f"data.cache_dir={cache}", "model.backbone=test_efficientnet",
        "model.pretrained=none", "model.embedding_dim=16", "model.descriptor_dims=8", "model.descriptor_stage=none",
        "model.arcface_sample_rate=0.5", "train.precision=bf16", "train.freeze_backbone_epochs=0", "train.epochs=2",
        "train.batch_size=8", "train.workers=2", "train.max_minutes=none", "data.shuffle_buffer=16"])
    run = train(config, tmp_path / "tars", tmp_path / "run")
    assert not list(cache.rglob("images.u8"))  # only the shards' index is kept
    answers = Recognizer.load(run).predict_paths([str(p) for p in sorted((source / "test").rglob("*.jpg"))[:2]])
    assert len(answers) == 2


def test_memmap_is_refused_for_tar_shards_in_one_sentence(tmp_path: Path) -> None:
    pack_gldv2(build_tiny_gldv2(tmp_path / "files"), tmp_path / "tars", per_shard=12)
    config = load_config("glr", ["data.cache=memmap", f"data.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(ConfigError, match="holds tar shards"):
        train(config, tmp_path / "tars", tmp_path / "run")
