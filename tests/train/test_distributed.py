"""Two CPU processes (gloo) under torchrun train the same run folder a single process would write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import build_tiny_gldv2

OVERRIDES = ["data.image_size_px=32", "train.epochs=2", "train.batch_size=8", "train.workers=0",
             "train.early_stopping_patience=0", "train.lr=0.003"]


def _train(data: Path, out: Path, nproc: int, cache: Path) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun), "--standalone", f"--nproc_per_node={nproc}", "-m"] if nproc > 1 else [sys.executable, "-m"]
    env = {**os.environ, "LANDMARKS_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    command = [*launcher, "landmarks", "-q", "train", "--data", str(data), "--config", "seed-cnn", "--out", str(out), *OVERRIDES]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_two_process_ddp_matches_single_process_outputs(tmp_path: Path):
    data = build_tiny_gldv2(tmp_path / "gld")
    single = _train(data, tmp_path / "single", 1, tmp_path / "cache")
    assert single.returncode == 0, single.stderr
    ddp = _train(data, tmp_path / "ddp", 2, tmp_path / "cache")
    assert ddp.returncode == 0, ddp.stderr
    for name in ("config.yaml", "labels.csv", "split.csv", "model.json", "model.safetensors", "history.csv", "metrics.json",
                 "index/index.faiss", "plots/curves.png", "checkpoints/best.pt"):
        assert (tmp_path / "ddp" / name).exists(), name
    one, two = (pd.read_csv(tmp_path / run / "history.csv") for run in ("single", "ddp"))
    assert list(one.columns) == list(two.columns) and len(one) == len(two) == 2
    assert set(json.loads((tmp_path / "single" / "metrics.json").read_text())) == set(
        json.loads((tmp_path / "ddp" / "metrics.json").read_text()))
    assert (tmp_path / "ddp" / "model.json").read_text() == (tmp_path / "single" / "model.json").read_text()
    assert "Traceback" not in ddp.stderr
