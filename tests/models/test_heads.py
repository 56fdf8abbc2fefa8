import math

import torch.nn.functional as F

import numpy as np
import pytest
import torch

from landmarks.models.heads import DenseHead, GLRNeck, SubCenterArcFace, dynamic_margins


# -- dynamic margins ------------------------------------------------------------------------------
def test_dynamic_margins_by_hand():
    # counts 1, 16, 256 -> count^-1/4 = 1, 1/2, 1/4 -> normalised (x - 1/4) / (3/4) = 1, 1/3, 0
    margins = dynamic_margins(np.array([1, 16, 256]), 0.05, 0.45)
    assert margins == pytest.approx([0.05 + 0.45, 0.05 + 0.45 / 3, 0.05], rel=1e-6)
    assert margins.dtype == np.float32


def test_dynamic_margins_other_range_and_order():
    # counts 81, 1, 16 -> 1/3, 1, 1/2 -> normalised (x - 1/3) / (2/3) = 0, 1, 1/4
    margins = dynamic_margins(np.array([81, 1, 16]), margin_min=0.1, margin_range=0.3)
    assert margins == pytest.approx([0.1, 0.4, 0.1 + 0.3 / 4], rel=1e-6)


def test_dynamic_margins_equal_counts_and_empty_classes():
    assert dynamic_margins(np.array([5, 5, 5])) == pytest.approx([0.05, 0.05, 0.05])  # no spread: all the minimum
    # a class without photos counts as one photo, the rarest possible: it gets the largest margin
    assert dynamic_margins(np.array([0, 1, 16])) == pytest.approx([0.5, 0.5, 0.05])


# -- sub-center ArcFace ---------------------------------------------------------------------------
def _arcface(weights, margins, k=1, scale=10.0):
    head = SubCenterArcFace(2, len(margins), subcenters=k, scale=scale, margins=np.array(margins, np.float32))
    with torch.no_grad():
        head.weight.copy_(torch.tensor(weights, dtype=torch.float32))
    return head


def test_arcface_logits_by_hand_k1():
    # class 0 along x, class 1 along y; the embedding at 60 degrees from x: cos = 1/2 to class 0, sqrt(3)/2 to class 1.
    head = _arcface([[1.0, 0.0], [0.0, 1.0]], [0.5, 0.2])
    embedding = torch.tensor([[math.cos(math.pi / 3), math.sin(math.pi / 3)]]) * 3.0  # its length does not matter
    plain = head(embedding)
    assert plain[0].tolist() == pytest.approx([10 * 0.5, 10 * math.sqrt(3) / 2], rel=1e-5)
    # true class 0, margin 0.5 rad: cos(pi/3 + 0.5) = cos(1.5472) = 0.02359 on class 0 only
    with_margin = head(embedding, torch.tensor([0]))
    assert with_margin[0].tolist() == pytest.approx([10 * math.cos(math.pi / 3 + 0.5), 10 * math.sqrt(3) / 2], rel=1e-5)
    assert with_margin[0, 0].item() == pytest.approx(0.23592, abs=1e-4)
    # true class 1, its own margin 0.2: angle 30 degrees -> cos(pi/6 + 0.2) = cos(0.7236) = 0.74943
    with_margin = head(embedding, torch.tensor([1]))
    assert with_margin[0].tolist() == pytest.approx([10 * 0.5, 10 * math.cos(math.pi / 6 + 0.2)], rel=1e-5)
    assert with_margin[0, 1].item() == pytest.approx(7.4943, abs=1e-3)


def test_arcface_logits_by_hand_k2_subcentres():
    # k = 2, rows class-major: class 0 = {x axis, 45 degrees}, class 1 = {y axis, -x axis}.
    # The embedding at 30 degrees: to class 0, angles 30 and 15 degrees -> max cos = cos 15 = 0.96593;
    # to class 1, angles 60 and 150 degrees -> max cos = cos 60 = 0.5.
    r = math.sqrt(0.5)
    head = _arcface([[1.0, 0.0], [r, r], [0.0, 1.0], [-1.0, 0.0]], [0.3, 0.4], k=2, scale=2.0)
    embedding = torch.tensor([[math.cos(math.pi / 6), math.sin(math.pi / 6)]])
    assert head(embedding)[0].tolist() == pytest.approx([2 * math.cos(math.pi / 12), 2 * 0.5], rel=1e-5)
    # label 0: the closest sub-centre's angle (15 degrees) plus 0.3 rad -> cos(0.2618 + 0.3) = 0.84655; class 1 unchanged
    logits = head(embedding, torch.tensor([0]))
    assert logits[0].tolist() == pytest.approx([2 * math.cos(math.pi / 12 + 0.3), 1.0], rel=1e-5)
    # label 1: 60 degrees + 0.4 rad -> cos(1.0472 + 0.4) = 0.12327; class 0 unchanged
    logits = head(embedding, torch.tensor([1]))
    assert logits[0].tolist() == pytest.approx([2 * math.cos(math.pi / 12), 2 * math.cos(math.pi / 3 + 0.4)], rel=1e-5)


