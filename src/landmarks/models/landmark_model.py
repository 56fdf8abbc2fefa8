"""The model every architecture builds: photos -> (embedding, logits), and its two backbone heads."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from landmarks.models.heads import DenseHead, GLRNeck, SubCenterArcFace, WhitenedDescriptor, dynamic_margins
from landmarks.models.pooling import GeM
from landmarks.models.seed_cnn import SeedCNNHead
from landmarks.models.spec import ModelConfig


class ArcFaceHead(nn.Module):
    """Pooling -> Linear/BatchNorm/PReLU neck -> sub-center ArcFace with per-class margins.

    With ``model.descriptor_dims`` the embedding is [unit neck embedding, ``WhitenedDescriptor`` of the pooled
    features, or with ``model.descriptor_stage`` of that backbone level's GeM-pooled output (``tapped``,
    ``descriptor_features`` channels)]; the logits always come from the neck alone.
    """

    def __init__(self, pooling: nn.Module, in_features: int, cfg: ModelConfig, num_classes: int,
                 class_counts: np.ndarray | None, descriptor_features: int = 0):
        super().__init__()
        self.pool = pooling
        self.neck = GLRNeck(in_features, cfg.embedding_dim)
        if class_counts is None:
            margins = np.full(num_classes, cfg.arcface_margin_min, np.float32)
        else:
            if len(class_counts) != num_classes:
                raise ValueError(f"class_counts has {len(class_counts)} entries for {num_classes} classes.")
            margins = dynamic_margins(class_counts, cfg.arcface_margin_min, cfg.arcface_margin_range)
        self.arcface = SubCenterArcFace(cfg.embedding_dim, num_classes, cfg.arcface_subcenters, cfg.arcface_scale, margins,
                                       cfg.arcface_sample_rate)
        self.descriptor_stage = cfg.descriptor_stage if cfg.descriptor_dims else None
        self.descriptor_pool = GeM(trainable=False) if self.descriptor_stage is not None else None
        self.descriptor = (WhitenedDescriptor(descriptor_features or in_features, cfg.descriptor_dims,
                                              cfg.descriptor_weight) if cfg.descriptor_dims else None)
        self.neck_dim = cfg.embedding_dim
        self.embedding_dim = cfg.embedding_dim + cfg.descriptor_dims
        self.kind = "arcface"
        self.logit_scale: float | None = float(cfg.arcface_scale)  # logits are scale * cosine to the class centres

    def forward(self, feature_map: torch.Tensor, labels: torch.Tensor | None = None,
                tapped: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.pool(feature_map)
        neck = self.neck(pooled)
        if self.descriptor_stage is None:
            described = pooled
        else:  # no tapped level (training on cached feature maps): the descriptor, not yet fitted, is zeros anyway
            described = self.descriptor_pool(tapped) if tapped is not None else None
        return self.with_descriptor(neck, described), self.arcface(neck, labels)

    def with_descriptor(self, neck: torch.Tensor, described: torch.Tensor | None) -> torch.Tensor:
        """The embedding: the neck's output, followed by the descriptor of ``described`` (its pooled input; None:
        zeros) when the head has one."""
        if self.descriptor is None:
            return neck
        descriptor = (self.descriptor(described) if described is not None
                      else neck.new_zeros(len(neck), self.descriptor.dims))
        return torch.cat([F.normalize(neck, dim=1), descriptor], dim=1)

    def logits(self, embedding: torch.Tensor) -> torch.Tensor:
        """Scaled cosine logits, no margin (from the neck part of the embedding)."""
        return self.arcface(embedding[:, : self.neck_dim])


class PooledDenseHead(nn.Module):
    """Pooling -> the second seed's dense head (Linear -> ReLU -> Dropout -> Linear)."""

    def __init__(self, pooling: nn.Module, in_features: int, cfg: ModelConfig, num_classes: int):
        super().__init__()
        self.pool = pooling
        self.dense = DenseHead(in_features, cfg.embedding_dim, num_classes, cfg.dropout)
        self.embedding_dim = self.dense.embedding_dim
        self.kind = "softmax"
        self.logit_scale: float | None = None

    def forward(self, feature_map: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dense(self.pool(feature_map))

    def logits(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.dense.logits(embedding)


class LandmarkModel(nn.Module):
    """Photos (float32 NCHW in [0, 1]) -> (embedding (N, D), logits (N, num_classes)).

    Normalisation with the ``mean``/``std`` buffers (1, 3, 1, 1) is inside, so callers only scale pixels to [0, 1].
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, num_classes: int, input_size_px: int,
                 mean: tuple[float, ...], std: tuple[float, ...], dense_l2: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_classes = int(num_classes)
        self.input_size_px = int(input_size_px)
        self.embedding_dim = int(head.embedding_dim)
        self.dense_l2 = float(dense_l2)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def head_kind(self) -> str:
        """``arcface`` (logits are scaled cosines, trained with a margin) or ``softmax``."""
        return getattr(self.head, "kind", "softmax")

    @property
    def logit_scale(self) -> float | None:
        """ArcFace heads: logits / scale is the cosine to the class centres; None for softmax heads."""
        return getattr(self.head, "logit_scale", None)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise and run the backbone: the feature map (N, C, h, w)."""
        return self.backbone((images - self.mean) / self.std)

    def head_from_features(self, feature_map: torch.Tensor,
                           labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding, logits) from a feature map; ArcFace logits carry the true class's margin when labels are given."""
        return self.head(feature_map, labels)

    def feature_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The backbone's feature map and, when the head reads its descriptor from a level of its own
        (``model.descriptor_stage``), that level's output from the same pass (else None)."""
        stage = getattr(self.head, "descriptor_stage", None)
        if stage is None:
            return self.features(images), None
        feature_map, (tapped,) = self.backbone.forward_intermediates((images - self.mean) / self.std, indices=[stage])
        return feature_map, tapped

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        feature_map, tapped = self.feature_maps(images)
        if tapped is None:
            return self.head_from_features(feature_map, labels)
        return self.head(feature_map, labels, tapped=tapped)

    def plain_logits(self, embedding: torch.Tensor) -> torch.Tensor:
        """Logits without any training margin, from an embedding."""
        return self.head.logits(embedding)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings (N, D), without margin (call in eval mode)."""
        return F.normalize(self.forward(images)[0], dim=1)

    def regularization_loss(self) -> torch.Tensor:
        """Keras-style L2, dense_l2 * sum(W^2), on the seed CNN's 512-unit dense kernel; zero for other heads."""
        if self.dense_l2 and isinstance(self.head, SeedCNNHead):
            return self.dense_l2 * self.head.l2_penalty()
        return torch.zeros((), device=self.mean.device)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return self.head.parameters()
