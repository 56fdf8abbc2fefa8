"""Shared fixtures: the real landmarks-mini data when LANDMARKS_DATA is set, tiny images otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests_helpers import build_tiny_gldv2


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test session gets its own image cache unless LANDMARKS_CACHE is set."""
    if "LANDMARKS_CACHE" not in os.environ:
        monkeypatch.setenv("LANDMARKS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def landmarks_data() -> Path:
    """The real landmarks-mini folder (skips the test when LANDMARKS_DATA is unset)."""
    value = os.environ.get("LANDMARKS_DATA")
    if not value or not Path(value).is_dir():
        pytest.skip("LANDMARKS_DATA is not set to the landmarks-mini folder")
    return Path(value)


@pytest.fixture
def tiny_gldv2(tmp_path: Path) -> Path:
    """A GLDv2/Kaggle-layout folder: 4 landmarks with sparse ids, 12 photos each, 8 test photos (2 non-landmark)."""
    return build_tiny_gldv2(tmp_path / "gld")


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained run folder (seed CNN at 32 px, 2 epochs) over a tiny dataset, shared by a test session."""
    from landmarks.config import load_config
    from landmarks.train.run import train

    root = tmp_path_factory.mktemp("tiny-run")
    data = build_tiny_gldv2(root / "gld")
    overrides = ["data.image_size_px=32", "train.epochs=2", "train.batch_size=16", "train.workers=0",
                 "train.early_stopping_patience=0", "train.lr=0.003", f"data.cache_dir={root / 'cache'}"]
    return train(load_config("seed-cnn", overrides), data, root / "run")


@pytest.fixture(scope="session")
def tiny_arcface_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained glr run folder (test backbone at 32 px, sub-center ArcFace, 16-d neck + 4-d descriptor, 2 epochs,
    calibrated) over a tiny dataset, shared by a test session."""
    from landmarks.config import load_config
    from landmarks.train.run import train

    root = tmp_path_factory.mktemp("tiny-arcface-run")
    data = build_tiny_gldv2(root / "gld")
    overrides = ["model.backbone=test_efficientnet", "model.pretrained=none", "model.embedding_dim=16",
                 "model.descriptor_dims=4", "data.image_size_px=32", "train.epochs=2", "train.batch_size=8",
                 "train.workers=0", "train.max_minutes=none", "data.val_fraction=0.25", "recognize.tta_flip=false",
                 f"data.cache_dir={root / 'cache'}"]
    return train(load_config("glr", overrides), data, root / "run")
