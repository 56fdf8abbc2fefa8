"""The command line as a user types it: a tiny run end to end, and one clear sentence for each mistake."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

import landmarks
from landmarks.cli import main
from landmarks.recognize.recognizer import Recognizer

TINY = [
    "data.image_size_px=32", "train.epochs=3", "train.batch_size=16", "train.workers=0",
    "train.early_stopping_patience=0", "train.lr=0.003",
]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def tiny_run(tiny_gldv2: Path, tmp_path: Path, capsys) -> Path:
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "-q", "train", "--data", str(tiny_gldv2), "--config", "seed-cnn", "--out", str(run), *TINY)
    assert code == 0, err
    assert f"run folder: {run}" in out
    return run


def test_train_writes_a_complete_run_folder(tiny_run: Path):
    """train writes config (with the source's commit), labels, model, history, metrics, index and plots."""
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(landmarks.__file__).parent, capture_output=True,
                          text=True)
    assert config["train"]["epochs"] == 3
    assert config["git_commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    labels = pd.read_csv(tiny_run / "labels.csv")
    assert sorted(labels["landmark_id"]) == [7, 55, 300, 1042]
    assert set(labels["name"]) == {"place_7", "place_55", "place_300", "place_1042"}
    meta = json.loads((tiny_run / "model.json").read_text())
    assert meta["num_classes"] == 4 and meta["input_size_px"] == 32
    history = pd.read_csv(tiny_run / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]
    assert history["lr"].tolist() == pytest.approx([0.003] * 3)  # no scheduler: the configured rate throughout
    assert (history[["train_loss", "val_loss", "seconds"]] > 0).all().all()
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    split = pd.read_csv(tiny_run / "split.csv")
    assert metrics["queries"] == (split["split"] == "test").sum() == 4 and metrics["references"] == len(split) == 48
    per_landmark = pd.read_csv(tiny_run / "evaluation" / "held-out" / "per_landmark.csv")
    assert metrics["accuracy"] == pytest.approx(per_landmark["correct"].sum() / per_landmark["support"].sum())
    for name in ("model.safetensors", "checkpoints/best.pt", "checkpoints/last.pt", "index/index.faiss",
                 "plots/curves.png", "plots/augmentations.png", "plots/predictions.png"):
        assert (tiny_run / name).stat().st_size > 0, name


def test_resume_continues_after_the_last_epoch(tiny_run: Path, tiny_gldv2: Path, capsys):
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    config["train"]["epochs"] = 4
    (tiny_run / "config.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run_cli(capsys, "-q", "train", "--data", str(tiny_gldv2), "--out", str(tiny_run), "--resume")
    assert code == 0, err
    assert list(pd.read_csv(tiny_run / "history.csv")["epoch"]) == [1, 2, 3, 4]


def test_evaluate_submit_predict(tiny_run: Path, tiny_gldv2: Path, tmp_path: Path, capsys):
    """evaluate prints the metrics it saves; submit writes a prediction per photo; predict prints the top answers."""
    code, out, err = run_cli(capsys, "-q", "evaluate", str(tiny_run), "--data", str(tiny_gldv2))
    assert code == 0, err
    report = tiny_run / "evaluation" / tiny_gldv2.resolve().name
    metrics = json.loads((report / "metrics.json").read_text())
    assert f"{'gap':<14} {metrics['gap']:.4f}" in out and f"{'map_at_100':<14} {metrics['map_at_100']:.4f}" in out
    assert "queries        8 (6 with a known landmark)" in out and f"report:        {report}" in out
    assert metrics["queries"] == 8 and 0 < metrics["map_at_100"] <= 1
    per_landmark = pd.read_csv(report / "per_landmark.csv")
    assert per_landmark["support"].sum() == 6
    assert metrics["accuracy"] == pytest.approx(per_landmark["correct"].sum() / 6)

    submission = tmp_path / "submission.csv"
    code, out, err = run_cli(capsys, "-q", "submit", str(tiny_run), "--data", str(tiny_gldv2), "--out", str(submission))
    assert code == 0, err
    frame = pd.read_csv(submission, dtype=str, keep_default_na=False)
    assert list(frame.columns) == ["id", "landmarks"] and len(frame) == 8
    assert frame["landmarks"].str.fullmatch(r"(7|55|300|1042) [01]\.\d{6}").all()

    photo = next((tiny_gldv2 / "test").rglob("*.jpg"))
    code, out, err = run_cli(capsys, "-q", "predict", str(tiny_run), str(photo), "--json", "--top-k", "2")
    assert code == 0, err
    row = json.loads(out.strip().splitlines()[0])
    assert row["path"] == str(photo) and len(row["top"]) == 2
    [prediction], _ = Recognizer.load(tiny_run).predict_paths([photo])
    assert prediction is not None and row["confidence"] == round(prediction.confidence, 4)
    assert [c["landmark_id"] for c in row["top"]] == [c.landmark_id for c in prediction.candidates[:2]]
    assert row["top"][0]["score"] >= row["top"][1]["score"]


def test_predict_folder_with_a_corrupt_file_skips_it(tiny_run: Path, tiny_gldv2: Path, tmp_path: Path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, photo in enumerate(sorted((tiny_gldv2 / "test").rglob("*.jpg"))[:3]):
        (folder / f"{i}.jpg").write_bytes(photo.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    out_csv = tmp_path / "predictions.csv"
    code, _, err = run_cli(capsys, "-q", "predict", str(tiny_run), str(folder), "--out", str(out_csv))
    assert code == 0
    assert "broken.jpg" in err and "1 of 4 files could not be read" in err
    assert len(pd.read_csv(out_csv)) == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "/no/such/folder"], "Folder /no/such/folder does not exist."),
        (["train", "--data", "{data}", "--config", "nope"], "Unknown preset 'nope'"),
        (["evaluate", "/no/run", "--data", "{data}"], "Folder /no/run does not exist."),
        (["predict", "{data}", "{data}/train.csv"], "is not a run folder: model.json is missing."),
    ],
)
def test_user_mistakes_give_one_sentence_and_exit_2(argv, message, tiny_gldv2: Path, capsys):
    code, _, err = run_cli(capsys, *[a.replace("{data}", str(tiny_gldv2)) for a in argv])
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_model_the_config_cannot_build_is_refused_before_the_run_folder_is_written(tiny_gldv2: Path, tmp_path: Path,
                                                                                     capsys):
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "-q", "train", "--data", str(tiny_gldv2), "--config", "glr", "--out", str(run),
                           "model.backbone=test_efficientnet", "model.pretrained=none", "model.descriptor_stage=9",
                           f"data.cache_dir={tmp_path / 'cache'}")
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == ["landmarks: error: model.descriptor_stage=9: test_efficientnet has feature "
                                        "levels 0 to 4"]
    assert not run.exists()


