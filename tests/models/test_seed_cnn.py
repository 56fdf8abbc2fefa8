import math

import pytest
import torch
from torch import nn

from landmarks.config import ModelConfig
from landmarks.models.registry import build_model
from landmarks.models.seed_cnn import SeedCNNHead, SeedCNNTrunk, keras_parameter_count, seed_cnn_spatial_px

# The seed's Keras model.summary() for 500 classes at 128 px, row by row (BatchNormalization rows count
# gamma, beta, moving mean and moving variance: 4 per channel).
KERAS_TABLE = {
    "conv 32": 896, "bn 32": 128,
    "conv 64": 18_496, "bn 64": 256,
    "conv 128": 73_856, "bn 128": 512,
    "conv 256": 295_168, "bn 256": 1_024,
    "conv 512": 1_180_160, "bn 512": 2_048,
    "dense 512": 4_194_816, "bn1d 512": 2_048, "dense 500": 256_500,
}


@pytest.fixture(scope="module")
def seed_model():
    torch.manual_seed(0)
    return build_model(ModelConfig(architecture="seed_cnn"), num_classes=500, image_size_px=128)


def test_keras_parameter_count_matches_the_seed_table(seed_model):
    assert sum(KERAS_TABLE.values()) == 6_025_908
    assert keras_parameter_count(seed_model) == 6_025_908
    # trainable parameters alone: the table minus the moving mean/variance (2 per BatchNorm channel)
    assert sum(p.numel() for p in seed_model.parameters()) == 6_025_908 - 2 * (32 + 64 + 128 + 256 + 512 + 512)


def test_layer_by_layer_counts(seed_model):
    convs = [m for m in seed_model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert [sum(p.numel() for p in c.parameters()) for c in convs] == [
        KERAS_TABLE[f"conv {f}"] for f in (32, 64, 128, 256, 512)
    ]
    norms = [m for m in seed_model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [keras_parameter_count(n) for n in norms] == [KERAS_TABLE[f"bn {f}"] for f in (32, 64, 128, 256, 512)]
    head = seed_model.head
    assert head.dense.in_features == 8192 and sum(p.numel() for p in head.dense.parameters()) == 4_194_816
    assert sum(p.numel() for p in head.classifier.parameters()) == 256_500


def test_keras_block_order_and_defaults():
    trunk = SeedCNNTrunk()
    kinds = [type(m).__name__ for m in trunk.layers]
    assert kinds == ["Conv2d", "ReLU", "BatchNorm2d", "MaxPool2d"] * 5  # Conv -> ReLU -> BN -> Pool
    for module in trunk.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.momentum == pytest.approx(0.01) and module.eps == pytest.approx(1e-3)
        if isinstance(module, nn.Conv2d):
            assert module.kernel_size == (3, 3) and module.padding == (1, 1)
            assert torch.count_nonzero(module.bias) == 0
            fan_in, fan_out = module.in_channels * 9, module.out_channels * 9
            assert module.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out))  # glorot_uniform bound


def test_output_shapes_and_embedding(seed_model):
    seed_model.eval()
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        feature_map = seed_model.features(images)
        embedding, logits = seed_model(images)
    assert feature_map.shape == (2, 512, 4, 4)
    assert embedding.shape == (2, 512) and logits.shape == (2, 500)
    assert seed_model.embedding_dim == 512 and seed_model.input_size_px == 128
    # the embedding is the vector that enters the last Dense layer
    assert torch.allclose(logits, seed_model.head.classifier(embedding), atol=1e-5)
    assert seed_model.mean.flatten().tolist() == [0, 0, 0] and seed_model.std.flatten().tolist() == [1, 1, 1]


def test_regularization_loss_is_l2_of_the_dense_kernel():
    model = build_model(ModelConfig(architecture="seed_cnn", dense_l2=1e-3), num_classes=3, image_size_px=32)
    with torch.no_grad():
        model.head.dense.weight.fill_(0.5)
    # 512 inputs (1 x 1 x 512 at 32 px) x 512 units, each 0.5^2: 1e-3 * 262144 * 0.25 = 65.536
    assert model.regularization_loss().item() == pytest.approx(65.536, rel=1e-6)


@pytest.mark.parametrize("dropout_before_batchnorm, order", [(True, ["Dropout", "BatchNorm1d"]),
                                                              (False, ["BatchNorm1d", "Dropout"])])
def test_both_dropout_orders_run(dropout_before_batchnorm, order):
    cfg = ModelConfig(architecture="seed_cnn", dropout_before_batchnorm=dropout_before_batchnorm)
    model = build_model(cfg, num_classes=4, image_size_px=64)
    assert [type(m).__name__ for m in model.head.regularise] == order
    model.train()
    embedding, logits = model(torch.rand(3, 3, 64, 64), torch.tensor([0, 1, 2]))
    assert embedding.shape == (3, 512) and logits.shape == (3, 4)
    logits.sum().backward()
    assert model.head.dense.weight.grad is not None
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64))[1].shape == (1, 4)


def test_keras_same_pooling_keeps_odd_edges():
    # MaxPool2D(padding="same") rounds up: 100 -> 50 -> 25 -> 13 -> 7 -> 4
    assert seed_cnn_spatial_px(100) == 4 and seed_cnn_spatial_px(128) == 4 and seed_cnn_spatial_px(16) == 1
    model = build_model(ModelConfig(architecture="seed_cnn"), num_classes=2, image_size_px=100).eval()
    assert model.head.dense.in_features == 512 * 4 * 4
    with torch.no_grad():
        assert model.features(torch.rand(1, 3, 100, 100)).shape == (1, 512, 4, 4)


def test_head_without_model():
    """In eval mode the embedding is BatchNorm(ReLU(Dense(flattened map))) and the logits are the last Dense of it."""
    head = SeedCNNHead(512, 7).eval()
    feature_map = torch.rand(2, 512, 1, 1)
    embedding, logits = head(feature_map)
    assert embedding.shape == (2, 512) and logits.shape == (2, 7)
    norm = head.regularise[1]  # Dropout -> BatchNorm, the seed's order
    hidden = torch.relu(feature_map.flatten(1) @ head.dense.weight.T + head.dense.bias)
    expected = (hidden - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias
    assert torch.allclose(embedding, expected, atol=1e-5)
    assert torch.allclose(logits, expected @ head.classifier.weight.T + head.classifier.bias, atol=1e-5)
