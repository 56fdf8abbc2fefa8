"""Training augmentation (torchvision transforms v2), the cached-image dataset and class-imbalance tools."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler
from torchvision.transforms import v2

from landmarks.config import AugmentConfig
from landmarks.data.images import ImageCache


def build_train_transform(cfg: AugmentConfig, size_px: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 CHW (size_px square) -> augmented uint8 CHW of the same size; each part only when configured.

    Order: random resized crop, flips, one affine (rotation, translation, zoom), brightness/contrast.
    ``cfg.fill`` says what the affine uncovers: ``black`` (zeros) or ``reflect`` (the photo mirrored,
    Keras' default, done by reflect-padding by half the size, the affine, and a centre crop).
    """
    steps: list[torch.nn.Module] = []
    if cfg.enabled:
        if cfg.crop_scale_min < 1:
            steps.append(v2.RandomResizedCrop(size_px, scale=(cfg.crop_scale_min, 1.0), antialias=True))
        if cfg.horizontal_flip:
            steps.append(v2.RandomHorizontalFlip())
        if cfg.vertical_flip:
            steps.append(v2.RandomVerticalFlip())
        if cfg.rotation_deg or cfg.translate or cfg.zoom:
            affine = v2.RandomAffine(
                degrees=cfg.rotation_deg,
                translate=(cfg.translate, cfg.translate) if cfg.translate else None,
                scale=(1 - cfg.zoom, 1 + cfg.zoom) if cfg.zoom else None,
                interpolation=v2.InterpolationMode.BILINEAR,
                fill=0,
            )
            if cfg.fill == "reflect":
                steps += [v2.Pad(size_px // 2, padding_mode="reflect"), affine, v2.CenterCrop(size_px)]
            else:
                steps.append(affine)
        if cfg.brightness or cfg.contrast:
            steps.append(v2.ColorJitter(brightness=cfg.brightness or None, contrast=cfg.contrast or None))
    return v2.Compose(steps) if steps else v2.Identity()


class CachedImageDataset(Dataset):
    """Photos from the image cache as float32 CHW in [0, 1] (after the transform) with their class index."""

    def __init__(
        self,
        cache: ImageCache,
        indices: np.ndarray,
        labels: np.ndarray,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.cache = cache  # pickles without its memory map; each DataLoader worker reopens it on first read
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.indices) != len(self.labels):
            raise ValueError(f"{len(self.indices)} indices but {len(self.labels)} labels")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        pixels = np.array(self.cache.images[self.indices[item]])  # a copy out of the read-only memory map
        image = torch.from_numpy(pixels).permute(2, 0, 1)
        if self.transform is not None:
            image = self.transform(image)
        return image.float().div_(255.0), int(self.labels[item])


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """sklearn's 'balanced' loss weights n / (K * count_c), K = classes present; classes without photos get 0."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes].astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def class_balanced_sampler(labels: np.ndarray, num_samples: int | None = None, seed: int = 42) -> WeightedRandomSampler:
    """Oversampling: every class is drawn equally often (photos with replacement), ``num_samples`` per epoch
    (default: as many as there are photos)."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double), num_samples or len(labels), replacement=True, generator=generator
    )
