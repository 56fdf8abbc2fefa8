"""One factory for every architecture, and the self-describing model.safetensors + model.json pair of a run folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from landmarks.errors import ConfigError, DataError
from landmarks.models.backbones import create_backbone
from landmarks.models.heads import DenseHead, GLRNeck, SubCenterArcFace, WhitenedDescriptor, dynamic_margins
from landmarks.models.pooling import GeM, make_pooling
from landmarks.models.seed_cnn import SeedCNNHead, SeedCNNTrunk, seed_cnn_spatial_px
from landmarks.models.spec import ModelConfig
from landmarks.utils import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

MODEL_FORMAT_VERSION = 2  # 2: model.json describes the head (kind, logit scale)


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
        self.arcface = SubCenterArcFace(cfg.embedding_dim, num_classes, cfg.arcface_subcenters, cfg.arcface_scale, margins)
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

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        stage = getattr(self.head, "descriptor_stage", None)
        if stage is None:
            return self.head_from_features(self.features(images), labels)
        feature_map, (tapped,) = self.backbone.forward_intermediates((images - self.mean) / self.std, indices=[stage])
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


Builder = Callable[[ModelConfig, int, int, "np.ndarray | None"], LandmarkModel]
ARCHITECTURES: dict[str, Builder] = {}
HEADS = ("softmax", "arcface")  # the head of a ``classifier``; ``glr`` always uses arcface, ``seed_cnn`` softmax


def register_architecture(name: str) -> Callable[[Builder], Builder]:
    """Add a builder ``(cfg, num_classes, image_size_px, class_counts) -> LandmarkModel`` under ``name``."""

    def add(builder: Builder) -> Builder:
        ARCHITECTURES[name] = builder
        return builder

    return add


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
    backbone, channels, data_config = create_backbone(cfg.backbone, cfg.pretrained)
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


def build_model(cfg: ModelConfig, num_classes: int, image_size_px: int,
                class_counts: np.ndarray | None = None) -> LandmarkModel:
    """The model an architecture name in ``ARCHITECTURES`` describes.

    ``class_counts`` (photos per class index) sets the per-class ArcFace margins; without it every class
    gets ``arcface_margin_min``.
    """
    if cfg.architecture not in ARCHITECTURES:
        raise ConfigError(f"Unknown architecture {cfg.architecture!r}; choose one of {', '.join(ARCHITECTURES)}.")
    return ARCHITECTURES[cfg.architecture](cfg, num_classes, image_size_px, class_counts)


def model_meta(model: LandmarkModel, cfg: ModelConfig) -> dict[str, Any]:
    """What rebuilds the model without its config or data (cirtorch's ``meta``): in model.json and every checkpoint."""
    return {
        "format_version": MODEL_FORMAT_VERSION,
        "architecture": cfg.architecture,
        "config": cfg.model_dump(mode="json"),
        "head": {"kind": model.head_kind, "logit_scale": model.logit_scale},
        "num_classes": model.num_classes,
        "input_size_px": model.input_size_px,
        "mean": model.mean.flatten().tolist(),
        "std": model.std.flatten().tolist(),
        "embedding_dim": model.embedding_dim,
    }


def save_model(model: LandmarkModel, run_dir: Path, cfg: ModelConfig) -> None:
    """Write model.safetensors (the state dict, margins included) and model.json, each atomically:
    enough to rebuild the model anywhere without the config, the data or a network."""
    run_dir = Path(run_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(run_dir / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    atomic_write_text(run_dir / "model.json", json.dumps(model_meta(model, cfg), indent=2) + "\n")


def model_config_from_meta(meta: dict[str, Any]) -> ModelConfig:
    """The ModelConfig in model.json, with pretrained = none (the weights come from model.safetensors)."""
    values = {k: v for k, v in meta.get("config", {}).items() if k in ModelConfig.model_fields}
    values.update(architecture=meta.get("architecture", values.get("architecture", "seed_cnn")), pretrained="none",
                  mean=tuple(meta["mean"]), std=tuple(meta["std"]))
    return ModelConfig(**values)


def read_model_meta(run_dir: Path) -> dict[str, Any]:
    """The parsed model.json of a run folder."""
    path = Path(run_dir) / "model.json"
    if not path.is_file():
        raise DataError(f"{run_dir} is not a run folder: model.json is missing.")
    try:
        meta = json.loads(path.read_text())
        for key in ("architecture", "num_classes", "input_size_px", "mean", "std"):
            meta[key]  # noqa: B018 (presence check)
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{path} is not a valid model description ({type(error).__name__}: {error}).") from None
    if "head" not in meta:  # format 1 (before the head described itself): rebuild the model once to ask it
        meta["head"] = model_meta(build_model(model_config_from_meta(meta), 1, int(meta["input_size_px"])),
                                  ModelConfig())["head"]
    return meta


def load_model(run_dir: Path) -> LandmarkModel:
    """Rebuild a model from model.json alone (no pretrained weights, no network), load model.safetensors, eval mode."""
    run_dir = Path(run_dir)
    meta = read_model_meta(run_dir)
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise DataError(f"{run_dir} is not a complete run folder: model.safetensors is missing.")
    model = build_model(model_config_from_meta(meta), int(meta["num_classes"]), int(meta["input_size_px"]))
    try:
        model.load_state_dict(load_file(str(weights)))
    except Exception as error:  # noqa: BLE001 (safetensors header errors, key and shape mismatches)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{weights} does not match {run_dir / 'model.json'}: {first}") from None
    return model.eval()
