"""The model's self-description (cirtorch's ``meta``): what rebuilds it without its config, data or a network.

It is written as a run folder's ``model.json`` and into every checkpoint; ``upgrade_model_meta`` reads older formats.
"""

from __future__ import annotations

from typing import Any

from landmarks.models.landmark_model import LandmarkModel
from landmarks.models.registry import build_model
from landmarks.models.spec import ModelConfig

MODEL_FORMAT_VERSION = 2  # 2: model.json describes the head (kind, logit scale)
REQUIRED_KEYS = ("architecture", "num_classes", "input_size_px", "mean", "std")


def model_meta(model: LandmarkModel, cfg: ModelConfig) -> dict[str, Any]:
    """The description of ``model`` built from ``cfg``."""
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


def model_config_from_meta(meta: dict[str, Any]) -> ModelConfig:
    """The ModelConfig in a description, with pretrained = none (the weights come with the description)."""
    values = {k: v for k, v in meta.get("config", {}).items() if k in ModelConfig.model_fields}
    values.update(architecture=meta.get("architecture", values.get("architecture", "seed_cnn")), pretrained="none",
                  mean=tuple(meta["mean"]), std=tuple(meta["std"]))
    return ModelConfig(**values)


def upgrade_model_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """A description of any format as the current one; KeyError or TypeError when it is not a description."""
    for key in REQUIRED_KEYS:
        meta[key]  # noqa: B018 (presence check)
    if "head" not in meta:  # format 1 (before the head described itself): rebuild the model once to ask it
        model = build_model(model_config_from_meta(meta), 1, int(meta["input_size_px"]))
        meta["head"] = {"kind": model.head_kind, "logit_scale": model.logit_scale}
    return meta
