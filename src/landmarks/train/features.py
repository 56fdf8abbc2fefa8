"""The frozen backbone's one pass over a run's photos: every photo and its mirror image, once.

While the backbone stays frozen, the head's epochs and the steps that finish the run (the descriptor, the reference
index, the calibration models) all need the same thing from it: its feature map of each photo in the views it is
trained and asked on. When the training augmentation is at most a horizontal flip (``flips_only``, as in ``glr``),
those views are the photo and its mirror image, so ``backbone_views`` computes them once for the train, validation
and held-out splits: the next batch is read from the image cache in a thread while the current one runs (memory:
one batch ahead besides the result), and the mirror image is flipped from the same decoded photo and goes through
the backbone in the same batch. An epoch then draws one of the two views per photo (``SplitViews.epoch``), as a
random horizontal flip would, and finishing pools the maps with the head's trained GeM (``pooled_features``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from landmarks.config import AugmentConfig
from landmarks.data.images import ImageCache
from landmarks.models.onnx_graph import with_static_padding, write_onnx
from landmarks.recognize.embed import PHOTOS_PER_CALL, onnx_session
from landmarks.utils import progress

log = logging.getLogger(__name__)

PHOTO_AND_MIRROR = 2  # views: the photo, then its mirror image


def flips_only(augment: AugmentConfig) -> bool:
    """Whether the training augmentation is at most a horizontal flip: then the photo and its mirror image are
    every view training can draw."""
    if not augment.enabled:
        return True
    return not (augment.vertical_flip or augment.rotation_deg or augment.brightness or augment.contrast
                or augment.zoom or augment.translate or augment.crop_scale_min < 1)


class _PickedViews(Dataset):
    """(feature map, class index) of each photo in the view ``picks`` names."""

    def __init__(self, maps: torch.Tensor, picks: torch.Tensor, labels: torch.Tensor):
        self.maps, self.picks, self.labels = maps, picks, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.maps[item, self.picks[item]], self.labels[item]


@dataclass
class SplitViews:
    """A split's photos through the frozen backbone: ``maps`` (photos, views, C, h, w) float16, the last feature
    map of the photo (view 0) and its mirror image (view 1); ``described`` (photos, views, C') float32, the head's
    own descriptor level GeM-pooled from the same pass (None when it has none); ``labels`` their class index."""

    positions: np.ndarray
    labels: torch.Tensor
    maps: torch.Tensor
    described: torch.Tensor | None

    @property
    def views(self) -> int:
        return int(self.maps.shape[1])

    def epoch(self, seed: int | None) -> Dataset:
        """The photos as (feature map, class index): with a ``seed``, each photo's view drawn at random (photo or
        mirror image, each with probability 1/2: a random horizontal flip); without, the photos themselves."""
        if seed is None or self.views == 1:
            picks = torch.zeros(len(self.labels), dtype=torch.long)
        else:
            picks = torch.randint(0, self.views, (len(self.labels),), generator=torch.Generator().manual_seed(seed))
        return _PickedViews(self.maps, picks, self.labels)


class _FeatureMapsGraph(nn.Module):
    """uint8 NHWC photos -> the backbone's feature map (and the descriptor level's output when the head has one)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feature_map, tapped = self.model.feature_maps(images.permute(0, 3, 1, 2).float() / 255.0)
        return (feature_map,) if tapped is None else (feature_map, tapped)


