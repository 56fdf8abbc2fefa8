"""Two CPU processes (gloo) under torchrun train the run a single process trains: same losses, metrics and weights.

What can be equal. Under DDP each of the 2 processes takes ``batch_size`` photos per step and the gradients are
averaged, so a step of 2 x B photos in one process is the same update when the two ranks' batches together are
the single process's batch and nothing depends on how a batch is split. The set-up below makes the second half
true: a GroupNorm backbone (test_efficientnet_gn; BatchNorm would normalise each rank's half on its own and
broadcast rank 0's statistics), no dropout, no augmentation (each rank draws its own random numbers), no class
weighting (a weighted mean over each half is not the weighted mean over the whole), and SGD (linear in the
gradient, so float rounding in the all-reduce stays rounding; Adam divides by sqrt(v) and amplifies it).
36 training photos split 18 / 18 and 8 validation photos 4 / 4: no rank pads with a repeated photo.

The first half, the order: one process and N processes draw the same permutation per epoch
(``DistributedSampler(seed, epoch)`` in both; rank r takes every N-th photo of it), so a single process's batch of
2 x B photos is the union of the two ranks' batches of B, with mini-batches as with one full batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from tests_helpers import build_tiny_gldv2

pytestmark = pytest.mark.slow

OVERRIDES = ["data.image_size_px=64", "train.epochs=2", "train.workers=0", "train.early_stopping_patience=0",
             "train.precise_bn_batches=0", "train.optimizer=sgd", "train.lr=0.05", "train.class_weighting=false",
             "augment.enabled=false", "model.architecture=classifier", "model.backbone=test_efficientnet_gn",
             "model.pretrained=none", "model.dropout=0", "model.embedding_dim=32"]
COMPARED = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "backbone_frozen"]


def _train(data: Path, out: Path, nproc: int, batch_size: int, cache: Path) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = ([str(torchrun), "--standalone", f"--nproc_per_node={nproc}", "-m"] if nproc > 1
                else [sys.executable, "-m"])
    env = {**os.environ, "LANDMARKS_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    command = [*launcher, "landmarks", "-q", "train", "--data", str(data), "--config", "seed-cnn", "--out", str(out),
               *OVERRIDES, f"train.batch_size={batch_size}"]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def _single_and_ddp(folder: Path, per_rank_batch: int) -> tuple[Path, Path]:
    """One process with batches of 2B photos, two processes with B each, on the same data."""
    data = build_tiny_gldv2(folder / "gld")
    single = _train(data, folder / "single", 1, 2 * per_rank_batch, folder / "cache")
    assert single.returncode == 0, single.stderr
    ddp = _train(data, folder / "ddp", 2, per_rank_batch, folder / "cache")
    assert ddp.returncode == 0, ddp.stderr
    assert "Traceback" not in ddp.stderr
    return folder / "single", folder / "ddp"


@pytest.fixture(scope="module")
def full_batch_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _single_and_ddp(tmp_path_factory.mktemp("ddp-full-batch"), per_rank_batch=18)


@pytest.fixture(scope="module")
def mini_batch_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _single_and_ddp(tmp_path_factory.mktemp("ddp-mini-batch"), per_rank_batch=9)


def assert_same_run(single: Path, ddp: Path) -> None:
    """Same history values, metrics.json numbers, model weights and reference index, to float rounding."""
    one, two = (pd.read_csv(run / "history.csv") for run in (single, ddp))
    assert len(one) == len(two) == 2 and list(one.columns) == list(two.columns)
    for column in COMPARED:
        assert two[column].tolist() == pytest.approx(one[column].tolist(), rel=1e-4, abs=1e-6), column
    assert one["train_loss"].iloc[1] < one["train_loss"].iloc[0]  # it trained: the comparison is not of two no-ops

    metrics_one, metrics_two = (json.loads((run / "metrics.json").read_text()) for run in (single, ddp))
    assert metrics_one.keys() == metrics_two.keys()
    for key, value in metrics_one.items():
        if key == "train_minutes":  # time, not a result
            continue
        expected = pytest.approx(value, rel=1e-4, abs=1e-6) if isinstance(value, float) else value
        assert metrics_two[key] == expected, key

    weights_one, weights_two = (load_file(str(run / "model.safetensors")) for run in (single, ddp))
    assert weights_one.keys() == weights_two.keys()
    for name, tensor in weights_one.items():
        assert np.allclose(weights_two[name].numpy(), tensor.numpy(), rtol=1e-4, atol=1e-6), name

    assert (single / "index" / "references.csv").read_text() == (ddp / "index" / "references.csv").read_text()
    vectors = [faiss.read_index(str(run / "index" / "index.faiss")) for run in (single, ddp)]
    assert np.allclose(vectors[0].reconstruct_n(0, vectors[0].ntotal), vectors[1].reconstruct_n(0, vectors[1].ntotal),
                       atol=1e-5)
    assert (single / "model.json").read_text() == (ddp / "model.json").read_text()
    for run in (single, ddp):
        for name in ("labels.csv", "split.csv", "checkpoints/best.pt", "checkpoints/last.pt", "plots/curves.png"):
            assert (run / name).is_file(), run / name
    config_one, config_two = (flat(yaml.safe_load((run / "config.yaml").read_text())) for run in (single, ddp))
    assert config_one.pop("train.batch_size") == 2 * config_two.pop("train.batch_size")
    assert config_one.keys() == config_two.keys()
    for key, value in config_one.items():  # recognize.min_confidence is fitted after training: a float result
        assert config_two[key] == (pytest.approx(value, rel=1e-4) if isinstance(value, float) else value), key


def flat(tree: dict, prefix: str = "") -> dict[str, object]:
    """A nested config as {"section.key": value}."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_two_processes_with_full_batches_match_one_process(full_batch_runs: tuple[Path, Path]) -> None:
    """One step per epoch over all 36 training photos: DDP's averaged gradients give the single process's run."""
    assert_same_run(*full_batch_runs)


def test_two_processes_with_mini_batches_match_one_process(mini_batch_runs: tuple[Path, Path]) -> None:
    """Two steps per epoch (18 photos in one process, 9 per rank): the same batches give the same run."""
    assert_same_run(*mini_batch_runs)
