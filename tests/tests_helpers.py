"""Small builders shared by tests and benchmarks (importable because tests/ is on sys.path under pytest's rootdir
conftest; the benchmarks that use them put tests/ on their path). No test module imports another test module or
conftest: what they share is here."""

import copy
import io
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from landmarks.config import ModelConfig
from landmarks.models.landmark_model import LandmarkModel
from landmarks.models.registry import build_model
from landmarks.recognize.confidence import FEATURES
from landmarks.recognize.index import EmbeddingIndex
from landmarks.recognize.recognizer import Recognizer


def make_photo(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
    """A small JPEG: a flat colour with a little noise and a stripe, so classes are learnable."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour, dtype=np.float32) + rng.normal(0, 12, (size[1], size[0], 3)), 0, 255)
    pixels[size[1] // 3 : size[1] // 2, :, :] = 255 - np.array(colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path, "JPEG", quality=90)
    return path

COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 220, 40)]

def build_tiny_gldv2(root: Path) -> Path:
    """The folder behind the ``tiny_gldv2`` fixture (also used by the benchmarks' smoke runs)."""
    train_rows, test_rows, solution_rows = [], [], []
    landmark_ids = [7, 1042, 55, 300]
    for class_number, (landmark_id, colour) in enumerate(zip(landmark_ids, COLOURS)):
        for i in range(12):
            image_id = f"{class_number:x}{i:x}a{landmark_id:04x}{i:08x}"[:16].ljust(16, "0")
            make_photo(root / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg", colour, seed=i)
            train_rows.append(f"{image_id},{landmark_id}")
        for i in range(2 if class_number < 3 else 0):
            image_id = f"f{class_number:x}{i:x}b{landmark_id:04x}{i:08x}"[:16].ljust(16, "0")
            make_photo(root / "test" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg", colour, seed=100 + i)
            test_rows.append(image_id)
            solution_rows.append(f"{image_id},{landmark_id},Private")
    for i in range(2):
        image_id = f"e{i:x}0000000000000{i}"[:16]
        make_photo(root / "test" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg", (128, 128, 128), seed=200 + i)
        test_rows.append(image_id)
        solution_rows.append(f"{image_id},,Private")
    (root / "train.csv").write_text("id,landmark_id\n" + "\n".join(train_rows) + "\n")
    (root / "test.csv").write_text("id\n" + "\n".join(test_rows) + "\n")
    (root / "test_solution.csv").write_text("id,landmarks,Usage\n" + "\n".join(solution_rows) + "\n")
    (root / "landmarks.csv").write_text(
        "landmark_id,name\n" + "\n".join(f"{l},place_{l}" for l in landmark_ids) + "\n"
    )
    return root


class FixedEmbedder:
    """Stands in for a model where embeddings and logits are given directly (calling it is a test bug)."""

    input_size_px = 8

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise AssertionError("not used: embeddings are given directly")


def unit(*values: float) -> np.ndarray:
    """The float32 unit vector along ``values``."""
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def photo(path: Path, colour: tuple[int, int, int] = (200, 100, 50), size: tuple[int, int] = (48, 40)) -> Path:
    return make_photo(path, colour, size)


@contextmanager
def running_server(app, configure=None) -> Iterator[str]:
    """Serve a FastAPI app with uvicorn on a free loopback port in a thread; yields its base URL. ``configure(app, host,
    port)`` makes the uvicorn.Config (default: uvicorn's own defaults)."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    if configure is None:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    else:
        config = configure(app, "127.0.0.1", port)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(400):
        if server.started or not thread.is_alive():
            break
        time.sleep(0.05)
    assert server.started, "the test server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def with_prototypes(recognizer: Recognizer, prototypes: np.ndarray, landmark_ids: np.ndarray) -> Recognizer:
    """A shallow copy of ``recognizer`` whose index is the prototypes, as float16 round-trips them (what the
    device searches); scoring is the Recognizer's own, so Python and the page's ``scoring.js`` agree."""
    device = copy.copy(recognizer)
    vectors = prototypes.astype(np.float16).astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    device.index = EmbeddingIndex.build(vectors, [f"prototype-{i}" for i in range(len(vectors))], landmark_ids, "flat")
    return device


def write_y4m(photos: list[Path], out_path: Path, width: int = 320, height: int = 240, frames_per_photo: int = 10,
              fps: int = 10) -> Path:
    """A YUV4MPEG2 (4:2:0, BT.601 limited range) clip showing each photo for ``frames_per_photo`` frames, squashed to
    ``width`` x ``height`` (as the page squashes frames): Chromium's ``--use-file-for-fake-video-capture`` plays it."""
    if width % 2 or height % 2:
        raise ValueError("a 4:2:0 clip needs an even width and height")
    with open(out_path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420\n".encode())
        for photo in photos:
            with Image.open(photo) as image:
                rgb = np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR), dtype=np.float32)
            r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
            y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
            cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
            cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255

            def half(plane: np.ndarray) -> np.ndarray:
                return plane.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))

            frame = b"FRAME\n" + b"".join(np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes()
                                          for p in (y, half(cb), half(cr)))
            out.write(frame * frames_per_photo)
    return out_path


MODEL_CONFIGS = {  # one small model of each kind, on timm's test backbones
    "seed_cnn": ModelConfig(architecture="seed_cnn", embedding_dim=32),
    "classifier": ModelConfig(architecture="classifier", backbone="test_efficientnet", embedding_dim=16),
    "classifier_arcface": ModelConfig(architecture="classifier", backbone="test_resnet", head="arcface",
                                      embedding_dim=16, arcface_subcenters=2),
    "glr": ModelConfig(architecture="glr", backbone="test_efficientnet", pooling="gem", embedding_dim=16),
    "glr_descriptor": ModelConfig(architecture="glr", backbone="test_efficientnet", pooling="gem", embedding_dim=16,
                                  descriptor_dims=4, descriptor_weight=2.0),
    "glr_stage_descriptor": ModelConfig(architecture="glr", backbone="test_efficientnet", pooling="gem",
                                        embedding_dim=16, descriptor_dims=4, descriptor_stage=2),
}
CLASS_COUNTS = np.array([1, 16, 256, 3])


def build_test_model(name: str) -> LandmarkModel:
    """The model ``MODEL_CONFIGS[name]`` describes, 4 classes at 32 px, seeded."""
    torch.manual_seed(0)
    return build_model(MODEL_CONFIGS[name], num_classes=4, image_size_px=32, class_counts=CLASS_COUNTS)


def scores_only(scores) -> np.ndarray:
    features = np.zeros((len(scores), len(FEATURES)))
    features[:, 0] = scores
    return features


def noisy_samples(seed: int = 0, count: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Scores in [0, 1] where P(right) = score (a perfectly calibrated score)."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0, 1, count)
    return scores, (rng.uniform(0, 1, count) < scores).astype(int)


HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds",
                   "train_seconds", "images_per_second", "backbone_frozen"]


def assert_png(path: Path) -> None:
    """The file exists and is a whole PNG."""
    assert path.is_file(), path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 50, path


def described_features(model: LandmarkModel, images: torch.Tensor) -> torch.Tensor:
    """What the model's descriptor whitens for these photos: the pooled final features, or those of its stage."""
    with torch.no_grad():
        if model.head.descriptor_stage is None:
            return model.head.pool(model.features(images))
        _, (tapped,) = model.backbone.forward_intermediates((images - model.mean) / model.std,
                                                            indices=[model.head.descriptor_stage])
        return model.head.descriptor_pool(tapped)


PURPLE = (150, 20, 200)
UNLIMITED = dict(predict_per_minute=0, suggestions_per_hour=0, max_pending_per_client=0)  # no rate limits


def jpeg(colour: tuple[int, int, int], seed: int = 0, size: tuple[int, int] = (48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour, np.float32) + rng.normal(0, 12, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def photo_files(colour: tuple[int, int, int], count: int, start: int = 0) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("photos", (f"p{i}.jpg", jpeg(colour, seed=i), "image/jpeg")) for i in range(start, start + count)]


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def wait_for(page, expression: str, arg=None, timeout_s: float = 30.0) -> None:
    """Playwright's ``page.wait_for_function`` without evaluating a string inside the page, which the service's
    Content-Security-Policy (no ``'unsafe-eval'``) refuses: ``page.evaluate`` (the DevTools protocol) polled."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression, arg):
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:g} s for {expression}")
        time.sleep(0.1)
