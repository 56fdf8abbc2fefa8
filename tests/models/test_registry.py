import json
from pathlib import Path

import numpy as np
import pytest
import torch

from landmarks.config import ModelConfig
from landmarks.errors import ConfigError, DataError
from landmarks.models.heads import dynamic_margins
from landmarks.models.registry import ArcFaceHead, LandmarkModel, PooledDenseHead, build_model, load_model, save_model

CONFIGS = {
    "seed_cnn": ModelConfig(architecture="seed_cnn", embedding_dim=32),
    "classifier": ModelConfig(architecture="classifier", backbone="test_efficientnet", embedding_dim=16),
    "classifier_arcface": ModelConfig(architecture="classifier", backbone="test_resnet", head="arcface",
                                      embedding_dim=16, arcface_subcenters=2),
    "glr": ModelConfig(architecture="glr", backbone="test_efficientnet", pooling="gem", embedding_dim=16),
    "glr_descriptor": ModelConfig(architecture="glr", backbone="test_efficientnet", pooling="gem", embedding_dim=16,
                                  descriptor_dims=4, descriptor_weight=2.0),
    "glr_stage_descriptor": ModelConfig(architecture="glr", backbone="test_efficientnet", pooling="gem",
                                        embedding_dim=16, descriptor_dims=4, descriptor_stage=2),
}
COUNTS = np.array([1, 16, 256, 3])


def _build(name: str) -> LandmarkModel:
    torch.manual_seed(0)
    return build_model(CONFIGS[name], num_classes=4, image_size_px=32, class_counts=COUNTS)


def _described(model: LandmarkModel, images: torch.Tensor) -> torch.Tensor:
    """What the model's descriptor whitens for these photos: the pooled final features, or those of its stage."""
    with torch.no_grad():
        if model.head.descriptor_stage is None:
            return model.head.pool(model.features(images))
        _, (tapped,) = model.backbone.forward_intermediates((images - model.mean) / model.std,
                                                            indices=[model.head.descriptor_stage])
        return model.head.descriptor_pool(tapped)


