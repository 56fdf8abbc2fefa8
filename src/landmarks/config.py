"""Typed configuration: defaults in code, a preset YAML on top, ``key=value`` overrides on top of that."""

from __future__ import annotations

import dataclasses
import subprocess
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from landmarks.errors import ConfigError


@dataclass
class DataConfig:
    """What to read and how to split it."""

    image_size_px: int = 128
    top_classes: int | None = None  # keep the K most frequent landmarks (None: all)
    max_per_class: int | None = None  # at most N photos per landmark (None: all)
    val_fraction: float = 0.2
    test_fraction: float = 0.1
    cache_dir: str | None = None  # None: $LANDMARKS_CACHE or ~/.cache/landmarks


@dataclass
class AugmentConfig:
    """On-the-fly training augmentation (each part off when 0 / False)."""

    enabled: bool = True
    rotation_deg: float = 0.0  # random rotation in [-deg, +deg]
    horizontal_flip: bool = False
    vertical_flip: bool = False
    brightness: float = 0.0  # factor range 1 +- brightness
    contrast: float = 0.0  # factor range 1 +- contrast
    zoom: float = 0.0  # scale range 1 +- zoom
    translate: float = 0.0  # fraction of width/height
    crop_scale_min: float = 1.0  # < 1: random resized crop with area scale in [min, 1]
    fill: str = "reflect"  # what rotation/zoom/translation uncover: reflect (Keras' default) or black


@dataclass
class ModelConfig:
    """Architecture: seed_cnn (from scratch), classifier (backbone + dense head) or glr (GeM + ArcFace)."""

    architecture: str = "seed_cnn"
    backbone: str = ""  # any timm model name
    pretrained: str = "none"  # none | imagenet (offline sources only) | hub (explicit download) | /path/to/weights
    mean: tuple[float, float, float] | None = None  # None: from the backbone (seed_cnn: 0, i.e. inputs in [0, 1])
    std: tuple[float, float, float] | None = None
    pooling: str = "avg"  # avg | gem
    gem_p: float = 3.0
    embedding_dim: int = 512  # neck / dense layer width
    dropout: float = 0.5
    dense_l2: float = 1e-4  # seed_cnn: L2 on the 512-unit dense layer (Keras kernel_regularizer)
    dropout_before_batchnorm: bool = True  # seed_cnn: the seed's Dense -> Dropout -> BatchNorm order
    batchnorm_momentum: float = 0.99  # seed_cnn, Keras convention: moving = m * moving + (1 - m) * batch
    head: str = "softmax"  # softmax | arcface
    arcface_scale: float = 30.0
    arcface_subcenters: int = 3
    arcface_margin_min: float = 0.05  # radians; per-class margin = min + range * normalised(count^-1/4)
    arcface_margin_range: float = 0.45


@dataclass
class TrainConfig:
    """Optimisation."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 5e-4
    optimizer: str = "adam"  # adam | adamw | sgd
    weight_decay: float = 0.0
    scheduler: str = "none"  # none | cosine
    early_stopping_patience: int = 10  # epochs without improvement of the monitored value; 0: off
    monitor: str = "val_loss"  # val_loss | val_accuracy
    class_weighting: bool = False  # weight the loss by inverse class frequency
    oversample: bool = False  # draw batches with a class-balanced sampler
    freeze_backbone_epochs: int = 0  # glr/classifier: train only the head for this many epochs (-1: always)
    backbone_lr_factor: float = 1.0  # backbone lr = lr * factor once unfrozen
    cache_features: bool = True  # while the backbone is frozen, compute its feature maps once per view
    feature_views: int = 1  # augmented views of the training set cached while frozen (epoch e uses view e % views)
    label_smoothing: float = 0.0
    precise_bn_batches: int = 0  # >0: after each epoch recompute BatchNorm statistics on this many clean training batches
    max_minutes: float | None = None  # stop (keeping the best checkpoint) after this much training time
    workers: int = 2  # data-loading processes
    seed: int = 42


@dataclass
class RecognizeConfig:
    """How the Recognizer turns embeddings and logits into one confidence per landmark."""

    knn_k: int = 10  # neighbours read from the index
    knn_weight: float = 0.5  # fused score = knn_weight * knn + (1 - knn_weight) * classifier
    index_type: str = "auto"  # auto | flat | ivf | ivfpq
    top_k: int = 5
    non_landmark_penalty: float = 1.0  # how hard a close non-landmark reference photo pulls the confidence down
    min_confidence: float = 0.3  # below this a prediction is shown as "no known landmark" (GAP still ranks it)
    show_neighbours: int = 5  # nearest reference photos reported with each prediction
    tta_flip: bool = False  # average the embedding of the photo and its mirror image
    classifier_score: str = "auto"  # auto (cosine for ArcFace heads, else softmax) | cosine | softmax
    calibrate: bool = False  # after training, choose knn_weight by GAP on the validation split (vs training photos)


@dataclass
class Config:
    """The whole, resolved configuration of a run."""

    name: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    recognize: RecognizeConfig = field(default_factory=RecognizeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = ("data", "augment", "model", "train", "recognize")


def preset_names() -> list[str]:
    """Names of the presets shipped in ``landmarks/configs``."""
    folder = resources.files("landmarks") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Turn a YAML or command-line value into the annotated type (``int | None``, ``bool``, ``tuple[float, ...]``...)."""
    args = [a for a in get_args(annotation) if a is not type(None)] if get_origin(annotation) in (Union, UnionType) else []
    optional = bool(args) and type(None) in get_args(annotation)
    base = args[0] if args else annotation
    label = getattr(base, "__name__", str(base)) + (" or none" if optional else "")
    if base is str and value is not None:
        return str(value)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{key} may not be empty.")
    try:
        if get_origin(base) is tuple:
            items = value if isinstance(value, (list, tuple)) else str(value).strip("()[] ").split(",")
            return tuple(float(v) for v in items)
        if base is bool:
            if isinstance(value, bool):
                return value
            lowered = str(value).lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError(value)
        if base is int:
            number = float(value)
            if number != int(number):
                raise ValueError(value)
            return int(number)
        if base is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not a valid {label}.") from None


