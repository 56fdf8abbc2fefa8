"""Pooled features captured while embedding give back what the model embeds."""

from __future__ import annotations

import numpy as np

from tests_helpers import unit


REFERENCES = np.stack([unit(1, 0, 0), unit(0.9, 0.1, 0), unit(0, 1, 0), unit(0.1, 0.9, 0), unit(0, 0, 1)])
IDS = ["a1", "a2", "b1", "b2", "none1"]
LABELS = np.array([10, 10, 20, 20, -1])


def test_captured_features_give_back_what_the_model_embeds_with_a_descriptor_of_its_own_stage():
    """capture_pooled records the neck's input then the descriptor's (its stage); PooledArcFace splits them again, so
    finish_run's recomputed index and the calibration models see what the model itself gives."""
    import torch

    from landmarks.config import ModelConfig
    from landmarks.train.pooled import PooledArcFace, capture_pooled, own_descriptor_features, pooled_views
    from landmarks.models.registry import build_model
    from landmarks.recognize.embed import TorchEmbedder

    torch.manual_seed(0)
    model = build_model(ModelConfig(architecture="glr", backbone="test_efficientnet", pooling="gem", embedding_dim=8,
                                    descriptor_dims=4, descriptor_stage=2), num_classes=3, image_size_px=32).eval()
    photos = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    embedder = TorchEmbedder(model, tta_flip=True)
    with capture_pooled(model) as calls:
        embedder(photos)
    (pooled,) = pooled_views(calls, [6], tta_flip=True)
    assert pooled.shape == (6, 2, model.backbone.num_features + 32)
    model.head.descriptor.fit(pooled[:, :, -32:].reshape(-1, 32))
    expected, expected_logits = embedder(photos)
    embeddings, logits = PooledArcFace.of_model(model)(pooled)
    np.testing.assert_allclose(embeddings, expected, atol=1e-5)
    np.testing.assert_allclose(logits, expected_logits, atol=1e-4)
    assert own_descriptor_features(model) == 32
