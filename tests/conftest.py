"""Shared fixtures: the real landmarks-mini data when LANDMARKS_DATA is set, tiny images otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


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


def make_photo(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
    """A small JPEG: a flat colour with a little noise and a stripe, so classes are learnable."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour, dtype=np.float32) + rng.normal(0, 12, (size[1], size[0], 3)), 0, 255)
    pixels[size[1] // 3 : size[1] // 2, :, :] = 255 - np.array(colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path, "JPEG", quality=90)
    return path


COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 220, 40)]


@pytest.fixture
def tiny_gldv2(tmp_path: Path) -> Path:
    """A GLDv2/Kaggle-layout folder: 4 landmarks with sparse ids, 12 photos each, 8 test photos (2 non-landmark)."""
    return build_tiny_gldv2(tmp_path / "gld")


def build_tiny_gldv2(root: Path) -> Path:
    """The folder behind the ``tiny_gldv2`` fixture (also used by the benchmarks' smoke runs)."""
    train_rows, test_rows, solution_rows = [], [], []
    landmark_ids = [7, 1042, 55, 300]
    for class_number, (landmark_id, colour) in enumerate(zip(landmark_ids, COLOURS)):
        for i in range(12):
            image_id = f"{class_number:x}{i:x}a{landmark_id:04x}{i:08x}"[:16].ljust(16, "0")
            make_photo(root / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg", colour, seed=i)
            train_rows.append(f"{image_id},{landmark_id}")
        for i in range(2 if class_number < 3 else 0):
            image_id = f"f{class_number:x}{i:x}b{landmark_id:04x}{i:08x}"[:16].ljust(16, "0")
            make_photo(root / "test" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg", colour, seed=100 + i)
            test_rows.append(image_id)
            solution_rows.append(f"{image_id},{landmark_id},Private")
    for i in range(2):
        image_id = f"e{i:x}0000000000000{i}"[:16]
        make_photo(root / "test" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg", (128, 128, 128), seed=200 + i)
        test_rows.append(image_id)
        solution_rows.append(f"{image_id},,Private")
    (root / "train.csv").write_text("id,landmark_id\n" + "\n".join(train_rows) + "\n")
    (root / "test.csv").write_text("id\n" + "\n".join(test_rows) + "\n")
    (root / "test_solution.csv").write_text("id,landmarks,Usage\n" + "\n".join(solution_rows) + "\n")
    (root / "landmarks.csv").write_text(
        "landmark_id,name\n" + "\n".join(f"{l},place_{l}" for l in landmark_ids) + "\n"
    )
    return root


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
