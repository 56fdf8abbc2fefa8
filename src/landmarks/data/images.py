"""Decoding photos fast (JPEG draft mode) and a memory-mapped cache of decoded photos that later runs reuse."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from landmarks.errors import DataError, ImageError
from landmarks.utils import progress as progress_bar

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # part of the cache key: bump when decoding changes
CHUNK_SIZE = 256  # photos a worker decodes (and writes to the memory map) per task


def _check_bomb(image: Image.Image, name: str) -> None:
    """Refuse photos beyond PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, ~89 MP by default)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and image.width * image.height > limit:
        raise ImageError(f"{name} is too large to decode safely ({image.width}x{image.height} pixels).", "too_large")


UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # what an upload may be: no exotic decoders


def _open(source: str | Path | io.BytesIO, name: str, formats: Sequence[str] | None = None) -> Image.Image:
    try:
        image = Image.open(source, formats=formats)
    except FileNotFoundError:
        raise ImageError(f"{name} does not exist.", "missing") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{name} is too large to decode safely (a possible decompression bomb).", "too_large") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ImageError(f"{name} is not an image.", "not_image") from None
    try:
        _check_bomb(image, name)
    except ImageError:
        image.close()
        raise
    return image


def _draft(image: Image.Image, size: tuple[int, int], name: str, max_pixels: int | None) -> None:
    """Make a JPEG decode at 1/2, 1/4 or 1/8 scale while still >= ``size`` (PIL's ``draft``: the DCT scales,
    so the full-size pixels never exist), then refuse a photo whose decoded pixels would exceed ``max_pixels`` (other
    formats decode at full size: their declared size counts)."""
    if image.format == "JPEG":
        image.draft("RGB", size)
    if max_pixels is not None and image.width * image.height > max_pixels:
        raise ImageError(f"{name} is too large ({image.width}x{image.height} pixels to decode; at most "
                         f"{max_pixels / 1e6:g} megapixels, or any JPEG up to {(Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f}).",
                         "too_large")


def _to_array(image: Image.Image, size_px: int, name: str, max_pixels: int | None = None) -> np.ndarray:
    """Draft-decode (JPEG), apply EXIF orientation, convert to RGB and squash to size_px x size_px."""
    _draft(image, (size_px, size_px), name, max_pixels)
    try:
        image = ImageOps.exif_transpose(image)
        if image.mode != "RGB":
            # P with transparency goes through RGBA; CMYK, L, I;16 ... convert directly
            if image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")
            image = image.convert("RGB")
        image = image.resize((size_px, size_px), Image.BILINEAR, reducing_gap=3.0)
        return np.asarray(image, dtype=np.uint8)
    except Image.DecompressionBombError:
        raise ImageError(f"{name} is too large to decode safely (a possible decompression bomb).", "too_large") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise ImageError(f"{name} is truncated or corrupt ({error}).") from None


def decode_image(path: str | Path, size_px: int) -> np.ndarray:
    """A photo as size_px x size_px x 3 uint8 RGB (aspect squashed, as the seed's resize), decoded in JPEG draft mode."""
    if Path(path).is_dir():
        raise ImageError(f"{path} is a folder, not an image.", "not_image")
    with _open(path, str(path)) as image:
        return _to_array(image, size_px, str(path))


def decode_image_bytes(data: bytes, size_px: int, name: str = "the uploaded file", max_pixels: int | None = None) -> np.ndarray:
    """Like ``decode_image`` for bytes already in memory (an upload; common formats only); ``name`` is used in
    error messages; ``max_pixels``: the most pixels the photo may be decoded at (after JPEG draft scaling). Whatever
    a crafted file makes the decoder raise becomes an ``ImageError``."""
    try:
        with _open(io.BytesIO(data), name, UPLOAD_FORMATS) as image:
            return _to_array(image, size_px, name, max_pixels)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(f"{name} is too large to decode.", "too_large") from None
    except Exception as error:  # noqa: BLE001 - struct.error, IndexError, ... from a crafted file
        raise ImageError(f"{name} is truncated or corrupt ({type(error).__name__}).") from None