def test_subcenters_take_the_closest_centre():
    # class 0 has sub-centres along x and along -y; class 1 along y and along -x
    head = _arcface([[1.0, 0.0], [0.0, -1.0], [0.0, 1.0], [-1.0, 0.0]], [0.1, 0.1], k=2, scale=1.0)
    embedding = torch.tensor([[0.0, -1.0]])  # exactly the second sub-centre of class 0; 90 and 90 degrees to class 1
    assert head(embedding)[0].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


def test_arcface_past_pi_minus_m_stays_monotonic():
    head = _arcface([[1.0, 0.0], [0.0, 1.0]], [0.5, 0.5], scale=1.0)
    embedding = torch.tensor([[-1.0, 1e-3]])  # ~180 degrees from class 0: theta + m > pi
    logit = head(embedding, torch.tensor([0]))[0, 0].item()
    assert logit == pytest.approx(-1.0 - math.sin(math.pi - 0.5) * 0.5, abs=1e-3)  # cos - sin(pi - m) * m


def test_arcface_gradient_is_finite_at_cos_one():
    head = _arcface([[1.0, 0.0], [0.0, 1.0]], [0.3, 0.3], scale=30.0)
    embedding = torch.tensor([[1.0, 0.0]], requires_grad=True)  # exactly on class 0: sin(theta) = 0
    head(embedding, torch.tensor([0])).sum().backward()
    assert torch.isfinite(embedding.grad).all() and torch.isfinite(head.weight.grad).all()


def test_arcface_batch_margins_per_row_and_buffer():
    head = _arcface([[1.0, 0.0], [0.0, 1.0]], [0.5, 0.2], scale=1.0)
    embeddings = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # 45 degrees to both classes
    logits = head(embeddings, torch.tensor([0, 1]))
    c = math.cos(math.pi / 4)
    expected = torch.tensor([[math.cos(math.pi / 4 + 0.5), c], [c, math.cos(math.pi / 4 + 0.2)]])
    assert torch.allclose(logits, expected, atol=1e-6)
    assert torch.equal(head.state_dict()["margins"], torch.tensor([0.5, 0.2]))  # saved with the weights
    with pytest.raises(ValueError):
        SubCenterArcFace(2, 3, margins=np.array([0.1, 0.2]))


# -- dense head and neck --------------------------------------------------------------------------
def test_dense_head_layers_and_outputs():
    torch.manual_seed(0)
    head = DenseHead(8, 4, 3, dropout=0.5).eval()
    pooled = torch.randn(5, 8)
    embedding, logits = head(pooled)
    assert embedding.shape == (5, 4) and logits.shape == (5, 3)
    hidden = head.hidden[0]
    expected = torch.relu(pooled @ hidden.weight.T + hidden.bias)  # the embedding is taken after the ReLU
    assert torch.allclose(embedding, expected, atol=1e-6)
    assert torch.allclose(logits, head.classifier(expected), atol=1e-6)
    assert head.dropout.p == 0.5


def test_dense_head_dropout_only_in_training():
    head = DenseHead(8, 64, 3, dropout=0.5).train()
    torch.manual_seed(0)
    pooled = torch.rand(4, 8)
    embedding, logits = head(pooled)
    # in training the classifier sees the dropped-out embedding, so logits differ from classifier(embedding)
    assert not torch.allclose(logits, head.logits(embedding))


def test_dense_head_linear_probe():
    probe = DenseHead(8, 0, 3)
    embedding, logits = probe(torch.rand(5, 8))
    assert embedding.shape == (5, 8) and probe.embedding_dim == 8 and logits.shape == (5, 3)


def test_glr_neck_is_linear_batchnorm_prelu():
    neck = GLRNeck(16, 6)
    assert [type(m).__name__ for m in neck.layers] == ["Linear", "BatchNorm1d", "PReLU"]
    assert neck(torch.rand(4, 16)).shape == (4, 6) and neck.embedding_dim == 6