def _perturb(model: LandmarkModel) -> None:
    """Train one step so BatchNorm statistics, GeM's p and the weights move away from their initial values."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _, logits = model(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    model.eval()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_save_load_round_trip_gives_identical_outputs(tmp_path: Path, name: str):
    model = _build(name)
    _perturb(model)
    if getattr(model.head, "descriptor", None) is not None:
        model.head.descriptor.fit(_described(model, torch.rand(8, 3, 32, 32)).numpy())
    save_model(model, tmp_path, CONFIGS[name])
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob(".*tmp*"))
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["architecture"] == CONFIGS[name].architecture and meta["num_classes"] == 4
    assert meta["input_size_px"] == 32 and meta["embedding_dim"] == model.embedding_dim
    assert meta["config"]["backbone"] == CONFIGS[name].backbone and len(meta["mean"]) == 3

    loaded = load_model(tmp_path)
    assert not loaded.training and type(loaded.head) is type(model.head)
    images, labels = torch.rand(3, 3, 32, 32), torch.tensor([0, 2, 1])
    with torch.no_grad():
        for before, after in zip(model(images), loaded(images)):
            assert torch.equal(before, after)
        for before, after in zip(model(images, labels), loaded(images, labels)):
            assert torch.equal(before, after)
    assert torch.equal(model.mean, loaded.mean) and torch.equal(model.std, loaded.std)


def test_margins_come_from_class_counts_and_survive_a_round_trip(tmp_path: Path):
    model = _build("glr")
    expected = torch.from_numpy(dynamic_margins(COUNTS, 0.05, 0.45))
    assert torch.equal(model.head.arcface.margins, expected)
    save_model(model, tmp_path, CONFIGS["glr"])
    assert torch.equal(load_model(tmp_path).head.arcface.margins, expected)  # rebuilt without class_counts
    plain = build_model(CONFIGS["glr"], num_classes=4, image_size_px=32)
    assert plain.head.arcface.margins.tolist() == pytest.approx([0.05] * 4)


def test_heads_per_architecture():
    assert isinstance(_build("classifier").head, PooledDenseHead)
    arcface = _build("classifier_arcface").head
    assert isinstance(arcface, ArcFaceHead) and arcface.arcface.weight.shape == (4 * 2, 16)
    glr = _build("glr").head
    assert isinstance(glr, ArcFaceHead) and type(glr.pool).__name__ == "GeM" and glr.arcface.subcenters == 3


def test_model_methods_agree():
    model = _build("glr").eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        feature_map = model.features(images)
        assert feature_map.dim() == 4 and feature_map.shape[0] == 2
        embedding, logits = model.head_from_features(feature_map)
        assert torch.equal(embedding, model(images)[0]) and logits.shape == (2, 4)
        embedded = model.embed(images)
    assert embedded.shape == (2, 16) and torch.allclose(embedded.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(embedded, torch.nn.functional.normalize(embedding), atol=1e-6)
    assert torch.allclose(model.plain_logits(embedding), logits, atol=1e-5)
    assert model.regularization_loss().item() == 0.0
    backbone, head = set(map(id, model.backbone_parameters())), set(map(id, model.head_parameters()))
    assert not backbone & head and backbone | head == set(map(id, model.parameters()))


def test_the_descriptor_extends_the_embedding_and_leaves_the_logits_alone():
    plain, extended = _build("glr").eval(), _build("glr_descriptor").eval()
    assert extended.load_state_dict(plain.state_dict(), strict=False).missing_keys == [
        "head.descriptor.center", "head.descriptor.projection"]
    images = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        extended.head.descriptor.fit(extended.head.pool(extended.features(images)).numpy())
        (neck, logits), (embedding, extended_logits) = plain(images), extended(images)
    assert extended.embedding_dim == embedding.shape[1] == 16 + 4
    assert torch.allclose(logits, extended_logits) and torch.allclose(extended.plain_logits(embedding), logits, atol=1e-5)
    assert torch.allclose(embedding[:, :16], torch.nn.functional.normalize(neck), atol=1e-6)
    assert torch.allclose(embedding[:, 16:].norm(dim=1), torch.full((8,), 2.0), atol=1e-5)


def test_a_stage_descriptor_whitens_that_level_of_the_backbone():
    model = _build("glr_stage_descriptor").eval()
    assert model.head.descriptor.center.numel() == 32  # test_efficientnet's feature level 2
    images = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        before, _ = model(images)
        from_features, _ = model.head_from_features(model.features(images))  # training on cached feature maps
        model.head.descriptor.fit(_described(model, images).numpy())
        after, logits = model(images)
        final_level = _build("glr_descriptor").eval()
        final_level.head.descriptor.fit(_described(final_level, images).numpy())
    assert before.shape == after.shape == (8, 16 + 4) and not before[:, 16:].any() and not from_features[:, 16:].any()
    assert torch.allclose(after[:, :16], before[:, :16]) and torch.allclose(model.plain_logits(after), logits, atol=1e-5)
    assert torch.allclose(after[:, 16:].norm(dim=1), torch.ones(8), atol=1e-5)
    assert not torch.allclose(after[:, 16:], final_level(images)[0][:, 16:] / 2, atol=1e-3)  # not the final level's


def test_a_descriptor_stage_the_backbone_lacks_is_a_config_error():
    with pytest.raises(ConfigError, match="descriptor_stage=9: test_efficientnet has feature levels 0 to 4"):
        build_model(ModelConfig(architecture="glr", backbone="test_efficientnet", embedding_dim=8, descriptor_dims=2,
                                descriptor_stage=9), num_classes=2, image_size_px=32)


def test_mean_and_std_from_the_backbone_or_the_config():
    lite = ModelConfig(architecture="glr", backbone="tf_efficientnet_lite0", embedding_dim=8)
    model = build_model(lite, num_classes=2, image_size_px=32)
    assert model.mean.flatten().tolist() == [0.5] * 3 and model.std.flatten().tolist() == [0.5] * 3
    assert model.mean.shape == (1, 3, 1, 1)
    custom = ModelConfig(architecture="classifier", backbone="test_resnet", mean=(0.1, 0.2, 0.3), std=(1.0, 2.0, 3.0))
    model = build_model(custom, num_classes=2, image_size_px=32)
    assert model.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3]) and model.std.flatten()[2] == 3.0


def test_load_rebuilds_without_pretrained_weights(tmp_path: Path):
    cfg = ModelConfig(architecture="classifier", backbone="test_resnet", pretrained=str(tmp_path / "gone.safetensors"))
    model = build_model(ModelConfig(architecture="classifier", backbone="test_resnet"), 3, 32)
    save_model(model, tmp_path / "run", cfg)  # the weights file named in the config no longer exists
    loaded = load_model(tmp_path / "run")
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_missing_model_json_is_a_data_error(tmp_path: Path):
    with pytest.raises(DataError, match=r"is not a run folder: model\.json is missing"):
        load_model(tmp_path)
    model = _build("seed_cnn")
    save_model(model, tmp_path, CONFIGS["seed_cnn"])
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(DataError, match=r"model\.safetensors is missing"):
        load_model(tmp_path)


def test_weights_that_do_not_match_model_json_are_a_data_error(tmp_path: Path):
    save_model(_build("seed_cnn"), tmp_path, CONFIGS["seed_cnn"])
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["num_classes"] = 5
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="does not match"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(DataError, match="not a valid model description"):
        load_model(tmp_path)


def test_unknown_architecture_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="choose one of seed_cnn, classifier, glr"):
        build_model(ModelConfig(architecture="vit_arcface"), 3, 32)
