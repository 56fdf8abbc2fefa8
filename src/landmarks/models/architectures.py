"""The registered architectures: the seed CNN, a timm backbone with a classifier head, and the glr recipe."""

from __future__ import annotations

import logging

import numpy as np
from torch import nn

from landmarks.errors import ConfigError
from landmarks.models.backbones import create_backbone
from landmarks.models.landmark_model import ArcFaceHead, LandmarkModel, PooledDenseHead
from landmarks.models.pooling import make_pooling
from landmarks.models.registry import HEADS, register_architecture
from landmarks.models.seed_cnn import SeedCNNHead, SeedCNNTrunk, seed_cnn_spatial_px
from landmarks.models.spec import ModelConfig

log = logging.getLogger(__name__)


@register_architecture("seed_cnn")
def _build_seed_cnn(cfg: ModelConfig, num_classes: int, image_size_px: int, class_counts: np.ndarray | None) -> LandmarkModel:
    if cfg.pretrained.strip().lower() not in ("", "none"):
        log.warning("model.pretrained=%s is ignored: the seed CNN always starts from scratch", cfg.pretrained)
    trunk = SeedCNNTrunk(cfg.batchnorm_momentum)
    spatial = seed_cnn_spatial_px(image_size_px)
    head = SeedCNNHead(trunk.out_channels * spatial * spatial, num_classes, cfg.embedding_dim, cfg.dropout,
                       cfg.dropout_before_batchnorm, cfg.batchnorm_momentum)
    mean = tuple(cfg.mean) if cfg.mean else (0.0, 0.0, 0.0)
    std = tuple(cfg.std) if cfg.std else (1.0, 1.0, 1.0)
    return LandmarkModel(trunk, head, num_classes, image_size_px, mean, std, cfg.dense_l2)


def _stage_channels(backbone: nn.Module, cfg: ModelConfig) -> int:
    """Channels of the backbone level ``model.descriptor_stage`` names (0 when unset)."""
    if cfg.descriptor_stage is None or not cfg.descriptor_dims:
        return 0
    if not hasattr(backbone, "forward_intermediates"):
        raise ConfigError(f"model.descriptor_stage: timm's {cfg.backbone} cannot return an intermediate level "
                          "(no forward_intermediates); set model.descriptor_stage=none.")
    channels = [info["num_chs"] for info in backbone.feature_info]
    if cfg.descriptor_stage >= len(channels):
        raise ConfigError(f"model.descriptor_stage={cfg.descriptor_stage}: {cfg.backbone} has feature levels "
                          f"0 to {len(channels) - 1}")
    return int(channels[cfg.descriptor_stage])


def _build_on_backbone(cfg: ModelConfig, num_classes: int, image_size_px: int, class_counts: np.ndarray | None,
                       arcface: bool) -> LandmarkModel:
    if not cfg.backbone:
        raise ConfigError(f"model.backbone must name a timm model for architecture {cfg.architecture}.")
    backbone, channels, data_config = create_backbone(cfg.backbone, cfg.pretrained, image_size_px,
                                                      class_token=cfg.pooling == "cls", **cfg.backbone_kwargs)
    pooling = make_pooling(cfg.pooling, cfg.gem_p)
    head: nn.Module = (ArcFaceHead(pooling, channels, cfg, num_classes, class_counts, _stage_channels(backbone, cfg))
                       if arcface
                       else PooledDenseHead(pooling, channels, cfg, num_classes))
    mean = tuple(cfg.mean) if cfg.mean else tuple(data_config["mean"])
    std = tuple(cfg.std) if cfg.std else tuple(data_config["std"])
    return LandmarkModel(backbone, head, num_classes, image_size_px, mean, std)


@register_architecture("classifier")
def _build_classifier(cfg: ModelConfig, num_classes: int, image_size_px: int, class_counts: np.ndarray | None) -> LandmarkModel:
    """A timm backbone, pooling and the head ``model.head`` names (softmax dense head or ArcFace)."""
    if cfg.head not in HEADS:
        raise ConfigError(f"model.head={cfg.head!r} is not one of {', '.join(HEADS)}.")
    return _build_on_backbone(cfg, num_classes, image_size_px, class_counts, arcface=cfg.head == "arcface")


@register_architecture("glr")
def _build_glr(cfg: ModelConfig, num_classes: int, image_size_px: int, class_counts: np.ndarray | None) -> LandmarkModel:
    """The competition recipe: timm backbone -> pooling -> neck -> sub-center ArcFace."""
    return _build_on_backbone(cfg, num_classes, image_size_px, class_counts, arcface=True)