def _apply(config: Config, section: str, key: str, value: Any) -> None:
    if section not in SECTIONS:
        if section == "name" and key == "":
            config.name = str(value)
            return
        raise ConfigError(f"Unknown config section {section!r}; expected one of {', '.join(SECTIONS)}.")
    target = getattr(config, section)
    hints = get_type_hints(type(target))
    if key not in hints:
        raise ConfigError(f"Unknown config key {section}.{key}; valid keys: {', '.join(sorted(hints))}.")
    setattr(target, key, _coerce(value, hints[key], f"{section}.{key}"))


def _merge(config: Config, tree: dict[str, Any]) -> None:
    for section, values in tree.items():
        if section == "name":
            config.name = str(values)
            continue
        if section in ("git_commit",):
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"Config section {section!r} must be a mapping of keys to values.")
        for key, value in values.items():
            _apply(config, section, key, value)


def load_config(preset_or_path: str | None = "seed-cnn", overrides: list[str] | None = None) -> Config:
    """Defaults, then a preset name or YAML file, then ``section.key=value`` overrides."""
    config = Config()
    if preset_or_path:
        path = Path(preset_or_path)
        if path.suffix in (".yaml", ".yml"):
            if not path.is_file():
                raise ConfigError(f"Config file {path} does not exist.")
            text = path.read_text()
        else:
            if preset_or_path not in preset_names():
                raise ConfigError(
                    f"Unknown preset {preset_or_path!r}; choose one of {', '.join(preset_names())} or give a .yaml file."
                )
            text = (resources.files("landmarks") / "configs" / f"{preset_or_path}.yaml").read_text()
            config.name = preset_or_path
        try:
            tree = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"Config {preset_or_path} is not valid YAML: {error}.") from None
        _merge(config, tree)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} must look like section.key=value (e.g. train.epochs=5).")
        dotted, value = item.split("=", 1)
        section, _, key = dotted.strip().partition(".")
        _apply(config, section, key, yaml.safe_load(value) if value else None)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Reject values that cannot work, with one sentence each."""
    choices = {
        "augment.fill": (config.augment.fill, ("reflect", "black")),
        "model.architecture": (config.model.architecture, ("seed_cnn", "classifier", "glr")),
        "model.pooling": (config.model.pooling, ("avg", "gem")),
        "model.head": (config.model.head, ("softmax", "arcface")),
        "train.optimizer": (config.train.optimizer, ("adam", "adamw", "sgd")),
        "train.scheduler": (config.train.scheduler, ("none", "cosine")),
        "train.monitor": (config.train.monitor, ("val_loss", "val_accuracy")),
        "recognize.index_type": (config.recognize.index_type, ("auto", "flat", "ivf", "ivfpq")),
        "recognize.classifier_score": (config.recognize.classifier_score, ("auto", "cosine", "softmax")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}.")
    if config.model.architecture != "seed_cnn" and not config.model.backbone:
        raise ConfigError(f"model.backbone must name a timm model for architecture {config.model.architecture}.")
    if not 0 <= config.data.val_fraction + config.data.test_fraction < 1:
        raise ConfigError("data.val_fraction + data.test_fraction must be in [0, 1).")
    if config.data.image_size_px < 16:
        raise ConfigError("data.image_size_px must be at least 16.")


def git_commit() -> str | None:
    """The commit of the source tree, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def dump_config(config: Config, path: Path) -> None:
    """Write the resolved config, with the git commit, as YAML."""
    tree = config.to_dict()
    tree["model"]["mean"] = list(tree["model"]["mean"]) if tree["model"]["mean"] else None
    tree["model"]["std"] = list(tree["model"]["std"]) if tree["model"]["std"] else None
    tree["git_commit"] = git_commit()
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
