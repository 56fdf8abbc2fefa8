"""The first seed's Keras CNN, layer for layer, with Keras' initialisers and BatchNorm defaults.

Keras table (128 px, 500 classes), in the seed's order::

    5 x [Conv2D 3x3 same, ReLU -> BatchNormalization -> MaxPool2D 2x2 same]   32, 64, 128, 256, 512 filters
    Flatten (8192) -> Dense 512 ReLU (L2 kernel_regularizer) -> Dropout 0.5 -> BatchNormalization -> Dense 500 softmax

Differences from Keras that do not change what the network computes: PyTorch flattens (C, H, W) where Keras
flattens (H, W, C) (a fixed permutation of the dense layer's inputs), and the softmax lives in the loss.
"""

from __future__ import annotations

import math

import torch
from torch import nn

FILTERS = (32, 64, 128, 256, 512)
KERAS_BATCHNORM_EPSILON = 1e-3


def _keras_init(module: nn.Module) -> None:
    """Keras defaults: glorot_uniform kernels (fan_in/fan_out include the 3x3 receptive field), zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


def _batchnorm(kind: type[nn.modules.batchnorm._BatchNorm], channels: int, keras_momentum: float) -> nn.Module:
    """A BatchNorm with Keras' epsilon; Keras momentum m (moving = m * moving + (1 - m) * batch) is 1 - m in PyTorch."""
    return kind(channels, eps=KERAS_BATCHNORM_EPSILON, momentum=1.0 - keras_momentum)


def seed_cnn_spatial_px(image_size_px: int) -> int:
    """Side of the trunk's output map: five 2x2 max-pools with Keras' "same" padding, i.e. ceil(size / 32)."""
    return math.ceil(image_size_px / 2 ** len(FILTERS))


class SeedCNNTrunk(nn.Module):
    """Five blocks of Conv 3x3 (same padding) -> ReLU -> BatchNorm -> MaxPool 2x2 (same), 32 to 512 filters."""

    def __init__(self, batchnorm_momentum: float = 0.99):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for filters in FILTERS:
            layers += [
                nn.Conv2d(channels, filters, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                _batchnorm(nn.BatchNorm2d, filters, batchnorm_momentum),
                nn.MaxPool2d(2, ceil_mode=True),  # Keras padding="same": an odd side keeps its last row/column
            ]
            channels = filters
        self.layers = nn.Sequential(*layers)
        self.out_channels = channels
        self.apply(_keras_init)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


class SeedCNNHead(nn.Module):
    """Flatten -> Dense 512 + ReLU (L2 in the model's regularization_loss) -> Dropout -> BatchNorm -> Dense to the classes.

    ``dropout_before_batchnorm=False`` gives Dense -> BatchNorm -> Dropout, so that BatchNorm sees the same
    statistics in training and inference. The embedding is the vector that enters the last Dense layer.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 512, dropout: float = 0.5,
                 dropout_before_batchnorm: bool = True, batchnorm_momentum: float = 0.99):
        super().__init__()
        self.dense = nn.Linear(in_features, hidden)
        norm = _batchnorm(nn.BatchNorm1d, hidden, batchnorm_momentum)
        drop = nn.Dropout(dropout)
        self.regularise = nn.Sequential(drop, norm) if dropout_before_batchnorm else nn.Sequential(norm, drop)
        self.classifier = nn.Linear(hidden, num_classes)
        self.embedding_dim = hidden
        self.apply(_keras_init)

    def forward(self, feature_map: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.regularise(torch.relu(self.dense(feature_map.flatten(1))))
        return embedding, self.classifier(embedding)

    def logits(self, embedding: torch.Tensor) -> torch.Tensor:
        """Class scores (before softmax) from an embedding."""
        return self.classifier(embedding)

    def l2_penalty(self) -> torch.Tensor:
        """sum(W^2) of the 512-unit dense kernel (Keras' kernel_regularizer=l2(c) adds c times this)."""
        return self.dense.weight.pow(2).sum()


def keras_parameter_count(model: nn.Module) -> int:
    """Parameters as Keras' model.summary() counts them: all weights plus BatchNorm moving mean and variance."""
    count = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            count += module.running_mean.numel() + module.running_var.numel()
    return count
