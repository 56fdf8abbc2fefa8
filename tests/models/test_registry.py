"""The registry: an unknown architecture lists the registered ones."""

import numpy as np
import pytest

from landmarks.config import ModelConfig
from landmarks.errors import ConfigError
from landmarks.models.registry import build_model

CONFIGS = {
    "seed_cnn": ModelConfig(architecture="seed_cnn", embedding_dim=32),
    "classifier": ModelConfig(architecture="classifier", backbone="test_efficientnet", embedding_dim=16),
    "classifier_arcface": ModelConfig(architecture="classifier", backbone="test_resnet", head="arcface",
                                      embedding_dim=16, arcface_subcenters=2),
    "glr": ModelConfig(architecture="glr", backbone="test_efficientnet", pooling="gem", embedding_dim=16),
    "glr_descriptor": ModelConfig(architecture="glr", backbone="test_efficientnet", pooling="gem", embedding_dim=16,
                                  descriptor_dims=4, descriptor_weight=2.0),
    "glr_stage_descriptor": ModelConfig(architecture="glr", backbone="test_efficientnet", pooling="gem",
                                        embedding_dim=16, descriptor_dims=4, descriptor_stage=2),
}
COUNTS = np.array([1, 16, 256, 3])


def test_unknown_architecture_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="choose one of seed_cnn, classifier, glr"):
        build_model(ModelConfig(architecture="vit_arcface"), 3, 32)
