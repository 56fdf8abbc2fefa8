"""The real thing on landmarks-mini: train, evaluate, submit and predict through the CLI (needs LANDMARKS_DATA)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from landmarks.cli import main

pytestmark = pytest.mark.slow

# The glr recipe with the backbone frozen throughout at 128 px: a couple of minutes on 2 cores.
QUICK_GLR = ["data.image_size_px=128", "train.epochs=3", "train.freeze_backbone_epochs=-1", "train.feature_views=1",
             "train.batch_size=64"]


def test_glr_on_landmarks_mini_end_to_end(landmarks_data: Path, tmp_path: Path, capsys):
    run = tmp_path / "glr"
    assert main(["-q", "train", "--data", str(landmarks_data), "--config", "glr", "--out", str(run), *QUICK_GLR]) == 0
    capsys.readouterr()

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["architecture"] == "glr" and config["train"]["seed"] == 42
    labels = pd.read_csv(run / "labels.csv")
    assert len(labels) == 41 and labels["name"].str.len().min() > 0
    assert len(pd.read_csv(run / "split.csv")) == 1427
    assert json.loads((run / "model.json").read_text())["embedding_dim"] == 512 + 96  # neck + whitened level-3 descriptor
    assert len(pd.read_csv(run / "history.csv")) == 3
    assert len(pd.read_csv(run / "index" / "references.csv")) > 1200
    for plot in ("curves.png", "augmentations.png", "predictions.png", "reliability.png", "precision_coverage.png"):
        with Image.open(run / "plots" / plot) as image:
            assert image.size[0] > 300
    scoring = json.loads((run / "scoring.json").read_text())
    calibration = scoring["calibration"]
    assert "calibration model" in calibration["fitted_on"]["queries"]
    assert scoring["recognize"]["min_confidence"] == pytest.approx(calibration["threshold"], abs=1e-6)
    assert config["recognize"]["min_confidence"] == 0.3  # config.yaml stays what was asked
    held_out = json.loads((run / "metrics.json").read_text())
    assert held_out["accuracy"] > 3 / 41  # well above chance (1/41)

    assert main(["-q", "evaluate", str(run), "--data", str(landmarks_data)]) == 0
    metrics = json.loads((run / "evaluation" / landmarks_data.resolve().name / "metrics.json").read_text())
    assert metrics["queries"] == 187 and metrics["queries_with_landmark"] == 99
    assert metrics["accuracy"] > 3 / 41 and 0 < metrics["gap"] <= 1 and 0 < metrics["map_at_100"] <= 1

    submission = tmp_path / "submission.csv"
    assert main(["-q", "submit", str(run), "--data", str(landmarks_data), "--out", str(submission)]) == 0
    frame = pd.read_csv(submission, dtype=str, keep_default_na=False)
    assert len(frame) == 187 and frame["landmarks"].str.match(r"^\d+ [01]\.\d+$").all()
    capsys.readouterr()

    photo = next((landmarks_data / "test").rglob("*.jpg"))
    assert main(["-q", "predict", str(run), str(photo), "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["top"] and row["top"][0]["name"] in set(labels["name"])


def test_sample_writes_a_dataset_train_reads_without_copying(landmarks_data: Path, tmp_path: Path, capsys):
    out = tmp_path / "sample"
    assert main(["sample", "--data", str(landmarks_data), "--classes", "5", "--per-class", "8", "--out", str(out)]) == 0
    assert "wrote 40 photos of 5 landmarks" in capsys.readouterr().out
    frame = pd.read_csv(out / "train.csv")
    assert frame["landmark_id"].value_counts().tolist() == [8] * 5
    assert frame["path"].map(lambda p: Path(p).is_file() and str(landmarks_data.resolve()) in p).all()
    assert not list(out.rglob("*.jpg"))
