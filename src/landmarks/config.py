"""Typed configuration: defaults in code, a preset YAML on top, ``key=value`` overrides on top of that.

Each section is a pydantic model: values from YAML or the command line are coerced to the annotated type, and a
wrong key or value is refused with one sentence. Allowed names of architectures, heads and poolings are read from
the models' registries, so they are written once.
"""

from __future__ import annotations

import logging
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from landmarks.errors import ConfigError
from landmarks.models.pooling import POOLING
from landmarks.models.registry import ARCHITECTURES, HEADS
from landmarks.models.spec import ModelConfig, Section
from landmarks.utils import atomic_write_text

log = logging.getLogger(__name__)

IndexType = Literal["auto", "flat", "ivf", "ivfpq"]  # the one list of index types (landmarks.recognize.index)
# old name -> new name (the old one still read, with a warning)
RENAMED_KEYS = {"recognize": {"calibrate": "search_knn_weight"}, "train": {"backbone_lr_factor": "backbone_lr_scale"}}


class DataConfig(Section):
    """What to read and how to split it."""

    image_size_px: int = Field(128, ge=16)
    top_classes: int | None = None  # keep the K most frequent landmarks (None: all)
    max_per_class: int | None = None  # at most N photos per landmark (None: all)
    val_fraction: float = Field(0.2, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    cache_dir: str | None = None  # None: $LANDMARKS_CACHE or ~/.cache/landmarks
    # memmap: every photo decoded once into the image cache; none: decoded in the DataLoader workers every epoch
    # (tar shards in <data>/train/images_*.tar are streamed); auto: memmap when it fits cache_disk_share of the free disk
    cache: Literal["memmap", "none", "auto"] = "memmap"
    cache_disk_share: float = Field(0.5, gt=0, le=1)
    shuffle_buffer: int = Field(1000, ge=1)  # tar shards: photos a worker shuffles among
    gpu_decode: bool = False  # tar shards on CUDA: JPEGs decoded on the GPU (nvJPEG), not in the workers
    non_landmarks: str | None = None  # a folder of photos that show no landmark (references -1 and calibration)


class AugmentConfig(Section):
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
    fill: Literal["reflect", "black"] = "reflect"  # what rotation/zoom/translation uncover


class TrainConfig(Section):
    """Optimisation."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 5e-4
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = 0.0
    scheduler: Literal["none", "cosine"] = "none"
    early_stopping_patience: int = 10  # epochs without improvement of the monitored value; 0: off
    early_stopping_min_delta: float = Field(0.0, ge=0, lt=1)  # an improvement is a gain of more than this share of
    # the best value so far (0: any gain)
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    class_weighting: bool = False  # weight the loss by inverse class frequency
    oversample: bool = False  # draw batches with a class-balanced sampler
    freeze_backbone_epochs: int = 0  # glr/classifier: train only the head for this many epochs (-1: always)
    backbone_lr_scale: float = Field(1.0, gt=0)  # backbone lr = lr * scale once unfrozen (was backbone_lr_factor)
    cache_features: bool = True  # while the backbone is frozen, compute its feature maps once per view
    # where the frozen backbone's one pass runs: auto = ONNX Runtime on a CPU (4x eager PyTorch for glr), PyTorch on a GPU
    frozen_backbone_runtime: Literal["auto", "onnxruntime", "torch"] = "auto"
    feature_views: int = 1  # augmented views of the training set cached while frozen (epoch e uses view e % views)
    label_smoothing: float = 0.0
    precise_bn_batches: int = 0  # >0: after each epoch recompute BatchNorm statistics on this many clean training batches
    max_minutes: float | None = None  # stop (keeping the best checkpoint) after this much training time
    workers: int = 2  # data-loading processes
    seed: int = 42
    # speed and scale (GPUs): autocast precision (fp16 with a gradient scaler; ArcFace cosines and margins stay fp32)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = True  # photos and convolutions in NHWC (faster on CPUs and tensor cores)
    compile: bool = False  # torch.compile the model for the steps that run the backbone
    accumulate: int = Field(1, ge=1)  # optimiser step every N batches (gradients summed, loss divided by N)
    warmup_steps: int = Field(0, ge=0)  # lr rises linearly over the first N steps of each optimiser (start, unfreeze)
    ema_decay: float = Field(0.0, ge=0, lt=1)  # >0: validate and keep an exponential moving average of the weights
    checkpoint_minutes: float | None = Field(None, gt=0)  # also write last.pt this often within an epoch (exact resume)


class RecognizeConfig(Section):
    """How the Recognizer turns embeddings and logits into one confidence per landmark."""

    knn_k: int = 10  # neighbours read from the index
    knn_weight: float = Field(0.5, ge=0, le=1)  # fused score = knn_weight * knn + (1 - knn_weight) * classifier
    index_type: IndexType = "auto"
    top_k: int = 5
    non_landmark_penalty: float = 1.0  # how hard a close non-landmark reference photo pulls the confidence down
    min_confidence: float = 0.3  # below this a prediction is shown as "no known landmark" (GAP still ranks it)
    target_precision: float = Field(0.95, gt=0, le=1)  # calibration: min_confidence for this precision of known answers
    # how sure the calibration photos must make the run of that precision: the threshold is the lowest at which the
    # one-sided Wilson lower bound of their precision, at this level, reaches the target (0.5: the measured precision)
    precision_certainty: float = Field(0.9, ge=0.5, lt=1)
    calibration: Literal["platt", "isotonic", "gate", "none"] = "platt"  # confidence -> P(right) map fitted after training
    hidden_landmarks: Literal["model", "leave-out"] = "model"  # calibration's unknown landmarks: a model trained without
    # a quarter of them (ArcFace heads), or each held-out photo asked with its own landmark left out
    show_neighbours: int = 5  # nearest reference photos reported with each prediction
    tta_flip: bool = False  # average the embedding of the photo and its mirror image
    classifier_score: Literal["auto", "cosine", "softmax"] = "auto"  # auto: cosine for ArcFace heads, else softmax
    search_knn_weight: bool = False  # after training, choose knn_weight by GAP on the validation split (vs training photos)
    geo_radius_km: float = Field(50.0, ge=0)  # geo prior: landmarks farther than this from the photo lose confidence (0: off)


class Config(BaseModel):
    """The whole, resolved configuration of a run."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = "custom"
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    recognize: RecognizeConfig = Field(default_factory=RecognizeConfig)

    @field_validator("model")
    @classmethod
    def _known_model_parts(cls, model: ModelConfig) -> ModelConfig:
        for key, value, allowed in (("architecture", model.architecture, ARCHITECTURES),
                                    ("head", model.head, HEADS), ("pooling", model.pooling, POOLING)):
            if value not in allowed:
                raise ValueError(f"model.{key}={value!r} is not one of {', '.join(allowed)}")
        if model.architecture != "seed_cnn" and not model.backbone:
            raise ValueError(f"model.backbone must name a timm model for architecture {model.architecture}")
        return model

    @model_validator(mode="after")
    def _fractions(self) -> "Config":
        if self.data.val_fraction + self.data.test_fraction >= 1:
            raise ValueError("data.val_fraction + data.test_fraction must be in [0, 1)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


SECTIONS: dict[str, type[Section]] = {name: Config.model_fields[name].annotation for name in  # type: ignore[misc]
                                      ("data", "augment", "model", "train", "recognize")}


def preset_names() -> list[str]:
    """Names of the presets shipped in ``landmarks/configs``."""
    folder = resources.files("landmarks") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_tree(preset_or_path: str) -> tuple[dict[str, Any], str | None]:
    """The YAML mapping of a preset name or a .yaml file, and the preset's name (None for a file)."""
    path = Path(preset_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"Config file {path} does not exist.")
        text, name = path.read_text(), None
    elif preset_or_path in preset_names():
        text, name = (resources.files("landmarks") / "configs" / f"{preset_or_path}.yaml").read_text(), preset_or_path
    else:
        raise ConfigError(f"Unknown preset {preset_or_path!r}; choose one of {', '.join(preset_names())} or give a .yaml file.")
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"Config {preset_or_path} is not valid YAML: {error}.") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"Config {preset_or_path} must be a mapping of sections to keys.")
    return tree, name


