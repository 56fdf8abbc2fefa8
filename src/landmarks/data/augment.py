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
    """uint8 CHW -> augmented uint8 CHW of the same size; each part only when configured."""
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
            )
            if cfg.fill == "reflect":  # Keras' default fill_mode: mirror the photo into the uncovered corners
                pad = size_px // 2
                steps += [v2.Pad(pad, padding_mode="reflect"), affine, v2.CenterCrop(size_px)]
            else:
                steps.append(affine)
        if cfg.brightness or cfg.contrast:
            steps.append(v2.ColorJitter(brightness=cfg.brightness or None, contrast=cfg.contrast or None))
    return v2.Compose(steps) if steps else v2.Identity()


class CachedImageDataset(Dataset):
    """Photos from the image cache as float CHW in [0, 1] (after the transform) with their class index."""

    def __init__(self, cache: ImageCache, indices: np.ndarray, labels: np.ndarray,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.cache = cache
        self.indices = np.asarray(indices)
        self.labels = np.asarray(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.array(self.cache.images[self.indices[item]])).permute(2, 0, 1)
        if self.transform is not None:
            image = self.transform(image)
        return image.float().div_(255.0), int(self.labels[item])


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """'Balanced' loss weights n / (K * count_c); classes without photos get 0."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def class_balanced_sampler(labels: np.ndarray, num_samples: int | None = None, seed: int = 42) -> WeightedRandomSampler:
    """Oversampling: every class is drawn equally often (photos with replacement)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), num_samples or len(labels),
                                 replacement=True, generator=generator)
