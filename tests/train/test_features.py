"""The frozen backbone's one pass: feature maps of photo and mirror image that give back what the model embeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landmarks.config import AugmentConfig, ModelConfig
from landmarks.models.registry import build_model
from landmarks.recognize.embed import TorchEmbedder
from landmarks.train.features import backbone_views, flips_only, pooled_features
from landmarks.train.pooled import PooledArcFace, capture_pooled, pooled_views


class _Cache:
    """What backbone_views reads of an ImageCache: ``images``, (N, S, S, 3) uint8."""

    def __init__(self, images: np.ndarray):
        self.images = images


def _model(stage: int | None):
    torch.manual_seed(0)
    return build_model(ModelConfig(architecture="glr", backbone="test_efficientnet", pooling="gem", embedding_dim=8,
                                   descriptor_dims=4, descriptor_stage=stage), num_classes=3, image_size_px=32).eval()


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
@pytest.mark.parametrize("stage", [None, 2])
def test_one_pass_gives_what_capture_pooled_records_while_the_model_embeds_photo_and_mirror(
        stage: int | None, runtime: str) -> None:
    model = _model(stage)
    with torch.no_grad():
        model.head.pool.p.fill_(2.5)  # a trained GeM p: the maps are pooled with it, not with the starting 3
    photos = np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    positions = np.array([0, 2, 3, 5, 6])
    with capture_pooled(model) as calls:
        expected_embeddings, expected_logits = TorchEmbedder(model, tta_flip=True)(photos[positions])
    (expected,) = pooled_views(calls, [len(positions)], tta_flip=True)
    views = backbone_views(model, _Cache(photos), positions, np.arange(len(positions)), batch_size=2, runtime=runtime)
    assert views.maps.shape[:2] == (5, 2) and views.maps.dtype == torch.float16
    assert (views.described is None) is (stage is None)
    pooled = pooled_features(model, views)
    assert pooled.shape == expected.shape
    np.testing.assert_allclose(pooled, expected, rtol=2e-3, atol=2e-4)  # float16 maps
    embeddings, logits = PooledArcFace.of_model(model)(pooled)
    np.testing.assert_allclose(embeddings, expected_embeddings, atol=2e-3)
    np.testing.assert_allclose(logits, expected_logits, atol=2e-2)  # logits are 30 x cosines
    np.testing.assert_array_equal(views.positions, positions)
    assert pooled_features(model, views, views=1).shape == (5, 1, expected.shape[-1])


def test_an_epoch_draws_photo_or_mirror_per_photo_and_validation_takes_the_photo() -> None:
    model = _model(None)
    photos = np.random.default_rng(1).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    views = backbone_views(model, _Cache(photos), np.arange(40), np.arange(40) % 3, batch_size=16)
    drawn = views.epoch(seed=5)
    picks = [next(v for v in range(2) if torch.equal(drawn[i][0], views.maps[i, v])) for i in range(40)]
    assert 0 < sum(picks) < 40  # both views drawn
    assert [int(drawn[i][1]) for i in range(40)] == [i % 3 for i in range(40)]
    again = views.epoch(seed=5)
    assert all(torch.equal(again[i][0], drawn[i][0]) for i in range(40))
    other = views.epoch(seed=6)
    assert any(not torch.equal(other[i][0], drawn[i][0]) for i in range(40))
    plain = views.epoch(seed=None)
    assert all(torch.equal(plain[i][0], views.maps[i, 0]) for i in range(40))


@pytest.mark.parametrize("augment, expected", [
    ({}, True), ({"horizontal_flip": True}, True), ({"enabled": False, "rotation_deg": 10}, True),
    ({"horizontal_flip": True, "rotation_deg": 10}, False), ({"crop_scale_min": 0.5}, False),
    ({"brightness": 0.2}, False), ({"vertical_flip": True}, False),
])
def test_flips_only(augment: dict, expected: bool) -> None:
    assert flips_only(AugmentConfig(**augment)) is expected


def test_auto_falls_back_to_pytorch_when_the_graph_cannot_be_written(monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    import landmarks.train.features as features

    def refuse(*args, **kwargs):
        raise RuntimeError("no such op")

    monkeypatch.setattr(features, "write_onnx", refuse)
    model = _model(2)
    photos = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        expected, expected_tapped = model.feature_maps(torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 255)
    run = features.backbone_runner(model, 32, "auto")
    assert "runs in PyTorch" in caplog.text
    feature_map, tapped = run(photos)
    torch.testing.assert_close(feature_map, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tapped, expected_tapped, atol=1e-4, rtol=1e-4)
    with pytest.raises(RuntimeError, match="no such op"):
        features.backbone_runner(model, 32, "onnxruntime")