def test_csv_with_wrong_columns_is_refused(tmp_path: Path, capsys):
    (tmp_path / "train.csv").write_text("image,label\na,1\n")
    code, _, err = run_cli(capsys, "train", "--data", str(tmp_path))
    assert code == 2 and "landmark_id" in err and "Traceback" not in err


def test_corrupt_training_photo_is_skipped_and_counted(tiny_gldv2: Path, tmp_path: Path, capsys, caplog):
    victim = next((tiny_gldv2 / "train").rglob("*.jpg"))
    victim.write_bytes(victim.read_bytes()[:40])  # truncated
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data", str(tiny_gldv2), "--out", str(run), *TINY, "train.epochs=1")
    assert code == 0, err
    assert "skipped 1 unreadable images" in caplog.text
    split = pd.read_csv(run / "split.csv")
    assert (~split["valid"]).sum() == 1


def test_sample_uses_only_the_photos_on_disk(tmp_path: Path, capsys: pytest.CaptureFixture):
    """GLDv2's train.csv lists every shard; after downloading a few, sample from what is there."""
    import pandas as pd

    from tests_helpers import build_tiny_gldv2

    data = build_tiny_gldv2(tmp_path / "gld")
    frame = pd.read_csv(data / "train.csv", dtype={"id": str})
    gone = frame[frame["landmark_id"] == 7]["id"].tolist()[:10]  # landmark 7 keeps 2 of its 12 photos
    for image_id in gone:
        (data / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg").unlink()

    assert main(["sample", "--data", str(data), "--classes", "4", "--per-class", "5", "--out", str(tmp_path / "s")]) == 0

    sampled = pd.read_csv(tmp_path / "s" / "train.csv", dtype={"id": str})
    assert not set(gone) & set(sampled["id"]) and all(Path(p).is_file() for p in sampled["path"])
    assert sampled.groupby("landmark_id").size().to_dict() == {7: 2, 55: 5, 300: 5, 1042: 5}
    for image_id in frame["id"]:
        path = data / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
        path.unlink(missing_ok=True)
    assert main(["sample", "--data", str(data), "--classes", "4", "--per-class", "5", "--out", str(tmp_path / "t")]) == 2
    assert "is on disk" in capsys.readouterr().err
