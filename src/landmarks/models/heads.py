"""Heads: the second seed's dense head, the Kaggle winners' neck and sub-center ArcFace with per-class margins."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class DenseHead(nn.Module):
    """Pooled features -> Linear -> ReLU -> Dropout -> Linear: the two dense layers of the ResNet152 seed.

    With ``embedding_dim == 0`` it is a linear probe: the pooled features are the embedding.
    """

    def __init__(self, in_features: int, embedding_dim: int, num_classes: int, dropout: float = 0.5):
        super().__init__()
        if embedding_dim:
            self.hidden = nn.Sequential(nn.Linear(in_features, embedding_dim), nn.ReLU(inplace=True))
            self.embedding_dim = embedding_dim
        else:
            self.hidden = nn.Identity()
            self.embedding_dim = in_features
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.embedding_dim, num_classes)

    def forward(self, pooled: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding after the ReLU, logits); labels are ignored (plain softmax classifier)."""
        embedding = self.hidden(pooled)
        return embedding, self.classifier(self.dropout(embedding))

    def logits(self, embedding: torch.Tensor) -> torch.Tensor:
        """Class scores from an embedding (no dropout)."""
        return self.classifier(embedding)

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}"


class GLRNeck(nn.Module):
    """Linear -> BatchNorm1d -> PReLU to the embedding, as the Google Landmark Recognition winners did."""

    def __init__(self, in_features: int, embedding_dim: int = 512):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_features, embedding_dim), nn.BatchNorm1d(embedding_dim), nn.PReLU())

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.layers(pooled)

    @property
    def embedding_dim(self) -> int:
        return self.layers[0].out_features


class WhitenedDescriptor(nn.Module):
    """The pooled backbone features as a second, instance-level descriptor: L2-normalised, PCA-whitened to ``dims``
    (fitted on the training photos after training), L2-normalised again and scaled by ``weight``.

    Appended to the neck's embedding it keeps what the ArcFace neck, trained on the known landmarks only, throws
    away: photos of an unknown building no longer land on the nearest known landmark's photos as easily (measured
    on the open-set proxy, see benchmarks/RESULTS.md). Until ``fit`` it outputs zeros, so it changes nothing.
    """

    def __init__(self, in_features: int, dims: int, weight: float = 1.0):
        super().__init__()
        self.dims, self.weight = int(dims), float(weight)
        self.register_buffer("center", torch.zeros(in_features))
        self.register_buffer("projection", torch.zeros(in_features, self.dims))

    @torch.no_grad()
    def fit(self, pooled: np.ndarray) -> int:
        """PCA whitening from pooled features (N, C); returns the components kept (at most N - 1 and C)."""
        x = torch.from_numpy(np.asarray(pooled, np.float32).reshape(-1, self.center.numel()))
        x = F.normalize(x.double(), dim=1)
        center = x.mean(0)
        _, singular, vt = torch.linalg.svd(x - center, full_matrices=False)
        kept = int(min(self.dims, len(x) - 1, (singular > 1e-8 * singular[0]).sum()))
        projection = torch.zeros_like(self.projection, dtype=torch.float64)
        projection[:, :kept] = vt[:kept].T / (singular[:kept] / math.sqrt(len(x)))
        self.center.copy_(center.float())
        self.projection.copy_(projection.float())
        return kept

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        whitened = (F.normalize(pooled, dim=1) - self.center) @ self.projection
        return self.weight * F.normalize(whitened, dim=1)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, weight={self.weight}"


def dynamic_margins(class_counts: np.ndarray, margin_min: float = 0.05, margin_range: float = 0.45) -> np.ndarray:
    """Per-class ArcFace margins in radians: m_c = min + range * normalised(count_c ** -1/4).

    Rare classes get the largest margin (min + range), the most frequent the smallest (min). Normalised is
    min-max scaling; when every class has the same count all margins are ``margin_min``. Classes with zero
    photos are treated as having one.
    """
    counts = np.maximum(np.asarray(class_counts, dtype=np.float64).reshape(-1), 1.0)
    if counts.size == 0:
        return np.zeros(0, np.float32)
    x = counts**-0.25
    spread = x.max() - x.min()
    normalised = (x - x.min()) / spread if spread > 0 else np.zeros_like(x)
    return (margin_min + margin_range * normalised).astype(np.float32)


class SubCenterArcFace(nn.Module):
    """Sub-center ArcFace (Deng et al. 2020) with a margin per class.

    cos = max over the k sub-centres of the cosine between the embedding and each class's sub-centre.
    With labels (training), the true class's logit is cos(theta + m_c); without, all logits are plain cosines.
    Logits are multiplied by ``scale``.
    """

    def __init__(self, embedding_dim: int, num_classes: int, subcenters: int = 3, scale: float = 30.0,
                 margins: np.ndarray | None = None):
        super().__init__()
        if margins is not None and len(margins) != num_classes:
            raise ValueError(f"{len(margins)} margins for {num_classes} classes.")
        self.num_classes, self.subcenters, self.scale = num_classes, subcenters, scale
        self.weight = nn.Parameter(torch.empty(num_classes * subcenters, embedding_dim))
        nn.init.uniform_(self.weight, -1.0 / math.sqrt(embedding_dim), 1.0 / math.sqrt(embedding_dim))
        margins = np.full(num_classes, 0.05, np.float32) if margins is None else np.asarray(margins, np.float32)
        self.register_buffer("margins", torch.from_numpy(margins.copy()))

    def cosine(self, embedding: torch.Tensor) -> torch.Tensor:
        """(N, C): the cosine to each class's closest sub-centre (weight rows are class-major: row c * k + j)."""
        cos = F.linear(F.normalize(embedding), F.normalize(self.weight))
        return cos.view(-1, self.num_classes, self.subcenters).amax(dim=2)

    def forward(self, embedding: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled logits (N, C); the margin is applied to the true class only, and only when labels are given."""
        cos = self.cosine(embedding)
        if labels is None:
            return self.scale * cos
        return self.scale * self.apply_margin(cos, labels)

    def apply_margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Replace the true class's cos(theta) by cos(theta + m) (cos - m sin(m) past pi - m, to stay monotonic)."""
        m = self.margins[labels].unsqueeze(1)
        cos = cos.float()
        # sin(theta) >= 0 for theta in [0, pi]; the clamp keeps the gradient finite at cos = +-1.
        sin = torch.sqrt((1.0 - cos.pow(2)).clamp(min=1e-12))
        phi = cos * torch.cos(m) - sin * torch.sin(m)  # cos(theta + m)
        # Past theta = pi - m, cos(theta + m) would rise again; the winners' fallback keeps it decreasing.
        phi = torch.where(cos > torch.cos(math.pi - m), phi, cos - torch.sin(math.pi - m) * m)
        one_hot = F.one_hot(labels, self.num_classes).to(cos.dtype)
        return one_hot * phi + (1.0 - one_hot) * cos
