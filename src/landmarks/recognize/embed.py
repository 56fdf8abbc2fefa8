"""Embedders: uint8 photos in, L2-normalised embeddings and classifier logits out (PyTorch or ONNX Runtime)."""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np
import onnxruntime as ort
import torch

from landmarks.data.images import decode_image
from landmarks.errors import DataError, ImageError
from landmarks.run_folder import RunFolder
from landmarks.utils import progress

log = logging.getLogger(__name__)

INPUT, EMBEDDING, LOGITS = "images", "embedding", "logits"  # the names inside model.onnx


class Embedder(Protocol):
    """Anything that maps a batch of uint8 NHWC photos to (embeddings (N, D), logits (N, C))."""

    input_size_px: int

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1], the input every LandmarkModel takes."""
    return torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float().div_(255.0)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


class TorchEmbedder:
    """Runs a LandmarkModel eagerly in PyTorch."""

    def __init__(self, model: torch.nn.Module, tta_flip: bool = False, batch_size: int = 64):
        self.model = model.eval()
        self.tta_flip = tta_flip
        self.batch_size = batch_size
        self.input_size_px = int(model.input_size_px)

    @torch.inference_mode()
    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding, logits = self.model(batch)
        if self.tta_flip:
            flipped_embedding, flipped_logits = self.model(batch.flip(3))
            embedding = torch.nn.functional.normalize(embedding, dim=1) + torch.nn.functional.normalize(flipped_embedding, dim=1)
            logits = (logits + flipped_logits) / 2
        return embedding, logits

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        embeddings, logits = [], []
        for start in range(0, len(images), self.batch_size):
            e, l = self._forward(to_model_input(images[start : start + self.batch_size]))
            embeddings.append(e.float().numpy())
            logits.append(l.float().numpy())
        if not embeddings:
            return np.zeros((0, self.model.embedding_dim), np.float32), np.zeros((0, self.model.num_classes), np.float32)
        return l2_normalize(np.concatenate(embeddings)), np.concatenate(logits).astype(np.float32)


def onnx_session(onnx_path: Path, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with every graph optimisation, on ``threads`` (default: every core)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # int8 graphs: one warning per constant the QDQ fusion leaves unused
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


PHOTOS_PER_CALL = 16  # photos per ONNX Runtime call with their mirror images: 32 images, the bare model's batch
# (a photo alone goes with its mirror image in one call of 2, 16 % faster than two calls of 1 for glr here)


class OnnxEmbedder:
    """Runs model.onnx in ONNX Runtime on uint8 NHWC photos."""

    def __init__(self, onnx_path: Path, tta_flip: bool = False, threads: int | None = None):
        self.session = onnx_session(onnx_path, threads)
        shape = self.session.get_inputs()[0].shape
        self.input_size_px = int(shape[1])
        self.tta_flip = tta_flip
        # one call at a time: each already runs on every thread it was given, so concurrent calls (the service's
        # requests) would only make the threads fight over the cores while the photos wait in line either way
        self.one_at_a_time = threading.Lock()

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.one_at_a_time:
            return self._embed(np.ascontiguousarray(images, dtype=np.uint8))

    def _embed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.tta_flip or not len(images):
            embedding, logits = self.session.run([EMBEDDING, LOGITS], {INPUT: images})
            return embedding.astype(np.float32), logits.astype(np.float32)
        embeddings, all_logits = [], []
        for start in range(0, len(images), PHOTOS_PER_CALL):  # photos and their mirror images in one call
            photos = images[start : start + PHOTOS_PER_CALL]
            embedding, logits = self.session.run([EMBEDDING, LOGITS], {INPUT: np.concatenate([photos, photos[:, :, ::-1]])})
            embeddings.append(embedding[: len(photos)] + embedding[len(photos) :])
            all_logits.append((logits[: len(photos)] + logits[len(photos) :]) / 2)
        embedding = np.concatenate(embeddings)
        embedding = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
        return embedding.astype(np.float32), np.concatenate(all_logits).astype(np.float32)


def load_embedder(run: RunFolder, backend: str = "auto", tta_flip: bool = False) -> Embedder:
    """The embedder of a run folder: ONNX Runtime when asked or when model.onnx exists, else PyTorch."""
    if backend == "onnx" or (backend == "auto" and run.onnx.exists()):
        if not run.onnx.exists():
            raise DataError(f"{run.path} has no {RunFolder.ONNX}; run `landmarks export {run.path}` first.")
        return OnnxEmbedder(run.onnx, tta_flip=tta_flip)
    return TorchEmbedder(run.load_model(), tta_flip=tta_flip)


def decode_batches(
    paths: Sequence[str | Path], size_px: int, batch_size: int = 64, workers: int = 2
) -> Iterator[tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]]:
    """Decode photos in parallel threads, a batch ahead of the consumer.

    Yields (positions of the decoded photos in ``paths``, their uint8 NHWC pixels, failures as (path, reason)).
    Memory stays bounded by two batches however many photos there are.
    """

    def load(chunk: Sequence[tuple[int, str | Path]]) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
        positions, pixels, failures = [], [], []
        for position, path in chunk:
            try:
                pixels.append(decode_image(path, size_px))
                positions.append(position)
            except ImageError as error:
                failures.append((str(path), str(error)))
        array = np.stack(pixels) if pixels else np.zeros((0, size_px, size_px, 3), np.uint8)
        return np.asarray(positions, dtype=np.int64), array, failures

    items = list(enumerate(paths))
    sub = max(1, batch_size // max(1, workers))
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:

        def submit(chunk):  # split a batch across the threads
            return [pool.submit(load, chunk[i : i + sub]) for i in range(0, len(chunk), sub)]

        pending = submit(chunks[0]) if chunks else []
        for next_index in range(1, len(chunks) + 1):
            upcoming = submit(chunks[next_index]) if next_index < len(chunks) else []
            parts = [future.result() for future in pending]
            yield (
                np.concatenate([p[0] for p in parts]),
                np.concatenate([p[1] for p in parts]),
                [f for p in parts for f in p[2]],
            )
            pending = upcoming


def embed_paths(
    embedder: Embedder, paths: Sequence[str | Path], batch_size: int = 64, workers: int = 2, desc: str = "embedding"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Embed photos from disk: (embeddings, logits, valid mask, failures); unreadable photos are skipped and reported."""
    embeddings: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    valid = np.zeros(len(paths), dtype=bool)
    failures: list[tuple[str, str]] = []
    bar = progress(None, total=len(paths), desc=desc, unit="img") if len(paths) > batch_size else None
    for positions, pixels, failed in decode_batches(paths, embedder.input_size_px, batch_size, workers):
        if len(pixels):
            e, l = embedder(pixels)
            embeddings.append(e)
            logits.append(l)
            valid[positions] = True
        failures.extend(failed)
        if bar is not None:
            bar.update(len(positions) + len(failed))
    if bar is not None:
        bar.close()
    for path, reason in failures:
        log.warning("skipped %s: %s", path, reason)
    if not embeddings:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), valid, failures
    return np.concatenate(embeddings), np.concatenate(logits), valid, failures
