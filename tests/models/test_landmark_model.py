"""The model: its methods agree, the descriptor extends the embedding."""

import torch

from tests_helpers import build_test_model, described_features


def test_model_methods_agree():
    model = build_test_model("glr").eval()
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
    plain, extended = build_test_model("glr").eval(), build_test_model("glr_descriptor").eval()
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
    model = build_test_model("glr_stage_descriptor").eval()
    assert model.head.descriptor.center.numel() == 32  # test_efficientnet's feature level 2
    images = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        before, _ = model(images)
        from_features, _ = model.head_from_features(model.features(images))  # training on cached feature maps
        model.head.descriptor.fit(described_features(model, images).numpy())
        after, logits = model(images)
        final_level = build_test_model("glr_descriptor").eval()
        final_level.head.descriptor.fit(described_features(final_level, images).numpy())
    assert before.shape == after.shape == (8, 16 + 4) and not before[:, 16:].any() and not from_features[:, 16:].any()
    assert torch.allclose(after[:, :16], before[:, :16]) and torch.allclose(model.plain_logits(after), logits, atol=1e-5)
    assert torch.allclose(after[:, 16:].norm(dim=1), torch.ones(8), atol=1e-5)
    assert not torch.allclose(after[:, 16:], final_level(images)[0][:, 16:] / 2, atol=1e-3)  # not the final level's
