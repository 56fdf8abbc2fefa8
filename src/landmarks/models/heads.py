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
    """Sub-center ArcFace (Deng et al. 2020) with a margin per class, and Partial FC for large heads.

    cos = max over the k sub-centres of the cosine between the embedding and each class's sub-centre.
    With labels (training), the true class's logit is cos(theta + m_c); without, all logits are plain cosines.
    Logits are multiplied by ``scale``. Cosines and margins are computed in fp32, whatever autocast says.

    Partial FC (An et al. 2022): with ``sample_rate`` < 1, a training step (module in train mode, labels given)
    scores only the batch's own classes and a random share of the others, ``ceil(rate * C)`` classes in all (never
    fewer than the batch's), each with its k sub-centres. The logits then have one column per scored class, in
    ``sampled`` order (sorted class indices); ``targets_of`` maps the labels to those columns. At rate 1 every class
    is scored, as without sampling.
    """

    def __init__(self, embedding_dim: int, num_classes: int, subcenters: int = 3, scale: float = 30.0,
                 margins: np.ndarray | None = None, sample_rate: float = 1.0):
        super().__init__()
        if margins is not None and len(margins) != num_classes:
            raise ValueError(f"{len(margins)} margins for {num_classes} classes.")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}.")
        self.num_classes, self.subcenters, self.scale = num_classes, subcenters, scale
        self.sample_rate = float(sample_rate)
        self.weight = nn.Parameter(torch.empty(num_classes * subcenters, embedding_dim))
        nn.init.uniform_(self.weight, -1.0 / math.sqrt(embedding_dim), 1.0 / math.sqrt(embedding_dim))
        margins = np.full(num_classes, 0.05, np.float32) if margins is None else np.asarray(margins, np.float32)
        self.register_buffer("margins", torch.from_numpy(margins.copy()))
        self.sampled: torch.Tensor | None = None  # the classes the last training step scored (None: all of them)

    def cosine(self, embedding: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """(N, C): the cosine to each class's closest sub-centre (weight rows are class-major: row c * k + j); with
        ``classes``, (N, len(classes)) for those classes only. In fp32 (autocast off)."""
        weight = self.weight
        if classes is not None:
            weight = weight.view(self.num_classes, self.subcenters, -1)[classes].reshape(-1, weight.shape[1])
        with torch.autocast(embedding.device.type, enabled=False):
            cos = F.linear(F.normalize(embedding.float()), F.normalize(weight.float()))
        columns = self.num_classes if classes is None else int(classes.numel())  # not the batch: ONNX keeps it dynamic
        return cos.view(-1, columns, self.subcenters).amax(dim=2)

    def sample_classes(self, labels: torch.Tensor) -> torch.Tensor | None:
        """Partial FC's classes for a batch: its own, then others drawn at random up to ``ceil(rate * C)``, sorted;
        None when that is every class."""
        wanted = math.ceil(self.sample_rate * self.num_classes)
        if wanted >= self.num_classes:
            return None
        scores = torch.rand(self.num_classes, device=labels.device)
        scores[labels] = 2.0  # the batch's classes first (insightface's PartialFC_V2 draws them so)
        wanted = max(wanted, int(labels.unique().numel()))
        return torch.topk(scores, wanted, sorted=False).indices.sort().values

    def targets_of(self, labels: torch.Tensor) -> torch.Tensor:
        """The labels as columns of the last training step's logits (themselves when every class was scored)."""
        return labels if self.sampled is None else torch.searchsorted(self.sampled, labels)

    def forward(self, embedding: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled logits (N, C); the margin is applied to the true class only, and only when labels are given.
        A training step with ``sample_rate`` < 1 scores only ``sampled`` classes (see the class)."""
        self.sampled = None
        if labels is None:
            return self.scale * self.cosine(embedding)
        if self.training and self.sample_rate < 1:
            self.sampled = self.sample_classes(labels)
        cos = self.cosine(embedding, self.sampled)
        margins = self.margins if self.sampled is None else self.margins[self.sampled]
        return self.scale * self.apply_margin(cos, self.targets_of(labels), margins)

    def apply_margin(self, cos: torch.Tensor, labels: torch.Tensor, margins: torch.Tensor | None = None) -> torch.Tensor:
        """Replace the true class's cos(theta) by cos(theta + m) (cos - m sin(m) past pi - m, to stay monotonic).
        ``labels`` index the columns of ``cos``, ``margins`` (default: every class's) hold one margin per column."""
        m = (self.margins if margins is None else margins)[labels].unsqueeze(1).float()
        cos = cos.float()
        # sin(theta) >= 0 for theta in [0, pi]; the clamp keeps the gradient finite at cos = +-1.
        sin = torch.sqrt((1.0 - cos.pow(2)).clamp(min=1e-12))
        phi = cos * torch.cos(m) - sin * torch.sin(m)  # cos(theta + m)
        # Past theta = pi - m, cos(theta + m) would rise again; the winners' fallback keeps it decreasing.
        phi = torch.where(cos > torch.cos(math.pi - m), phi, cos - torch.sin(math.pi - m) * m)
        one_hot = F.one_hot(labels, cos.shape[1]).to(cos.dtype)
        return one_hot * phi + (1.0 - one_hot) * cos
