"""Small builders shared by tests (importable because tests/ is on sys.path under pytest's rootdir conftest)."""

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from conftest import make_photo


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
def running_server(app) -> Iterator[str]:
    """Serve a FastAPI app with uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
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
