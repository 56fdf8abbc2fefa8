"""The registry: an unknown architecture lists the registered ones."""

import pytest

from landmarks.config import ModelConfig
from landmarks.errors import ConfigError
from landmarks.models.registry import build_model


def test_unknown_architecture_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="choose one of seed_cnn, classifier, glr"):
        build_model(ModelConfig(architecture="vit_arcface"), 3, 32)