# -- the whitened descriptor ------------------------------------------------------------------------
def test_descriptor_outputs_zeros_until_fitted_and_then_whitened_vectors_of_its_weight():
    from landmarks.models.heads import WhitenedDescriptor

    descriptor = WhitenedDescriptor(in_features=6, dims=3, weight=2.0)
    pooled = torch.rand(20, 6, generator=torch.Generator().manual_seed(0)) + 0.1
    assert torch.equal(descriptor(pooled), torch.zeros(20, 3))
    assert descriptor.fit(pooled.numpy()) == 3
    out = descriptor(pooled)
    assert torch.allclose(out.norm(dim=1), torch.full((20,), 2.0), atol=1e-5)
    # whitening: the training features' projections have unit variance and no correlation
    projected = (F.normalize(pooled, dim=1) - descriptor.center) @ descriptor.projection
    assert torch.allclose(projected.T @ projected / 20, torch.eye(3), atol=1e-4)


def test_descriptor_keeps_at_most_one_component_fewer_than_photos():
    from landmarks.models.heads import WhitenedDescriptor

    descriptor = WhitenedDescriptor(in_features=8, dims=6, weight=1.0)
    pooled = np.random.default_rng(1).random((4, 8)).astype(np.float32)
    assert descriptor.fit(pooled) == 3
    assert torch.equal(descriptor.projection[:, 3:], torch.zeros(8, 3))
    assert torch.isfinite(descriptor(torch.from_numpy(pooled))).all()


# -- Partial FC ------------------------------------------------------------------------------------
def _heads(rate: float, classes: int = 20, subcenters: int = 3) -> tuple[SubCenterArcFace, SubCenterArcFace]:
    torch.manual_seed(0)
    margins = dynamic_margins(np.arange(1, classes + 1))
    full = SubCenterArcFace(8, classes, subcenters, 30.0, margins)
    partial = SubCenterArcFace(8, classes, subcenters, 30.0, margins, sample_rate=rate)
    partial.load_state_dict(full.state_dict())
    return full.train(), partial.train()


def test_partial_fc_at_rate_one_equals_the_full_head():
    full, partial = _heads(1.0)
    embedding, labels = torch.randn(6, 8), torch.tensor([0, 3, 3, 7, 19, 11])
    expected = F.cross_entropy(full(embedding, labels), labels)
    got = F.cross_entropy(partial(embedding, labels), partial.targets_of(labels))
    assert partial.sampled is None
    assert torch.equal(got, expected)


def test_partial_fc_scores_the_batch_classes_and_a_share_of_the_others():
    _, partial = _heads(0.25)
    labels = torch.tensor([0, 3, 3, 7, 19, 11])
    logits = partial(torch.randn(6, 8), labels)
    sampled = partial.sampled
    assert logits.shape == (6, 5) == (6, len(sampled))  # ceil(0.25 * 20) = 5 classes, the batch's 5 among them
    assert set(sampled.tolist()) == {0, 3, 7, 11, 19} and torch.equal(sampled, sampled.sort().values)
    assert torch.equal(sampled[partial.targets_of(labels)], labels)
    # never fewer classes than the batch has: 5 of them at a rate that would score 2
    _, small = _heads(0.1)
    assert small(torch.randn(6, 8), labels).shape == (6, 5)


def test_partial_fc_loss_is_the_full_loss_over_the_sampled_columns_and_only_their_centres_learn():
    full, partial = _heads(0.5)
    embedding, labels = torch.randn(6, 8), torch.tensor([0, 3, 3, 7, 19, 11])
    loss = F.cross_entropy(partial(embedding, labels), partial.targets_of(labels))
    sampled = partial.sampled
    assert len(sampled) == 10
    by_hand = F.cross_entropy(full(embedding, labels)[:, sampled], torch.searchsorted(sampled, labels))
    assert torch.allclose(loss, by_hand, atol=1e-6)
    loss.backward()
    touched = partial.weight.grad.view(20, 3, 8).abs().sum(dim=(1, 2)) > 0
    assert touched.nonzero().flatten().tolist() == sampled.tolist()


def test_partial_fc_samples_only_in_training_with_labels():
    _, partial = _heads(0.25)
    embedding, labels = torch.randn(4, 8), torch.tensor([1, 2, 3, 4])
    assert partial(embedding).shape == (4, 20)
    partial.eval()
    assert partial(embedding, labels).shape == (4, 20) and partial.sampled is None


def test_arcface_cosine_and_margin_stay_fp32_under_autocast():
    full, _ = _heads(1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = full(torch.randn(4, 8), torch.tensor([1, 2, 3, 4]))
    assert logits.dtype == torch.float32
