"""Training loop details that a full run would only show on unlucky data sizes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from landmarks.config import load_config
from landmarks.train.loop import _last_batch_of_one
from landmarks.train.run import train


@pytest.mark.parametrize("count, batch, expected", [(65, 64, True), (64, 64, False), (129, 64, True), (1, 64, False), (66, 64, False)])
def test_last_batch_of_one(count: int, batch: int, expected: bool):
    assert _last_batch_of_one(count, batch) is expected


def test_an_epoch_that_would_end_on_one_photo_trains(tiny_gldv2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """48 training photos in batches of 47: the last batch of one would break BatchNorm; it is dropped."""
    monkeypatch.setenv("LANDMARKS_CACHE", str(tmp_path / "cache"))
    config = load_config("seed-cnn", ["data.image_size_px=32", "data.val_fraction=0", "data.test_fraction=0",
                                      "train.epochs=1", "train.batch_size=47", "train.workers=0",
                                      "train.precise_bn_batches=0"])
    run = train(config, tiny_gldv2, tmp_path / "run")
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 1 and history["train_loss"].notna().all()
