import math

import numpy as np
import pytest
import torch

from landmarks.models.heads import DenseHead, SubCenterArcFace, dynamic_margins
from landmarks.models.pooling import GeM


def test_gem_p1_is_mean_and_large_p_approaches_max():
    x = torch.rand(2, 3, 4, 4) + 0.1
    assert torch.allclose(GeM(p=1.0)(x), x.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(GeM(p=200.0)(x), x.amax(dim=(2, 3)), rtol=0.05)


def test_gem_closed_form_on_a_2x2_map():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    expected = ((1 + 8 + 27 + 64) / 4) ** (1 / 3)  # (mean of cubes) ** (1/3) = 25 ** (1/3) = 2.924
    assert GeM(p=3.0)(x).item() == pytest.approx(expected, rel=1e-5)
    assert GeM(p=3.0).p.requires_grad


def test_dynamic_margins_by_hand():
    # counts 1, 16, 256 -> count^-1/4 = 1, 1/2, 1/4 -> normalised (x - 1/4) / (3/4) = 1, 1/3, 0
    margins = dynamic_margins(np.array([1, 16, 256]), 0.05, 0.45)
    assert margins == pytest.approx([0.05 + 0.45, 0.05 + 0.45 / 3, 0.05], rel=1e-6)
    assert dynamic_margins(np.array([5, 5])) == pytest.approx([0.05, 0.05])


def _arcface(weights, margins, k=1, scale=10.0):
    head = SubCenterArcFace(2, len(margins), subcenters=k, scale=scale, margins=np.array(margins, np.float32))
    with torch.no_grad():
        head.weight.copy_(torch.tensor(weights, dtype=torch.float32))
    return head


def test_arcface_logits_by_hand():
    # class 0 along x, class 1 along y; the embedding at 60 degrees from x: cos = 1/2 to class 0, sqrt(3)/2 to class 1.
    head = _arcface([[1.0, 0.0], [0.0, 1.0]], [0.5, 0.2])
    embedding = torch.tensor([[math.cos(math.pi / 3), math.sin(math.pi / 3)]]) * 3.0  # length does not matter
    plain = head(embedding)
    assert plain[0].tolist() == pytest.approx([10 * 0.5, 10 * math.sqrt(3) / 2], rel=1e-5)
    # true class 0, margin 0.5 rad: cos(pi/3 + 0.5) on class 0 only
    with_margin = head(embedding, torch.tensor([0]))
    assert with_margin[0].tolist() == pytest.approx([10 * math.cos(math.pi / 3 + 0.5), 10 * math.sqrt(3) / 2], rel=1e-5)
    # true class 1, its own margin 0.2: angle 30 degrees -> cos(pi/6 + 0.2)
    with_margin = head(embedding, torch.tensor([1]))
    assert with_margin[0].tolist() == pytest.approx([10 * 0.5, 10 * math.cos(math.pi / 6 + 0.2)], rel=1e-5)


def test_subcenters_take_the_closest_centre():
    # class 0 has sub-centres along x and along -y; class 1 along y and along -x (k = 2, rows class-major)
    head = _arcface([[1.0, 0.0], [0.0, -1.0], [0.0, 1.0], [-1.0, 0.0]], [0.1, 0.1], k=2, scale=1.0)
    embedding = torch.tensor([[0.0, -1.0]])  # exactly the second sub-centre of class 0
    assert head(embedding)[0].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


def test_arcface_past_pi_minus_m_stays_monotonic():
    head = _arcface([[1.0, 0.0], [0.0, 1.0]], [0.5, 0.5], scale=1.0)
    embedding = torch.tensor([[-1.0, 1e-3]])  # ~180 degrees from class 0
    logit = head(embedding, torch.tensor([0]))[0, 0].item()
    cos = -1.0
    assert logit == pytest.approx(cos - math.sin(math.pi - 0.5) * 0.5, abs=1e-3)


def test_dense_head_shapes_and_linear_probe():
    head = DenseHead(8, 4, 3)
    embedding, logits = head(torch.rand(5, 8))
    assert embedding.shape == (5, 4) and logits.shape == (5, 3)
    probe = DenseHead(8, 0, 3)
    embedding, logits = probe(torch.rand(5, 8))
    assert embedding.shape == (5, 8) and probe.embedding_dim == 8
