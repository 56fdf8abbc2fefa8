"""Decoding photos fast (JPEG draft mode) and a memory-mapped cache of decoded photos that later runs reuse."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from landmarks.errors import ImageError
from landmarks.utils import progress

log = logging.getLogger(__name__)

Image.MAX_IMAGE_PIXELS = 64_000_000  # photos beyond ~64 MP are refused as decompression bombs


def _to_array(image: Image.Image, size_px: int, name: str) -> np.ndarray:
    try:
        if image.format == "JPEG":
            image.draft("RGB", (size_px, size_px))  # decode at 1/2, 1/4 or 1/8 scale when that is still big enough
        image = ImageOps.exif_transpose(image)
        image = image.convert("RGB").resize((size_px, size_px), Image.BILINEAR, reducing_gap=3.0)
        return np.asarray(image, dtype=np.uint8)
    except Image.DecompressionBombError:
        raise ImageError(f"{name} is too large to decode safely (more than {Image.MAX_IMAGE_PIXELS:,} pixels).") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageError(f"{name} is truncated or corrupt ({error}).") from None


def _open(source: str | Path | io.BytesIO, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(source)
    except FileNotFoundError:
        raise ImageError(f"{name} does not exist.") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name} is too large to decode safely (more than {Image.MAX_IMAGE_PIXELS:,} pixels).") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise ImageError(f"{name} is not an image.") from None


def decode_image(path: str | Path, size_px: int) -> np.ndarray:
    """A photo as size x size x 3 uint8 RGB (aspect squashed, as the seed's resize), decoded in JPEG draft mode."""
    with _open(path, str(path)) as image:
        return _to_array(image, size_px, str(path))


def decode_image_bytes(data: bytes, size_px: int, name: str = "the upload") -> np.ndarray:
    """Like ``decode_image`` for bytes already in memory (an upload)."""
    with _open(io.BytesIO(data), name) as image:
        return _to_array(image, size_px, name)


def default_cache_dir() -> Path:
    return Path(os.environ.get("LANDMARKS_CACHE", Path.home() / ".cache" / "landmarks"))


def cache_key(paths: Sequence[str], size_px: int) -> str:
    """sha1 over the size and every file's path, byte size and modification time."""
    digest = hashlib.sha1(f"v1:{size_px}".encode())
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(f"\n{path}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
        except OSError:
            digest.update(f"\n{path}\t-1".encode())
    return digest.hexdigest()[:20]


class ImageCache:
    """Decoded photos in an on-disk (N, S, S, 3) uint8 memory map, with a validity mask and the failures."""

    def __init__(self, folder: Path):
        meta = json.loads((folder / "meta.json").read_text())
        self.path = folder
        self.size_px = int(meta["size_px"])
        self.count = int(meta["count"])
        self.valid = np.load(folder / "valid.npy")
        self.failures = [tuple(f) for f in json.loads((folder / "failures.json").read_text())]
        self._images: np.memmap | None = None

    @property
    def images(self) -> np.memmap:
        if self._images is None:
            shape = (self.count, self.size_px, self.size_px, 3)
            self._images = np.memmap(self.path / "images.u8", dtype=np.uint8, mode="r", shape=shape)
        return self._images

    def __getstate__(self) -> dict:  # DataLoader workers reopen the memory map themselves
        state = self.__dict__.copy()
        state["_images"] = None
        return state

    def __len__(self) -> int:
        return self.count

    @property
    def num_failed(self) -> int:
        return len(self.failures)

    @classmethod
    def open(cls, folder: str | Path) -> "ImageCache":
        return cls(Path(folder))

    @classmethod
    def build(cls, paths: Sequence[str], size_px: int, cache_dir: str | Path | None = None, workers: int = 2) -> "ImageCache":
        """Decode ``paths`` at ``size_px`` into the cache, or reuse the cache built earlier for the same files."""
        root = Path(cache_dir) if cache_dir else default_cache_dir()
        folder = root / cache_key(paths, size_px)
        if (folder / "meta.json").exists():
            log.info("reusing image cache %s (%d photos at %d px)", folder, len(paths), size_px)
            return cls(folder)
        tmp = root / f"{folder.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        pixels = np.memmap(tmp / "images.u8", dtype=np.uint8, mode="w+", shape=(max(1, len(paths)), size_px, size_px, 3))
        valid = np.zeros(len(paths), dtype=bool)
        failures: list[tuple[str, str]] = []

        def decode(position: int) -> tuple[int, np.ndarray | None, str | None]:
            try:
                return position, decode_image(paths[position], size_px), None
            except ImageError as error:
                return position, None, str(error)

        bar = progress(None, total=len(paths), desc=f"decoding photos at {size_px} px", unit="img")
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for position, array, reason in pool.map(decode, range(len(paths))):
                if array is None:
                    failures.append((str(paths[position]), reason or "unreadable"))
                else:
                    pixels[position] = array
                    valid[position] = True
                bar.update(1)
        bar.close()
        pixels.flush()
        del pixels
        np.save(tmp / "valid.npy", valid)
        (tmp / "failures.json").write_text(json.dumps(failures))
        (tmp / "meta.json").write_text(json.dumps({"size_px": size_px, "count": len(paths), "complete": True}))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same cache first
            shutil.rmtree(tmp, ignore_errors=True)
        if failures:
            log.warning("skipped %d unreadable images (see %s)", len(failures), folder / "failures.json")
        return cls(folder)