def backbone_runner(model: nn.Module, size_px: int, runtime: str = "auto", device: torch.device | None = None,
                    folder: Path | None = None) -> Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor | None]]:
    """uint8 NHWC photos -> ``model.feature_maps`` of them, run the fastest way this machine has.

    ``runtime`` "onnxruntime" (and "auto" on a CPU): the frozen backbone written as an ONNX graph into ``folder`` (a
    temporary one by default) and run in ONNX Runtime, which ran glr's Lite2 at 384 px 4x faster than eager PyTorch
    here with the same feature maps (benchmarks/RESULTS.md); "torch" (and "auto" on a GPU, or when the graph cannot be
    written or run): eager PyTorch with fixed 'same' paddings and channels_last (2x the plain model on a CPU)."""
    on_gpu = device is not None and device.type != "cpu"
    static = with_static_padding(model, size_px).eval()
    if runtime == "onnxruntime" or (runtime == "auto" and not on_gpu):
        try:
            return _onnx_runner(static, size_px, folder)
        except Exception as error:  # an op the exporter or ONNX Runtime lacks: eager PyTorch does the same job
            if runtime == "onnxruntime":
                raise
            log.warning("the frozen backbone runs in PyTorch: its ONNX graph could not be used (%s)", error)
    static = static.to(device or "cpu", memory_format=torch.channels_last)

    @torch.inference_mode()
    def run(photos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        images = torch.from_numpy(photos).to(device or "cpu").permute(0, 3, 1, 2).float().div_(255.0)
        feature_map, tapped = static.feature_maps(images.contiguous(memory_format=torch.channels_last))
        return feature_map.float().cpu(), None if tapped is None else tapped.float().cpu()

    return run


def _onnx_runner(model: nn.Module, size_px: int, folder: Path | None) -> Callable:
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = Path(tmp) / "backbone.onnx"
        outputs = ["feature_map"] if getattr(model.head, "descriptor_stage", None) is None else ["feature_map", "tapped"]
        write_onnx(_FeatureMapsGraph(model), torch.zeros(2, size_px, size_px, 3, dtype=torch.uint8), path, "images",
                   outputs)
        session = onnx_session(path, torch.get_num_threads())  # the session holds the graph: the file can go

    def run(photos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        results = session.run(None, {"images": np.ascontiguousarray(photos)})
        return torch.from_numpy(results[0]), torch.from_numpy(results[1]) if len(results) > 1 else None

    run(np.zeros((1, size_px, size_px, 3), np.uint8))  # fails here, not in the middle of the pass, if it cannot run
    return run


@torch.inference_mode()
def backbone_views(model: torch.nn.Module, cache: ImageCache, positions: np.ndarray, labels: np.ndarray,
                   views: int = PHOTO_AND_MIRROR, batch_size: int = PHOTOS_PER_CALL, runtime: str = "auto",
                   device: torch.device | None = None, desc: str = "backbone",
                   runner: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor | None]] | None = None) -> SplitViews:
    """Every photo at ``positions`` of the cache (and with ``views`` 2 its mirror image) through ``model``'s
    backbone once (``LandmarkModel.feature_maps``, by ``runner`` or a ``backbone_runner`` of ``runtime``), reading
    the next batch in a thread while this one runs."""
    model.eval()
    positions = np.asarray(positions, dtype=np.int64)
    count = len(positions)
    pool_descriptor = getattr(getattr(model, "head", None), "descriptor_pool", None)
    if runner is None and count:
        runner = backbone_runner(model, int(cache.images.shape[1]), runtime, device)

    def read(start: int) -> np.ndarray:
        photos = np.array(cache.images[positions[start : start + batch_size]])  # out of the memory map
        return np.concatenate([photos, photos[:, :, ::-1]]) if views == PHOTO_AND_MIRROR else photos

    maps: torch.Tensor | None = None
    described: torch.Tensor | None = None
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(read, 0) if count else None
        for start in progress(range(0, count, batch_size), desc=desc, unit="batch"):
            photos = pending.result()
            pending = reader.submit(read, start + batch_size) if start + batch_size < count else None
            feature_map, tapped = runner(photos)
            batch = len(photos) // views
            feature_map = feature_map.reshape(views, batch, *feature_map.shape[1:]).transpose(0, 1)
            if maps is None:
                maps = torch.empty((count, views, *feature_map.shape[2:]), dtype=torch.float16)
            maps[start : start + batch] = feature_map.to(torch.float16)
            if tapped is not None and pool_descriptor is not None:
                pooled = pool_descriptor(tapped).float().reshape(views, batch, -1).transpose(0, 1)
                if described is None:
                    described = torch.empty((count, views, pooled.shape[-1]), dtype=torch.float32)
                described[start : start + batch] = pooled
    if maps is None:
        maps = torch.zeros((0, views, 0, 1, 1), dtype=torch.float16)
    seconds = time.monotonic() - started
    log.info("%s: %d photos x %d views through the backbone in %.1fs (%.1f images/s)", desc, count, views, seconds,
             count * views / max(seconds, 1e-9))
    return SplitViews(positions, torch.as_tensor(np.asarray(labels, dtype=np.int64)), maps, described)


@torch.no_grad()
def pooled_features(model: torch.nn.Module, split: SplitViews, views: int | None = None,
                    batch_size: int = 256) -> np.ndarray:
    """(photos, views, features): what ``landmarks.train.pooled.capture_pooled`` records while the model embeds
    these photos (view 0, and with ``views`` 2 the mirror image): the head's pooling of each feature map (its trained
    GeM p), followed by the descriptor level's pooled features when the head has its own."""
    views = split.views if views is None else views
    parts = []
    for start in range(0, len(split.labels), batch_size):
        maps = split.maps[start : start + batch_size, :views]
        pooled = model.head.pool(maps.flatten(0, 1).float()).reshape(len(maps), views, -1)
        if split.described is not None:
            pooled = torch.cat([pooled, split.described[start : start + batch_size, :views]], dim=2)
        parts.append(pooled.float().numpy())
    if not parts:
        return np.zeros((0, views, 0), np.float32)
    return np.concatenate(parts)
