"""The registered architectures: their heads, mean and std, descriptor levels."""

import pytest

from landmarks.config import ModelConfig
from landmarks.errors import ConfigError
from landmarks.models.landmark_model import ArcFaceHead, PooledDenseHead
from landmarks.models.registry import build_model
from tests_helpers import build_test_model


def test_heads_per_architecture():
    assert isinstance(build_test_model("classifier").head, PooledDenseHead)
    arcface = build_test_model("classifier_arcface").head
    assert isinstance(arcface, ArcFaceHead) and arcface.arcface.weight.shape == (4 * 2, 16)
    glr = build_test_model("glr").head
    assert isinstance(glr, ArcFaceHead) and type(glr.pool).__name__ == "GeM" and glr.arcface.subcenters == 3


def test_a_descriptor_stage_the_backbone_lacks_is_a_config_error():
    with pytest.raises(ConfigError, match="descriptor_stage=9: test_efficientnet has feature levels 0 to 4"):
        build_model(ModelConfig(architecture="glr", backbone="test_efficientnet", embedding_dim=8, descriptor_dims=2,
                                descriptor_stage=9), num_classes=2, image_size_px=32)


def test_mean_and_std_from_the_backbone_or_the_config():
    lite = ModelConfig(architecture="glr", backbone="tf_efficientnet_lite0", embedding_dim=8)
    model = build_model(lite, num_classes=2, image_size_px=32)
    assert model.mean.flatten().tolist() == [0.5] * 3 and model.std.flatten().tolist() == [0.5] * 3
    assert model.mean.shape == (1, 3, 1, 1)
    custom = ModelConfig(architecture="classifier", backbone="test_resnet", mean=(0.1, 0.2, 0.3), std=(1.0, 2.0, 3.0))
    model = build_model(custom, num_classes=2, image_size_px=32)
    assert model.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3]) and model.std.flatten()[2] == 3.0
