"""ViT backbones without a network: patch tokens on their grid, the class token, sizes, and weights from a file saved
at another size or from a pre-filled Hugging Face cache (their position embeddings resampled)."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.models import get_pretrained_cfg

from landmarks.cli import main
from landmarks.errors import ConfigError
from landmarks.models.backbones import ViTFeatureMap, create_backbone
from landmarks.models.registry import build_model
from landmarks.models.spec import ModelConfig

SMALL = {"depth": 2}  # timm kwargs (model.backbone_kwargs): two blocks keep every test a second or two


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("name, size, prefix", [
    ("vit_small_patch14_dinov2", 56, 1),
    ("vit_small_patch14_reg4_dinov2", 56, 5),  # class + 4 register tokens set aside
    ("vit_xsmall_patch16_clip_224", 64, 1),
    ("vit_base_patch16_siglip_224", 64, 0),  # no class token
    ("eva02_tiny_patch14_224", 56, 1),
    ("vit_small_patch16_dinov3", 64, 5),
])
def test_patch_tokens_are_laid_back_on_their_grid(name: str, size: int, prefix: int):
    backbone, channels, _ = create_backbone(name, "none", size, **SMALL)
    backbone.eval()
    assert isinstance(backbone, ViTFeatureMap) and backbone.num_prefix_tokens == prefix
    images = torch.rand(2, 3, size, size)
    with torch.no_grad():
        tokens = backbone.vit.forward_features(images)
        feature_map = backbone(images)
        final, (level,) = backbone.forward_intermediates(images, indices=[1])
    side = size // backbone.vit.patch_embed.patch_size[0]
    assert feature_map.shape == (2, channels, side, side) and level.shape == (2, channels, side, side)
    row, column = 1, 2  # token prefix + row * side + column is the patch at (row, column)
    assert torch.equal(feature_map[:, :, row, column], tokens[:, prefix + row * side + column])
    assert torch.allclose(final, feature_map, atol=1e-5)


def test_pooling_cls_is_the_class_token():
    backbone, channels, _ = create_backbone("vit_small_patch14_dinov2", "none", 56, class_token=True, **SMALL)
    backbone.eval()
    images = torch.rand(3, 3, 56, 56)
    with torch.no_grad():
        feature_map = backbone(images)
        assert feature_map.shape == (3, channels, 1, 1)
        assert torch.equal(feature_map.flatten(1), backbone.vit.forward_features(images)[:, 0])
    model = build_model(ModelConfig(architecture="classifier", backbone="vit_small_patch14_dinov2", pooling="cls",
                                    embedding_dim=0, backbone_kwargs=SMALL), 4, 56).eval()
    with torch.no_grad():
        embedding = model.embed(torch.rand(2, 3, 56, 56))
    assert embedding.shape == (2, channels)


def test_mean_std_and_interpolation_come_from_the_pretrained_config():
    _, _, dinov2 = create_backbone("vit_small_patch14_dinov2", "none", 56, **SMALL)
    _, _, clip = create_backbone("vit_xsmall_patch16_clip_224", "none", 64, **SMALL)
    assert dinov2["mean"] == pytest.approx((0.485, 0.456, 0.406)) and dinov2["input_size"] == (3, 56, 56)
    assert clip["mean"] == pytest.approx((0.48145466, 0.4578275, 0.40821073))  # OpenAI CLIP's
    assert dinov2["interpolation"] == clip["interpolation"] == "bicubic"
    model = build_model(ModelConfig(architecture="glr", backbone="vit_xsmall_patch16_clip_224", pooling="gem",
                                    descriptor_dims=8, descriptor_stage=1, backbone_kwargs=SMALL), 3, 64)
    assert model.std.flatten().tolist() == pytest.approx([0.26862954, 0.26130258, 0.27577711])
    assert model.head.descriptor.center.numel() == 256  # the descriptor level is block 1's tokens


@pytest.mark.parametrize("name, size, message", [
    ("vit_small_patch14_dinov2", 60, ("data.image_size_px=60 is not a multiple of vit_small_patch14_dinov2's 14-px "
                                      "patch: use 56 or 70.")),
    ("vit_xsmall_patch16_clip_224", 56, "is not a multiple of vit_xsmall_patch16_clip_224's 16-px patch: use 48 or 64."),
])
def test_a_size_that_is_not_a_multiple_of_the_patch_is_one_sentence(name: str, size: int, message: str):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        create_backbone(name, "none", size, **SMALL)


def test_pooling_cls_without_a_class_token_is_refused():
    with pytest.raises(ConfigError, match="has none: use gem or avg"):
        create_backbone("vit_base_patch16_siglip_224", "none", 64, class_token=True, **SMALL)
    with pytest.raises(ConfigError, match="test_resnet is not a ViT"):
        create_backbone("test_resnet", "none", 64, class_token=True)


def test_train_with_a_wrong_size_exits_2_with_one_sentence(tiny_gldv2: Path, tmp_path: Path, capsys):
    code = main(["-q", "train", "--data", str(tiny_gldv2), "--config", "foundation-knn", "--out", str(tmp_path / "run"),
                 "model.pretrained=none", "data.image_size_px=100", "model.backbone_kwargs={depth: 2}",
                 f"data.cache_dir={tmp_path / 'cache'}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [("landmarks: error: data.image_size_px=100 is not a multiple of "
                                         "vit_small_patch14_dinov2's 14-px patch: use 98 or 112.")]
    assert not (tmp_path / "run").exists()


def released_weights(name: str) -> dict[str, torch.Tensor]:
    """A state dict as released weights are: timm's layout, at the model's own default size (DINOv2: 518 px)."""
    torch.manual_seed(0)
    return timm.create_model(name, **SMALL).state_dict()


def assert_loaded(backbone: ViTFeatureMap, released: dict[str, torch.Tensor], grid: int, prefix: int = 1):
    own = backbone.vit.state_dict()
    expected = resample_abs_pos_embed(released["pos_embed"], [grid, grid], num_prefix_tokens=prefix)
    assert own["pos_embed"].shape == (1, prefix + grid * grid, released["pos_embed"].shape[-1])
    assert torch.allclose(own["pos_embed"], expected, atol=1e-6)
    assert torch.equal(own["pos_embed"][:, :prefix], released["pos_embed"][:, :prefix])  # the class token's, as is
    assert torch.equal(own["blocks.1.mlp.fc2.weight"], released["blocks.1.mlp.fc2.weight"])
    assert torch.equal(own["patch_embed.proj.weight"], released["patch_embed.proj.weight"])


def test_a_file_saved_at_518_px_loads_into_a_70_px_model_with_its_positions_resampled(tmp_path: Path, no_network):
    released = released_weights("vit_small_patch14_dinov2")
    assert released["pos_embed"].shape == (1, 1 + 37 * 37, 384)  # 518 / 14 = 37
    path = tmp_path / "vit_small_patch14_dinov2.safetensors"
    save_file(released, str(path))
    backbone, _, _ = create_backbone("vit_small_patch14_dinov2", str(path), 70, **SMALL)
    assert_loaded(backbone, released, grid=5)
    torch.save({"state_dict": released}, tmp_path / "w.pth")  # a .pth wrapper too
    backbone, _, _ = create_backbone("vit_small_patch14_dinov2", str(tmp_path / "w.pth"), 56, **SMALL)
    assert_loaded(backbone, released, grid=4)


def test_a_file_of_another_model_is_one_sentence(tmp_path: Path):
    path = tmp_path / "clip.safetensors"
    save_file(timm.create_model("vit_xsmall_patch16_clip_224", **SMALL).state_dict(), str(path))
    with pytest.raises(ConfigError, match=f"Weights file {path} does not fit vit_small_patch14_dinov2"):
        create_backbone("vit_small_patch14_dinov2", str(path), 56, **SMALL)


def fill_hf_cache(cache: Path, repo_id: str, state: dict[str, torch.Tensor]) -> Path:
    """A Hugging Face hub cache as huggingface_hub lays it out: blobs by hash, a snapshot linking to them, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    staging = cache / "model.safetensors"
    save_file(state, str(staging))
    blob = repo / "blobs" / hashlib.sha256(staging.read_bytes()).hexdigest()
    staging.rename(blob)
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot / "model.safetensors"


@pytest.fixture
def offline_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network) -> Path:
    """HF_HUB_CACHE in a tmp folder, HF_HUB_OFFLINE=1."""
    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return cache


def test_hub_weights_load_from_a_prefilled_cache_with_the_network_off(offline_hf_cache: Path):
    name = "vit_small_patch14_dinov2"
    repo_id = get_pretrained_cfg(name).hf_hub_id  # timm/vit_small_patch14_dinov2.lvd142m
    released = released_weights(name)
    fill_hf_cache(offline_hf_cache, repo_id, released)
    backbone, _, _ = create_backbone(name, "hub", 56, **SMALL)
    assert_loaded(backbone, released, grid=4)


def test_hub_weights_neither_cached_nor_downloadable_name_the_three_ways(offline_hf_cache: Path):
    with pytest.raises(ConfigError) as error:
        create_backbone("vit_small_patch14_dinov2", "hub", 56, **SMALL)
    message = str(error.value)
    assert "vit_small_patch14_dinov2" in message and len(message.splitlines()) == 1
    for way in ("model.pretrained=/path/to/weights.safetensors", "model.pretrained=hub", "model.pretrained=none"):
        assert way in message