def without_metadata(data: bytes, name: str = "the uploaded file", max_side_px: int | None = None,
                     max_pixels: int | None = None) -> bytes:
    """The photo re-encoded without its metadata (EXIF with its GPS position, XMP, comments), turned upright first:
    what the service keeps of a person's photo. A JPEG stays JPEG (quality 95); anything else becomes PNG. With
    ``max_side_px`` a larger photo is scaled down to that longest side (a JPEG decoded at 1/2-1/8 scale first);
    ``max_pixels`` as in ``decode_image_bytes``."""
    try:
        with _open(io.BytesIO(data), name, UPLOAD_FORMATS) as image:
            is_jpeg = image.format == "JPEG"
            scale = min(1.0, (max_side_px or max(image.size)) / max(image.size))
            _draft(image, (max(1, math.ceil(image.width * scale)), max(1, math.ceil(image.height * scale))), name, max_pixels)
            upright = ImageOps.exif_transpose(image)
            if max_side_px is not None and max(upright.size) > max_side_px:
                upright.thumbnail((max_side_px, max_side_px), Image.BILINEAR, reducing_gap=3.0)
            if upright.mode not in ("RGB", "L") if is_jpeg else upright.mode not in ("RGB", "RGBA", "L", "LA", "P"):
                upright = upright.convert("RGB")
            out = io.BytesIO()
            upright.save(out, "JPEG", quality=95) if is_jpeg else upright.save(out, "PNG")
            return out.getvalue()
    except ImageError:
        raise
    except Exception as error:  # noqa: BLE001 - as decode_image_bytes: a crafted file's errors become ImageError
        raise ImageError(f"{name} is truncated or corrupt ({type(error).__name__}).") from None


def default_cache_dir() -> Path:
    """``$LANDMARKS_CACHE``, else ``~/.cache/landmarks``."""
    value = os.environ.get("LANDMARKS_CACHE")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "landmarks"


