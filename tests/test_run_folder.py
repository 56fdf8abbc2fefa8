"""The run folder: the model's round trip, scoring.json, migration, missing files."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from landmarks.config import ModelConfig
from landmarks.errors import DataError
from landmarks.models.heads import dynamic_margins
from landmarks.models.landmark_model import LandmarkModel
from landmarks.models.registry import build_model
from landmarks.run_folder import RunFolder
from tests_helpers import CLASS_COUNTS, MODEL_CONFIGS, build_test_model, described_features


def _perturb(model: LandmarkModel) -> None:
    """Train one step so BatchNorm statistics, GeM's p and the weights move away from their initial values."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _, logits = model(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    model.eval()


@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
def test_save_load_round_trip_gives_identical_outputs(tmp_path: Path, name: str):
    model = build_test_model(name)
    _perturb(model)
    if getattr(model.head, "descriptor", None) is not None:
        model.head.descriptor.fit(described_features(model, torch.rand(8, 3, 32, 32)).numpy())
    RunFolder(tmp_path).save_model(model, MODEL_CONFIGS[name])
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob(".*tmp*"))
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["architecture"] == MODEL_CONFIGS[name].architecture and meta["num_classes"] == 4
    assert meta["input_size_px"] == 32 and meta["embedding_dim"] == model.embedding_dim
    assert meta["config"]["backbone"] == MODEL_CONFIGS[name].backbone and len(meta["mean"]) == 3

    loaded = RunFolder(tmp_path).load_model()
    assert not loaded.training and type(loaded.head) is type(model.head)
    images, labels = torch.rand(3, 3, 32, 32), torch.tensor([0, 2, 1])
    with torch.no_grad():
        for before, after in zip(model(images), loaded(images)):
            assert torch.equal(before, after)
        for before, after in zip(model(images, labels), loaded(images, labels)):
            assert torch.equal(before, after)
    assert torch.equal(model.mean, loaded.mean) and torch.equal(model.std, loaded.std)


def test_margins_come_from_class_counts_and_survive_a_round_trip(tmp_path: Path):
    model = build_test_model("glr")
    expected = torch.from_numpy(dynamic_margins(CLASS_COUNTS, 0.05, 0.45))
    assert torch.equal(model.head.arcface.margins, expected)
    RunFolder(tmp_path).save_model(model, MODEL_CONFIGS["glr"])
    assert torch.equal(RunFolder(tmp_path).load_model().head.arcface.margins, expected)  # rebuilt without class_counts
    plain = build_model(MODEL_CONFIGS["glr"], num_classes=4, image_size_px=32)
    assert plain.head.arcface.margins.tolist() == pytest.approx([0.05] * 4)


def test_load_rebuilds_without_pretrained_weights(tmp_path: Path):
    cfg = ModelConfig(architecture="classifier", backbone="test_resnet", pretrained=str(tmp_path / "gone.safetensors"))
    model = build_model(ModelConfig(architecture="classifier", backbone="test_resnet"), 3, 32)
    RunFolder(tmp_path / "run").save_model(model, cfg)  # the weights file named in the config no longer exists
    loaded = RunFolder(tmp_path / "run").load_model()
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_missing_model_json_is_a_data_error(tmp_path: Path):
    with pytest.raises(DataError, match=r"is not a run folder: model\.json is missing"):
        RunFolder(tmp_path).load_model()
    model = build_test_model("seed_cnn")
    RunFolder(tmp_path).save_model(model, MODEL_CONFIGS["seed_cnn"])
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(DataError, match=r"model\.safetensors is missing"):
        RunFolder(tmp_path).load_model()


def test_weights_that_do_not_match_model_json_are_a_data_error(tmp_path: Path):
    RunFolder(tmp_path).save_model(build_test_model("seed_cnn"), MODEL_CONFIGS["seed_cnn"])
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["num_classes"] = 5
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="does not match"):
        RunFolder(tmp_path).load_model()
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(DataError, match="not a valid model description"):
        RunFolder(tmp_path).load_model()


