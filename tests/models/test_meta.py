"""The model's self-description: what model.json and every checkpoint carry, and older formats read."""

import pytest

from landmarks.config import ModelConfig
from landmarks.models.meta import MODEL_FORMAT_VERSION, model_config_from_meta, model_meta, upgrade_model_meta
from landmarks.models.registry import build_model


def test_the_description_rebuilds_the_same_architecture_without_weights():
    cfg = ModelConfig(architecture="glr", backbone="test_efficientnet", pooling="gem", embedding_dim=16,
                      pretrained="none")
    meta = model_meta(build_model(cfg, 3, 32), cfg)
    assert meta["format_version"] == MODEL_FORMAT_VERSION and meta["head"]["kind"] == "arcface"
    rebuilt = model_config_from_meta(meta)
    assert rebuilt.architecture == "glr" and rebuilt.backbone == "test_efficientnet" and rebuilt.embedding_dim == 16


def test_format_1_gets_its_head_described():
    cfg = ModelConfig(architecture="seed_cnn", embedding_dim=8)
    meta = model_meta(build_model(cfg, 2, 32), cfg)
    head = meta.pop("head")
    meta["format_version"] = 1
    assert upgrade_model_meta(meta)["head"] == head == {"kind": "softmax", "logit_scale": None}


def test_a_description_without_its_keys_is_refused():
    with pytest.raises(KeyError):
        upgrade_model_meta({"architecture": "glr"})