def cache_key(paths: Sequence[str], size_px: int) -> str:
    """sha1 over the size and every file's path, byte size and modification time (missing files: size -1)."""
    digest = hashlib.sha1(f"landmarks-image-cache v{CACHE_VERSION} size={size_px}".encode())
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(f"\n{path}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
        except OSError:
            digest.update(f"\n{path}\t-1\t0".encode())
    return digest.hexdigest()


def _decode_into(images_file: str, count: int, size_px: int, start: int, paths: Sequence[str]) -> list[tuple[int, str]]:
    """Decode ``paths`` into rows start.. of the memory map; the (row, reason) of each photo that failed."""
    pixels = np.memmap(images_file, dtype=np.uint8, mode="r+", shape=(count, size_px, size_px, 3))
    failures = []
    for offset, path in enumerate(paths):
        try:
            pixels[start + offset] = decode_image(path, size_px)
        except ImageError as error:
            failures.append((start + offset, str(error)))
        except Exception as error:  # a decoder bug must not lose a million decoded photos
            failures.append((start + offset, f"{path} could not be decoded ({type(error).__name__}: {error})."))
    pixels.flush()
    del pixels
    return failures


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork on Linux (as torch's DataLoader): workers start at once and never re-run the caller's main script,
    and they only run PIL and NumPy, nothing that the parent's threads could hold a lock of; spawn elsewhere."""
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


class ImageCache:
    """Decoded photos in an on-disk (N, S, S, 3) uint8 memory map, with a validity mask and the failures."""

    def __init__(self, folder: Path):
        try:
            meta = json.loads((folder / "meta.json").read_text())
            self.valid: np.ndarray = np.load(folder / "valid.npy")
            self.failures: list[tuple[str, str]] = [
                (str(p), str(r)) for p, r in json.loads((folder / "failures.json").read_text())
            ]
        except (OSError, ValueError) as error:
            raise DataError(f"{folder} is not a complete image cache ({error}).") from None
        self.path = folder
        self.size_px = int(meta["size_px"])
        self.count = int(meta["count"])
        self._images: np.memmap | None = None

    @property
    def images(self) -> np.memmap:
        """(N, S, S, 3) uint8, read-only; opened on first use (so a pickled cache reopens it in a worker)."""
        if self._images is None:
            shape = (max(1, self.count), self.size_px, self.size_px, 3)
            self._images = np.memmap(self.path / "images.u8", dtype=np.uint8, mode="r", shape=shape)[: self.count]
        return self._images

    def __getstate__(self) -> dict:  # DataLoader workers reopen the memory map themselves
        state = self.__dict__.copy()
        state["_images"] = None
        return state

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"ImageCache({str(self.path)!r}, {self.count} photos at {self.size_px} px, {self.num_failed} failed)"

    @property
    def num_failed(self) -> int:
        return len(self.failures)

    @classmethod
    def open(cls, folder: str | Path) -> "ImageCache":
        """A cache that ``build`` wrote earlier."""
        return cls(Path(folder))

    @staticmethod
    def _is_complete(folder: Path) -> bool:
        try:
            return bool(json.loads((folder / "meta.json").read_text()).get("complete"))
        except (OSError, ValueError):
            return False

    @classmethod
    def build(
        cls,
        paths: Sequence[str],
        size_px: int,
        cache_dir: str | Path | None = None,
        workers: int = 2,
        progress: bool = True,
    ) -> "ImageCache":
        """Decode ``paths`` at ``size_px`` into the cache, or reuse the cache built earlier for the same files.

        The folder is ``<cache_dir>/<sha1 of size, paths, sizes, mtimes>``; it is built under a temporary
        name and renamed into place, so an interrupted build leaves no half-written cache behind.
        """
        paths = [str(p) for p in paths]
        root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        folder = root / cache_key(paths, size_px)
        if cls._is_complete(folder):
            log.info("reusing image cache %s (%d photos at %d px)", folder, len(paths), size_px)
            return cls(folder)
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f"{folder.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            count = len(paths)
            images_file = str(tmp / "images.u8")
            np.memmap(images_file, dtype=np.uint8, mode="w+", shape=(max(1, count), size_px, size_px, 3)).flush()
            chunks = [(start, paths[start : start + CHUNK_SIZE]) for start in range(0, count, CHUNK_SIZE)]
            bar = progress_bar(None, total=count, desc=f"decoding photos at {size_px} px", unit="img") if progress else None
            failed_rows: list[tuple[int, str]] = []
            rows = max(1, count)
            if workers > 1 and len(chunks) > 1:
                with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
                    pending: set[Future] = set()
                    sizes: dict[Future, int] = {}
                    queue = iter(chunks)
                    while True:
                        for start, chunk in queue:  # keep a few chunks per worker in flight, not all of them
                            future = pool.submit(_decode_into, images_file, rows, size_px, start, chunk)
                            pending.add(future)
                            sizes[future] = len(chunk)
                            if len(pending) >= 4 * workers:
                                break
                        if not pending:
                            break
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            failed_rows += future.result()
                            if bar is not None:
                                bar.update(sizes.pop(future))
            else:
                for start, chunk in chunks:
                    failed_rows += _decode_into(images_file, rows, size_px, start, chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            if bar is not None:
                bar.close()
            failed_rows.sort()
            valid = np.ones(count, dtype=bool)
            valid[[row for row, _ in failed_rows]] = False
            failures = [(paths[row], reason) for row, reason in failed_rows]
            np.save(tmp / "valid.npy", valid)
            (tmp / "failures.json").write_text(json.dumps(failures, indent=0))
            (tmp / "meta.json").write_text(
                json.dumps({"count": count, "size_px": size_px, "complete": True, "version": CACHE_VERSION})
            )
            if folder.exists() and not cls._is_complete(folder):
                shutil.rmtree(folder, ignore_errors=True)  # left over from an older, broken build
            try:
                os.replace(tmp, folder)
            except OSError:  # another process finished the same cache first: use theirs
                if not cls._is_complete(folder):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if failures:
            log.warning("skipped %d unreadable images (see %s)", len(failures), folder / "failures.json")
        log.info("built image cache %s (%d photos at %d px)", folder, count, size_px)
        return cls(folder)
