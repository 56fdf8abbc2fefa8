"""Global pooling of a feature map (N, C, h, w) -> (N, C): average, generalized-mean (GeM) and a ViT's class token."""

from __future__ import annotations

import torch
from torch import nn

from landmarks.errors import ConfigError


class GeM(nn.Module):
    """Generalized mean pooling (Radenovic et al.): (mean over h, w of x^p)^(1/p), x clamped at eps, p trainable.

    p = 1 is average pooling; p -> infinity approaches max pooling.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, trainable: bool = True):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=trainable)
        self.eps = eps

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return feature_map.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={float(self.p):.3f}, eps={self.eps}"


class AvgPool(nn.Module):
    """Global average pooling to (N, C)."""

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return feature_map.mean(dim=(2, 3))


class ClassToken(nn.Module):
    """A ViT's class token: with ``model.pooling=cls`` its backbone's feature map is that token, (N, C, 1, 1)
    (``landmarks.models.backbones.ViTFeatureMap``), so pooling only flattens it."""

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return feature_map.flatten(1)


POOLING: dict[str, type[nn.Module]] = {"avg": AvgPool, "gem": GeM, "cls": ClassToken}


def make_pooling(name: str, gem_p: float = 3.0) -> nn.Module:
    """The pooling layer a config names (``avg``, ``gem`` starting at p = gem_p, or ``cls``)."""
    if name not in POOLING:
        raise ConfigError(f"model.pooling={name!r} is not one of {', '.join(POOLING)}.")
    return GeM(gem_p) if name == "gem" else POOLING[name]()
