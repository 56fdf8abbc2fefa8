"""The first seed's Keras CNN, layer for layer."""

from __future__ import annotations

import torch
from torch import nn

FILTERS = (32, 64, 128, 256, 512)


def _glorot(module: nn.Module) -> None:
    """Keras defaults: glorot_uniform kernels, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


class SeedCNNTrunk(nn.Module):
    """Five blocks of Conv 3x3 (same padding) -> ReLU -> BatchNorm -> MaxPool 2x2, 32 to 512 filters."""

    def __init__(self, batchnorm_momentum: float = 0.99):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for filters in FILTERS:
            layers += [
                nn.Conv2d(channels, filters, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.BatchNorm2d(filters, eps=1e-3, momentum=1.0 - batchnorm_momentum),
                nn.MaxPool2d(2),
            ]
            channels = filters
        self.layers = nn.Sequential(*layers)
        self.out_channels = channels
        self.apply(_glorot)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


class SeedCNNHead(nn.Module):
    """Flatten -> Dense 512 (ReLU, L2) -> Dropout -> BatchNorm -> Dense to the classes (softmax in the loss).

    ``dropout_before_batchnorm=False`` swaps Dropout and BatchNorm (Dense -> BatchNorm -> Dropout), so the
    BatchNorm statistics are the same in training and inference.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 512, dropout: float = 0.5,
                 dropout_before_batchnorm: bool = True, batchnorm_momentum: float = 0.99):
        super().__init__()
        self.dense = nn.Linear(in_features, hidden)
        norm = nn.BatchNorm1d(hidden, eps=1e-3, momentum=1.0 - batchnorm_momentum)
        drop = nn.Dropout(dropout)
        self.regularise = nn.Sequential(drop, norm) if dropout_before_batchnorm else nn.Sequential(norm, drop)
        self.classifier = nn.Linear(hidden, num_classes)
        self.embedding_dim = hidden
        self.apply(_glorot)

    def forward(self, feature_map: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.regularise(torch.relu(self.dense(feature_map.flatten(1))))
        return embedding, self.classifier(embedding)

    def logits(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.classifier(embedding)


def keras_parameter_count(model: nn.Module) -> int:
    """Parameters as Keras counts them: trainable weights plus BatchNorm moving mean and variance."""
    count = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            count += module.running_mean.numel() + module.running_var.numel()
    return count