def _set(tree: dict[str, Any], section: str, key: str, value: Any) -> None:
    """Put one value into the tree, refusing unknown sections and keys by name."""
    if section == "name" and not key:
        tree["name"] = str(value)
        return
    if key in RENAMED_KEYS.get(section, {}):
        log.warning("%s.%s is now %s.%s; please rename it", section, key, section, RENAMED_KEYS[section][key])
        key = RENAMED_KEYS[section][key]
    if section not in SECTIONS:
        raise ConfigError(f"Unknown config section {section!r}; expected one of {', '.join(SECTIONS)}.")
    fields = SECTIONS[section].model_fields
    if key not in fields:
        raise ConfigError(f"Unknown config key {section}.{key}; valid keys: {', '.join(sorted(fields))}.")
    tree.setdefault(section, {})[key] = value


def _message(error: ValidationError) -> str:
    """One sentence for the first problem pydantic found."""
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    value = first.get("input")
    kind = first["type"]
    if kind == "value_error":
        return first["msg"].removeprefix("Value error, ") + "."
    if kind == "literal_error":
        return f"{key}={value!r} is not one of {first['ctx']['expected'].replace(' or ', ', ').replace(chr(39), '')}."
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return f"{key}={value!r} is not a valid int."
    if kind in ("float_parsing", "float_type"):
        return f"{key}={value!r} is not a valid float."
    if kind in ("bool_parsing", "bool_type"):
        return f"{key}={value!r} is not a valid bool (true or false)."
    return f"{key}={value!r}: {first['msg'].lower()}."


def load_config(preset_or_path: str | None = "seed-cnn", overrides: list[str] | None = None) -> Config:
    """Defaults, then a preset name or YAML file, then ``section.key=value`` overrides."""
    tree: dict[str, Any] = {}
    if preset_or_path:
        loaded, name = _read_tree(preset_or_path)
        tree["name"] = str(loaded.pop("name", name or "custom"))
        loaded.pop("git_commit", None)
        for section, values in loaded.items():
            if not isinstance(values, dict):
                raise ConfigError(f"Config section {section!r} must be a mapping of keys to values.")
            for key, value in values.items():
                _set(tree, section, key, value)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} must look like section.key=value (e.g. train.epochs=5).")
        dotted, value = item.split("=", 1)
        section, _, key = dotted.strip().partition(".")
        _set(tree, section, key, yaml.safe_load(value) if value else None)
    try:
        return Config.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(_message(error)) from None


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
    """Write the resolved config, with the git commit, as YAML (atomically)."""
    tree = {**config.to_dict(), "git_commit": git_commit()}
    atomic_write_text(path, yaml.safe_dump(tree, sort_keys=False))


__all__ = ["AugmentConfig", "Config", "DataConfig", "IndexType", "ModelConfig", "RecognizeConfig", "TrainConfig",
           "dump_config", "load_config", "preset_names"]
