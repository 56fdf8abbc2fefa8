"""One factory for every architecture, and the self-describing model.safetensors + model.json pair."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from landmarks.config import ModelConfig
from landmarks.errors import ConfigError, DataError
from landmarks.models.backbones import create_backbone
from landmarks.models.heads import DenseHead, GLRNeck, SubCenterArcFace, dynamic_margins
from landmarks.models.pooling import POOLING
from landmarks.models.seed_cnn import FILTERS, SeedCNNHead, SeedCNNTrunk

ARCHITECTURES = ("seed_cnn", "classifier", "glr")


class ArcFaceHead(nn.Module):
    """Pooling -> neck -> sub-center ArcFace."""

    def __init__(self, pooling: nn.Module, in_features: int, cfg: ModelConfig, num_classes: int,
                 class_counts: np.ndarray | None):
        super().__init__()
        self.pool = pooling
        self.neck = GLRNeck(in_features, cfg.embedding_dim)
        margins = (
            dynamic_margins(class_counts, cfg.arcface_margin_min, cfg.arcface_margin_range)
            if class_counts is not None
            else None
        )
        if margins is None:
            margins = np.full(num_classes, cfg.arcface_margin_min, np.float32)
        self.arcface = SubCenterArcFace(cfg.embedding_dim, num_classes, cfg.arcface_subcenters, cfg.arcface_scale, margins)
        self.embedding_dim = cfg.embedding_dim

    def forward(self, feature_map: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.neck(self.pool(feature_map))
        return embedding, self.arcface(embedding, labels)

    def logits(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.arcface(embedding)


class PooledDenseHead(nn.Module):
    """Pooling -> the two dense layers of the ResNet152 seed (or a linear probe)."""

    def __init__(self, pooling: nn.Module, in_features: int, cfg: ModelConfig, num_classes: int):
        super().__init__()
        self.pool = pooling
        self.dense = DenseHead(in_features, cfg.embedding_dim, num_classes, cfg.dropout)
        self.embedding_dim = self.dense.embedding_dim

    def forward(self, feature_map: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dense(self.pool(feature_map))

    def logits(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.dense.logits(embedding)


class LandmarkModel(nn.Module):
    """Photos (float NCHW in [0, 1]) -> (embedding, logits). Normalisation with the model's mean/std is inside."""

    def __init__(self, backbone: nn.Module, head: nn.Module, num_classes: int, input_size_px: int,
                 mean: tuple[float, ...], std: tuple[float, ...], dense_l2: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_classes = num_classes
        self.input_size_px = input_size_px
        self.embedding_dim = head.embedding_dim
        self.dense_l2 = dense_l2
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone((images - self.mean) / self.std)

    def head_from_features(self, feature_map: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(feature_map, labels)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head_from_features(self.features(images), labels)

    def plain_logits(self, embedding: torch.Tensor) -> torch.Tensor:
        """Logits without any training margin, from an embedding."""
        return self.head.logits(embedding)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.forward(images)[0], dim=1)

    def regularization_loss(self) -> torch.Tensor:
        """Keras-style L2 on the seed CNN's 512-unit dense kernel (zero for other heads)."""
        if self.dense_l2 and isinstance(self.head, SeedCNNHead):
            return self.dense_l2 * self.head.dense.weight.pow(2).sum()
        return torch.zeros((), device=self.mean.device)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return self.head.parameters()


def build_model(cfg: ModelConfig, num_classes: int, image_size_px: int, class_counts: np.ndarray | None = None) -> LandmarkModel:
    """The model an architecture name describes (``seed_cnn``, ``classifier`` or ``glr``)."""
    if cfg.architecture == "seed_cnn":
        trunk = SeedCNNTrunk(cfg.batchnorm_momentum)
        spatial = image_size_px // 2 ** len(FILTERS)
        head = SeedCNNHead(trunk.out_channels * spatial * spatial, num_classes, cfg.embedding_dim, cfg.dropout,
                           cfg.dropout_before_batchnorm, cfg.batchnorm_momentum)
        return LandmarkModel(trunk, head, num_classes, image_size_px, cfg.mean or (0.0,) * 3, cfg.std or (1.0,) * 3,
                             cfg.dense_l2)
    if cfg.architecture not in ARCHITECTURES:
        raise ConfigError(f"Unknown architecture {cfg.architecture!r}; choose one of {', '.join(ARCHITECTURES)}.")
    backbone, channels, data_config = create_backbone(cfg.backbone, cfg.pretrained)
    pooling = POOLING[cfg.pooling](cfg.gem_p) if cfg.pooling == "gem" else POOLING[cfg.pooling]()
    if cfg.architecture == "glr" or cfg.head == "arcface":
        head: nn.Module = ArcFaceHead(pooling, channels, cfg, num_classes, class_counts)
    else:
        head = PooledDenseHead(pooling, channels, cfg, num_classes)
    mean = cfg.mean or tuple(data_config["mean"])
    std = cfg.std or tuple(data_config["std"])
    return LandmarkModel(backbone, head, num_classes, image_size_px, mean, std)


def save_model(model: LandmarkModel, run_dir: Path, cfg: ModelConfig, image_size_px: int) -> None:
    """model.safetensors (written atomically) and model.json, enough to rebuild the model anywhere."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = run_dir / f".model.safetensors.tmp-{os.getpid()}"
    save_file(state, str(tmp))
    os.replace(tmp, run_dir / "model.safetensors")
    meta = {
        "architecture": cfg.architecture,
        "config": dataclasses.asdict(cfg),
        "num_classes": model.num_classes,
        "input_size_px": image_size_px,
        "mean": model.mean.flatten().tolist(),
        "std": model.std.flatten().tolist(),
        "embedding_dim": model.embedding_dim,
    }
    (run_dir / "model.json").write_text(json.dumps(meta, indent=2) + "\n")


def model_config_from_meta(meta: dict) -> ModelConfig:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    cfg = ModelConfig(**{k: v for k, v in meta["config"].items() if k in known})
    cfg.pretrained = "none"  # the weights come from model.safetensors
    cfg.mean, cfg.std = tuple(meta["mean"]), tuple(meta["std"])
    return cfg


def load_model(run_dir: Path) -> LandmarkModel:
    """Rebuild a model from model.json and load model.safetensors, in eval mode, without any network."""
    run_dir = Path(run_dir)
    if not (run_dir / "model.json").exists():
        raise DataError(f"{run_dir} is not a run folder: model.json is missing.")
    if not (run_dir / "model.safetensors").exists():
        raise DataError(f"{run_dir} is not a complete run folder: model.safetensors is missing.")
    meta = json.loads((run_dir / "model.json").read_text())
    model = build_model(model_config_from_meta(meta), meta["num_classes"], meta["input_size_px"])
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    return model.eval()
