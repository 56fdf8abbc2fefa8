"""What a model is made of (``ModelConfig``), and the base of every config section."""

from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    """A config section: unknown keys refused, values checked on assignment too.

    From YAML or the command line, ``none``/``null`` clears an optional value and ``0.5,0.5,0.5`` fills a tuple.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = dict(values)
        for key, value in values.items():
            field = cls.model_fields.get(key)
            if field is None or not isinstance(value, str):
                continue
            annotation = field.annotation
            optional = get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation)
            if optional and value.strip().lower() in ("none", "null", ""):
                values[key] = None
            elif any(get_origin(a) is tuple for a in (annotation, *get_args(annotation))):
                values[key] = [part for part in value.strip("()[] ").split(",") if part.strip()]
        return values


class ModelConfig(Section):
    """Architecture: seed_cnn (from scratch), classifier (backbone + dense head) or glr (GeM + ArcFace)."""

    architecture: str = "seed_cnn"  # a name in landmarks.models.registry.ARCHITECTURES
    backbone: str = ""  # any timm model name: a CNN, or a ViT (DINOv2/v3, CLIP, SigLIP, EVA-02...) at data.image_size_px
    # keyword arguments for timm.create_model (e.g. {depth: 2, embed_dim: 96, num_heads: 2}: a small test ViT)
    backbone_kwargs: dict[str, int | float | bool | str] = Field(default_factory=dict)
    pretrained: str = "none"  # none | imagenet (offline sources only) | hub (explicit download) | /path/to/weights
    mean: tuple[float, float, float] | None = None  # None: from the backbone (seed_cnn: 0, i.e. inputs in [0, 1])
    std: tuple[float, float, float] | None = None
    pooling: str = "avg"  # a name in landmarks.models.pooling.POOLING (cls: a ViT's class token)
    gem_p: float = 3.0
    embedding_dim: int = 512  # neck / dense layer width
    dropout: float = 0.5
    dense_l2: float = 1e-4  # seed_cnn: L2 on the 512-unit dense layer (Keras kernel_regularizer)
    dropout_before_batchnorm: bool = True  # seed_cnn: the seed's Dense -> Dropout -> BatchNorm order
    batchnorm_momentum: float = 0.99  # seed_cnn, Keras convention: moving = m * moving + (1 - m) * batch
    head: str = "softmax"  # classifier: a name in landmarks.models.registry.HEADS (glr is always arcface)
    arcface_scale: float = 30.0
    arcface_subcenters: int = 3
    arcface_margin_min: float = 0.05  # radians; per-class margin = min + range * normalised(count^-1/4)
    arcface_margin_range: float = 0.45
    # Partial FC: a training step scores the batch's own classes and this share of all the classes (1: every class)
    arcface_sample_rate: float = Field(1.0, gt=0, le=1)
    descriptor_dims: int = Field(0, ge=0)  # glr/arcface: whitened pooled features appended to the embedding (0: off)
    descriptor_weight: float = Field(1.0, gt=0)  # their length next to the unit-length neck embedding
    # the backbone level (timm feature_info index) whose GeM-pooled output the descriptor whitens; none: the final
    # features the neck gets. glr: 3, Lite2's stride-16 blocks (instance detail the last layers abstract away)
    descriptor_stage: int | None = Field(None, ge=0)
