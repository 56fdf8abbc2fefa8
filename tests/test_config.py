from pathlib import Path

import pytest

from landmarks.config import dump_config, load_config, preset_names
from landmarks.errors import ConfigError


def test_presets_load_and_resolve():
    assert {"seed-cnn", "seed-cnn-faithful"} <= set(preset_names())
    config = load_config("seed-cnn-faithful")
    assert config.data.image_size_px == 128
    assert config.train.batch_size == 256 and config.train.lr == 5e-4 and config.train.epochs == 100
    assert config.model.dropout_before_batchnorm is True


def test_overrides_are_typed():
    config = load_config("seed-cnn", ["train.epochs=3", "augment.vertical_flip=false", "data.top_classes=none", "train.lr=1e-3"])
    assert config.train.epochs == 3 and config.augment.vertical_flip is False
    assert config.data.top_classes is None and config.train.lr == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "preset, overrides, message",
    [
        ("no-such-preset", [], "Unknown preset 'no-such-preset'"),
        ("seed-cnn", ["train.epochz=3"], "Unknown config key train.epochz"),
        ("seed-cnn", ["bogus.x=1"], "Unknown config section 'bogus'"),
        ("seed-cnn", ["train.epochs=three"], "train.epochs='three' is not a valid int"),
        ("seed-cnn", ["model.head=magic"], "model.head='magic' is not one of"),
        ("seed-cnn", ["train.epochs"], "must look like section.key=value"),
    ],
)
def test_config_errors_are_one_sentence(preset, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config(preset, overrides)


def test_dump_and_reload_round_trip(tmp_path: Path):
    config = load_config("seed-cnn", ["train.epochs=7", "model.mean=0.5,0.5,0.5"])
    dump_config(config, tmp_path / "config.yaml")
    again = load_config(str(tmp_path / "config.yaml"))
    assert again.train.epochs == 7 and again.model.mean == (0.5, 0.5, 0.5)
    assert again.to_dict()["model"] == config.to_dict()["model"]


def test_a_renamed_key_is_still_read_with_a_warning(caplog: pytest.LogCaptureFixture):
    with caplog.at_level("WARNING"):
        config = load_config("glr", ["recognize.calibrate=true"])
    assert config.recognize.search_knn_weight is True
    assert "recognize.calibrate is now recognize.search_knn_weight" in caplog.text
    with caplog.at_level("WARNING"):
        config = load_config("glr", ["train.backbone_lr_factor=0.1"])
    assert config.train.backbone_lr_scale == 0.1
    assert "train.backbone_lr_factor is now train.backbone_lr_scale" in caplog.text


@pytest.mark.parametrize("override", ["train.precision=fp8", "data.cache=ram", "model.arcface_sample_rate=0",
                                      "model.arcface_sample_rate=1.5", "train.accumulate=0"])
def test_scale_settings_out_of_range_are_refused(override: str):
    with pytest.raises(ConfigError):
        load_config("glr", [override])
