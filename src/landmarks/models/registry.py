"""The architecture registry: names -> builders ``(cfg, num_classes, image_size_px, class_counts) -> LandmarkModel``.

It only registers and looks up; the builders live in ``landmarks.models.architectures`` (imported by the package,
so the registry is full whenever ``landmarks.models`` is imported), the model in ``landmarks.models.landmark_model``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from landmarks.errors import ConfigError
from landmarks.models.landmark_model import LandmarkModel
from landmarks.models.spec import ModelConfig

Builder = Callable[[ModelConfig, int, int, "np.ndarray | None"], LandmarkModel]
ARCHITECTURES: dict[str, Builder] = {}
HEADS = ("softmax", "arcface")  # the head of a ``classifier``; ``glr`` always uses arcface, ``seed_cnn`` softmax


def register_architecture(name: str) -> Callable[[Builder], Builder]:
    """Add a builder ``(cfg, num_classes, image_size_px, class_counts) -> LandmarkModel`` under ``name``."""

    def add(builder: Builder) -> Builder:
        ARCHITECTURES[name] = builder
        return builder

    return add


def build_model(cfg: ModelConfig, num_classes: int, image_size_px: int,
                class_counts: np.ndarray | None = None) -> LandmarkModel:
    """The model an architecture name in ``ARCHITECTURES`` describes.

    ``class_counts`` (photos per class index) sets the per-class ArcFace margins; without it every class
    gets ``arcface_margin_min``.
    """
    if cfg.architecture not in ARCHITECTURES:
        raise ConfigError(f"Unknown architecture {cfg.architecture!r}; choose one of {', '.join(ARCHITECTURES)}.")
    return ARCHITECTURES[cfg.architecture](cfg, num_classes, image_size_px, class_counts)