# -- scoring.json: what training learned, read by every answer -------------------------------------------
def _answers(run: Path, photos: np.ndarray) -> list[tuple]:
    from landmarks.recognize.recognizer import Recognizer

    predictions = Recognizer.load(run, backend="torch").predict(photos)
    return [(p.landmark_id, p.confidence, p.known, [(c.landmark_id, c.score) for c in p.candidates]) for p in predictions]


def _photos(run: Path) -> np.ndarray:
    from landmarks.data.images import decode_image

    split = RunFolder(run).read_split()
    size = RunFolder(run).read_model_meta()["input_size_px"]
    return np.stack([decode_image(p, size) for p in split["path"].head(6)])


@pytest.fixture
def learned_run(tiny_run_dir: Path, tmp_path: Path) -> Path:
    """The tiny run with scoring settings unlike config.yaml's (as training's search and calibration leave them)."""
    import shutil

    run = tmp_path / "original"
    shutil.copytree(tiny_run_dir, run)
    folder = RunFolder(run)
    scoring = folder.read_scoring()
    scoring.recognize.knn_weight, scoring.recognize.knn_k, scoring.recognize.tta_flip = 0.9, 3, True
    scoring.recognize.min_confidence = 0.4
    folder.write_scoring(scoring)
    return run


def test_a_run_copied_without_config_yaml_answers_exactly_as_the_original(learned_run: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(learned_run, copy)
    (copy / RunFolder.CONFIG).unlink()
    photos = _photos(learned_run)
    assert _answers(copy, photos) == _answers(learned_run, photos)
    assert RunFolder(learned_run).read_config().recognize.knn_weight != 0.9  # config.yaml is what was asked


def test_training_writes_scoring_json_and_leaves_config_yaml_as_asked(tiny_run_dir: Path):
    import yaml

    run = RunFolder(tiny_run_dir)
    scoring = run.read_scoring()
    asked = yaml.safe_load(run.file(RunFolder.CONFIG).read_text())["recognize"]
    assert scoring.calibration is not None
    assert scoring.recognize.min_confidence == pytest.approx(scoring.calibration.threshold, abs=1e-6)
    assert asked["min_confidence"] == 0.3 != scoring.recognize.min_confidence  # the default it was asked with


def test_a_run_from_before_scoring_json_is_migrated_once(learned_run: Path, tmp_path: Path):
    """Older runs wrote the learned values back into config.yaml and the map into calibration.json."""
    import shutil

    import yaml

    old = tmp_path / "old"
    shutil.copytree(learned_run, old)
    scoring = RunFolder(old).read_scoring()
    tree = yaml.safe_load((old / RunFolder.CONFIG).read_text())
    tree["recognize"].update(scoring.recognize.model_dump(mode="json"))
    (old / RunFolder.CONFIG).write_text(yaml.safe_dump(tree))
    (old / "calibration.json").write_text(json.dumps(scoring.calibration.to_dict()))
    (old / RunFolder.SCORING).unlink()
    photos = _photos(learned_run)
    assert _answers(old, photos) == _answers(learned_run, photos)
    assert json.loads((old / RunFolder.SCORING).read_text()) == scoring.to_dict()  # written by the migration


def test_a_run_without_scoring_json_or_config_yaml_says_which_file_is_missing(learned_run: Path):
    from landmarks.recognize.recognizer import Recognizer

    (learned_run / RunFolder.SCORING).unlink()
    (learned_run / RunFolder.CONFIG).unlink()
    with pytest.raises(DataError, match=r"scoring\.json is missing"):
        Recognizer.load(learned_run)


def test_a_damaged_scoring_json_is_one_sentence(learned_run: Path):
    (learned_run / RunFolder.SCORING).write_text('{"recognize": {"knn_k": "many"}}')
    with pytest.raises(DataError, match="is not a scoring file"):
        RunFolder(learned_run).read_scoring()


def test_config_yaml_is_written_once(tiny_run_dir: Path):
    from landmarks.config import Config
    from landmarks.errors import LandmarksError

    with pytest.raises(LandmarksError, match="written once"):
        RunFolder(tiny_run_dir).write_config(Config())
