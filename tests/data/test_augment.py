import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from landmarks.config import AugmentConfig
from landmarks.data.augment import CachedImageDataset, build_train_transform, class_balanced_sampler, class_weights
from landmarks.data.images import ImageCache
from tests_helpers import photo


def _image(size: int = 32) -> torch.Tensor:
    """An asymmetric uint8 CHW image: a gradient left to right, another top to bottom."""
    x = torch.arange(size, dtype=torch.uint8) * 7
    image = torch.zeros(3, size, size, dtype=torch.uint8)
    image[0] = x[None, :]
    image[1] = x[:, None]
    image[2] = 100
    return image


def test_all_augmentations_keep_shape_and_dtype():
    """Every augmentation on at once keeps uint8 CHW at the size, changes the photo, and differs from view to view."""
    cfg = AugmentConfig(rotation_deg=20, horizontal_flip=True, vertical_flip=True, brightness=0.3, contrast=0.3,
                        zoom=0.2, translate=0.1, crop_scale_min=0.5)
    torch.manual_seed(0)
    for fill in ("reflect", "black"):
        cfg.fill = fill
        transform = build_train_transform(cfg, 32)
        outs = [transform(_image()) for _ in range(5)]
        for out in outs:
            assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
            assert not torch.equal(out, _image())
        assert len({out.numpy().tobytes() for out in outs}) == 5


@pytest.mark.parametrize("cfg", [AugmentConfig(enabled=False, rotation_deg=30, horizontal_flip=True, brightness=0.5),
                                 AugmentConfig()])
def test_disabled_or_all_off_is_identity(cfg):
    image = _image()
    assert torch.equal(build_train_transform(cfg, 32)(image), image)


@pytest.mark.parametrize("flag, dim", [("horizontal_flip", -1), ("vertical_flip", -2)])
def test_flips_flip(flag, dim):
    torch.manual_seed(0)
    transform = build_train_transform(AugmentConfig(**{flag: True}), 32)
    image = _image()
    flipped = image.flip(dim)
    outs = [transform(image) for _ in range(40)]
    assert all(torch.equal(o, image) or torch.equal(o, flipped) for o in outs)
    assert any(torch.equal(o, flipped) for o in outs) and any(torch.equal(o, image) for o in outs)


def test_black_fill_uncovers_zeros_and_reflect_does_not():
    image = torch.full((3, 32, 32), 200, dtype=torch.uint8)
    torch.manual_seed(0)
    black = build_train_transform(AugmentConfig(rotation_deg=45, fill="black"), 32)
    reflect = build_train_transform(AugmentConfig(rotation_deg=45, fill="reflect"), 32)
    rotated = [black(image) for _ in range(10)]
    assert any((o == 0).any() for o in rotated)
    assert all(o.min() > 150 for o in (reflect(image) for _ in range(10)))


def _cache(tmp_path: Path) -> ImageCache:
    paths = [str(photo(tmp_path / f"{i}.jpg", (50 * i, 100, 200))) for i in range(4)]
    return ImageCache.build(paths, 16, tmp_path / "cache", workers=1, progress=False)


def test_dataset_returns_unit_floats_and_labels(tmp_path: Path):
    cache = _cache(tmp_path)
    dataset = CachedImageDataset(cache, np.array([3, 1]), np.array([7, 2]))
    assert len(dataset) == 2
    image, label = dataset[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label == 7 and isinstance(label, int)
    assert 0 <= image.min() and image.max() <= 1
    expected = torch.from_numpy(np.array(cache.images[3])).permute(2, 0, 1).float() / 255
    assert torch.allclose(image, expected)
    flipped, _ = CachedImageDataset(cache, np.array([3]), np.array([0]), transform=lambda t: t.flip(-1))[0]
    assert torch.allclose(flipped, expected.flip(-1))


def test_dataset_pickles_for_workers(tmp_path: Path):
    dataset = CachedImageDataset(_cache(tmp_path), np.array([0, 1, 2]), np.array([0, 1, 0]),
                                 build_train_transform(AugmentConfig(horizontal_flip=True), 16))
    _ = dataset[0]  # opens the memory map in this process
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone[1][0].shape == (3, 16, 16) and clone[1][1] == 1
    batch, labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=0)))
    assert batch.shape == (3, 3, 16, 16) and labels.tolist() == [0, 1, 0]


def test_class_weights_by_hand():
    weights = class_weights(np.array([0, 0, 0, 1]), 3)
    # n = 4 photos, K = 2 classes with photos: 4 / (2 * 3) and 4 / (2 * 1); class 2 has none
    assert torch.allclose(weights, torch.tensor([4 / 6, 2.0, 0.0]))
    assert weights.dtype == torch.float32


def test_class_balanced_sampler_oversamples_the_rare_class():
    labels = np.array([0] * 90 + [1] * 10)
    sampler = class_balanced_sampler(labels, num_samples=2000, seed=1)
    drawn = np.array(list(sampler))
    assert len(drawn) == 2000 and 0.45 < (labels[drawn] == 1).mean() < 0.55
    assert np.array_equal(drawn, np.array(list(class_balanced_sampler(labels, num_samples=2000, seed=1))))
    assert len(list(class_balanced_sampler(labels))) == 100
