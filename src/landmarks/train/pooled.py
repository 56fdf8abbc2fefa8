"""Pooled backbone features, captured once while a run's photos are embedded, and heads that run on them.

Finishing a run embeds every photo once; ``capture_pooled`` records what an ArcFace head's neck (and its own
descriptor level) receives on the way, so that fitting the descriptor (``landmarks.train.finish``) and training the
calibration models (``landmarks.train.open_set``) need no second pass through the backbone. ``PooledArcFace`` turns
such features into the embeddings and logits the run's model gives.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import torch

from landmarks.models.heads import WhitenedDescriptor
from landmarks.recognize.embed import l2_normalize

MAX_CAPTURED_PHOTOS = 200_000  # above this many training photos, hidden landmarks are left out instead


def has_arcface_neck(model: torch.nn.Module | None) -> bool:
    """Whether ``model`` has the pooling -> neck -> ArcFace head a calibration model can be trained like."""
    head = getattr(model, "head", None)
    return hasattr(head, "neck") and hasattr(head, "arcface")


@contextlib.contextmanager
def capture_pooled(model: torch.nn.Module | None, photos: int = 0) -> Iterator[list[np.ndarray] | None]:
    """While open, record the pooled backbone features an ArcFace head's neck receives, followed by those its
    descriptor receives when it has its own (``model.descriptor_stage``), one array per forward call (with TTA
    the calls alternate: photos, then their mirror images). None for other heads, and when ``photos`` is above
    ``MAX_CAPTURED_PHOTOS`` (memory: 1280 floats a view)."""
    if not has_arcface_neck(model) or photos > MAX_CAPTURED_PHOTOS:
        yield None
        return
    calls: list[np.ndarray] = []

    def described(_module: torch.nn.Module, _args: tuple, output: torch.Tensor) -> None:
        calls[-1] = np.concatenate([calls[-1], output.detach().float().cpu().numpy()], axis=1)

    handles = [model.head.neck.register_forward_pre_hook(
        lambda _module, args: calls.append(args[0].detach().float().cpu().numpy()))]
    if getattr(model.head, "descriptor_pool", None) is not None:
        handles.append(model.head.descriptor_pool.register_forward_hook(described))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def pooled_views(calls: list[np.ndarray], counts: Sequence[int], tta_flip: bool) -> list[np.ndarray]:
    """The captured calls as one (photos, views, features) array per consecutive group of ``counts`` photos."""
    views = 2 if tta_flip else 1
    if not calls:
        return [np.zeros((n, views, 0), np.float32) for n in counts]
    stacked = np.stack([np.concatenate(calls[v::views]) for v in range(views)], axis=1)
    if len(stacked) != sum(counts):
        raise ValueError(f"captured {len(stacked)} photos' features, expected {sum(counts)}")
    return np.split(stacked, np.cumsum(counts)[:-1])


def own_descriptor_features(model: torch.nn.Module | None) -> int:
    """How many of the features ``capture_pooled`` records for ``model`` are its descriptor's own input
    (``model.descriptor_stage``, recorded after the neck's); 0 when the descriptor shares the neck's, or there is none."""
    head = getattr(model, "head", None)
    if getattr(head, "descriptor_stage", None) is None or head.descriptor is None:
        return 0
    return int(head.descriptor.center.numel())


def split_pooled(pooled: np.ndarray, descriptor_features: int) -> tuple[np.ndarray, np.ndarray]:
    """(the neck's input, the descriptor's input) of captured features (..., features): the last
    ``descriptor_features`` are the descriptor's own; with 0 both get all of them."""
    if not descriptor_features:
        return pooled, pooled
    return pooled[..., :-descriptor_features], pooled[..., -descriptor_features:]


class PooledArcFace:
    """An ArcFace head over pooled backbone features: (photos, views, features) -> the embeddings and logits the
    run's TorchEmbedder would give (views averaged). The run's own head (``of_model``) or a calibration model,
    a fresh neck and ArcFace head trained like the run's on the training photos of some landmarks only (the
    others hidden from it, as ``benchmarks/bench_open_set.py`` hides them), with a descriptor of its own.

    The features are what ``capture_pooled`` records (``split_pooled`` with ``descriptor_features``)."""

    def __init__(self, neck: torch.nn.Module, arcface: torch.nn.Module, descriptor: WhitenedDescriptor | None = None,
                 descriptor_features: int = 0):
        self.neck, self.arcface, self.descriptor = neck.eval(), arcface.eval(), descriptor
        self.descriptor_features = descriptor_features if descriptor is not None else 0

    @classmethod
    def of_model(cls, model: torch.nn.Module) -> "PooledArcFace":
        head = model.head
        return cls(head.neck, head.arcface, head.descriptor, own_descriptor_features(model))

    @torch.no_grad()
    def __call__(self, pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(photos, views, features) -> (L2-normalised embeddings averaged over views, logits averaged over views)."""
        dim = self.arcface.weight.shape[1] + (self.descriptor.dims if self.descriptor is not None else 0)
        if not len(pooled):
            return np.zeros((0, dim), np.float32), np.zeros((0, self.arcface.num_classes), np.float32)
        neck_input, descriptor_input = (torch.from_numpy(np.ascontiguousarray(part.reshape(-1, part.shape[-1]),
                                                                             dtype=np.float32))
                                        for part in split_pooled(pooled, self.descriptor_features))
        neck = self.neck(neck_input)
        logits = self.arcface(neck)
        embedding = torch.nn.functional.normalize(neck, dim=1)
        if self.descriptor is not None:
            embedding = torch.nn.functional.normalize(torch.cat([embedding, self.descriptor(descriptor_input)], dim=1),
                                                      dim=1)
        views = pooled.shape[1]
        embedding = embedding.view(len(pooled), views, -1).sum(1)
        logits = logits.view(len(pooled), views, -1).mean(1)
        return l2_normalize(embedding.numpy()), logits.numpy().astype(np.float32)
