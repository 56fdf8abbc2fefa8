import pytest
import torch

from landmarks.errors import ConfigError
from landmarks.models.pooling import POOLING, AvgPool, GeM, make_pooling


def test_gem_p1_is_mean_pooling():
    x = torch.rand(2, 3, 4, 4) + 0.1
    assert torch.allclose(GeM(p=1.0)(x), x.mean(dim=(2, 3)), atol=1e-6)


def test_gem_large_p_approaches_max_pooling():
    x = torch.rand(2, 3, 4, 4) + 0.1
    # (mean of x^p)^(1/p) lies between max * (1/16)^(1/p) and max: for p = 200, within 1.4% of the max
    pooled = GeM(p=200.0)(x.double())
    assert torch.all(pooled <= x.double().amax(dim=(2, 3)) + 1e-9)
    assert torch.allclose(pooled, x.double().amax(dim=(2, 3)), rtol=0.014)


def test_gem_closed_form_on_a_2x2_map():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    expected = ((1 + 8 + 27 + 64) / 4) ** (1 / 3)  # (mean of cubes) ** (1/3) = 25 ** (1/3) = 2.9240
    assert GeM(p=3.0)(x).item() == pytest.approx(expected, rel=1e-5)
    assert GeM(p=3.0)(x).item() == pytest.approx(2.92401773, rel=1e-6)


def test_gem_clamps_negatives_to_eps_and_p_is_trainable():
    x = torch.tensor([-5.0, 0.0, 0.0, 8.0]).view(1, 1, 2, 2)
    # negatives and zeros become 1e-6: (8^3 / 4 + tiny) ** (1/3) = 128 ** (1/3) = 5.0397
    assert GeM(p=3.0)(x).item() == pytest.approx(128 ** (1 / 3), rel=1e-5)
    gem = GeM(p=3.0)
    gem(torch.rand(1, 2, 3, 3) + 0.1).sum().backward()
    assert gem.p.requires_grad and gem.p.grad is not None and gem.p.grad.item() != 0


def test_pooling_registry_shapes():
    x = torch.rand(2, 5, 3, 4)
    assert set(POOLING) == {"avg", "gem", "cls"}
    assert POOLING["gem"] is GeM
    assert torch.allclose(AvgPool()(x), x.mean(dim=(2, 3)))
    gem = make_pooling("gem", 2.5)
    assert isinstance(gem, GeM) and gem.p.item() == pytest.approx(2.5)
    assert torch.allclose(gem(x), x.clamp(min=1e-6).pow(2.5).mean(dim=(2, 3)).pow(1 / 2.5), atol=1e-6)
    assert torch.allclose(make_pooling("avg")(x), x.mean(dim=(2, 3)))
    token = torch.rand(2, 5, 1, 1)  # a ViT's class token as its feature map (model.pooling=cls)
    assert torch.equal(make_pooling("cls")(token), token[:, :, 0, 0])


def test_unknown_pooling_is_a_config_error():
    with pytest.raises(ConfigError, match="model.pooling='max' is not one of avg, gem"):
        make_pooling("max")
