import io
import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin
from tests_helpers import photo

import landmarks.data.images as images_module
from landmarks.data.images import (
    ImageCache,
    cache_key,
    decode_image,
    decode_image_bytes,
    default_cache_dir,
    without_metadata,
)
from landmarks.errors import DataError, ImageError


def _solid(path: Path, colour, size=(300, 200), mode="RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).convert(mode).save(path, **save)
    return path


def test_decode_gives_the_size_and_colour(tmp_path: Path):
    array = decode_image(_solid(tmp_path / "red.jpg", (220, 30, 30), quality=95), 32)
    assert array.shape == (32, 32, 3) and array.dtype == np.uint8
    assert np.abs(array.reshape(-1, 3).mean(0) - (220, 30, 30)).max() < 6
    assert decode_image(tmp_path / "red.jpg", 17).shape == (17, 17, 3)  # any size, aspect squashed


def test_jpeg_is_decoded_in_draft_mode(tmp_path: Path, monkeypatch):
    path = _solid(tmp_path / "big.jpg", (10, 200, 10), size=(800, 600))
    calls = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        calls.append((mode, size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    assert decode_image(path, 64).shape == (64, 64, 3)
    assert calls == [("RGB", (64, 64), (100, 75))]  # decoded at 1/8 scale, still >= 64 px on each side


@pytest.mark.parametrize("mode, suffix", [("L", ".png"), ("RGBA", ".png"), ("P", ".png"), ("CMYK", ".jpg"),
                                          ("RGB", ".webp"), ("L", ".jpg")])
def test_any_mode_becomes_rgb(tmp_path: Path, mode, suffix):
    array = decode_image(_solid(tmp_path / f"x{suffix}", (40, 120, 200), size=(50, 30), mode=mode), 24)
    assert array.shape == (24, 24, 3) and array.dtype == np.uint8


def test_exif_orientation_is_applied(tmp_path: Path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red
    pixels[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: the left half ends up on top
    path = tmp_path / "rotated.png"
    Image.fromarray(pixels).save(path, exif=exif)
    array = decode_image(path, 16).astype(int)
    assert array[:6, :, 0].mean() > 200 and array[:6, :, 2].mean() < 50  # top red
    assert array[-6:, :, 2].mean() > 200 and array[-6:, :, 0].mean() < 50  # bottom blue


def test_bytes_decode_like_files(tmp_path: Path):
    path = photo(tmp_path / "a.jpg")
    assert np.array_equal(decode_image_bytes(path.read_bytes(), 20), decode_image(path, 20))
    with pytest.raises(ImageError, match="upload.bin is not an image"):
        decode_image_bytes(b"hello", 20, "upload.bin")


def test_truncated_text_and_missing_files_raise_image_error(tmp_path: Path):
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    whole = tmp_path / "whole.jpg"
    Image.fromarray(noise).save(whole, quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])  # headers intact, pixels cut
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo at all")
    with pytest.raises(ImageError, match=r"truncated\.jpg is truncated or corrupt"):
        decode_image(truncated, 32)
    with pytest.raises(ImageError, match=r"notes\.jpg is not an image"):
        decode_image(text, 32)
    with pytest.raises(ImageError, match=r"nothing\.jpg does not exist"):
        decode_image(tmp_path / "nothing.jpg", 32)
    with pytest.raises(ImageError, match="is a folder"):
        decode_image(tmp_path, 32)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bombs_are_refused(tmp_path: Path, monkeypatch):
    path = _solid(tmp_path / "bomb.png", (0, 0, 0), size=(100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 10,000 px: over the limit but under PIL's 2x error
    with pytest.raises(ImageError, match=r"bomb\.png is too large"):
        decode_image(path, 16)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # over 2x: PIL itself raises DecompressionBombError
    with pytest.raises(ImageError, match=r"bomb\.png is too large"):
        decode_image(path, 16)


def _photos(folder: Path, count: int) -> list[str]:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    return [str(photo(folder / f"{i}.jpg", colours[i % 3], size=(40 + i, 30))) for i in range(count)]


def test_cache_builds_once_then_reuses_without_decoding(tmp_path: Path, monkeypatch, caplog):
    paths = _photos(tmp_path / "photos", 5)
    cache = ImageCache.build(paths, 24, tmp_path / "cache", workers=1, progress=False)
    assert len(cache) == 5 and cache.size_px == 24 and cache.num_failed == 0 and cache.valid.all()
    assert cache.images.shape == (5, 24, 24, 3) and cache.images.dtype == np.uint8 and cache.images.mode == "r"
    for i, path in enumerate(paths):
        assert np.array_equal(cache.images[i], decode_image(path, 24))
    assert cache.path == tmp_path / "cache" / cache_key(paths, 24)
    assert sorted(os.listdir(tmp_path / "cache")) == [cache.path.name]  # no temporary folder left
    meta = json.loads((cache.path / "meta.json").read_text())
    assert meta["count"] == 5 and meta["size_px"] == 24 and meta["complete"] is True

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache exists")

    monkeypatch.setattr(images_module, "decode_image", no_decoding)
    with caplog.at_level(logging.INFO, logger="landmarks.data.images"):
        again = ImageCache.build(paths, 24, tmp_path / "cache", workers=1, progress=False)
    assert "reusing image cache" in caplog.text
    assert again.path == cache.path and np.array_equal(again.images, cache.images)
    assert np.array_equal(ImageCache.open(cache.path).images, cache.images)


def test_changed_file_or_size_gives_a_new_cache(tmp_path: Path):
    paths = _photos(tmp_path / "photos", 3)
    first = ImageCache.build(paths, 16, tmp_path / "cache", workers=1, progress=False)
    assert ImageCache.build(paths, 20, tmp_path / "cache", workers=1, progress=False).path != first.path
    _solid(Path(paths[1]), (255, 255, 255), size=(60, 60), format="JPEG")
    stat = os.stat(paths[1])
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = ImageCache.build(paths, 16, tmp_path / "cache", workers=1, progress=False)
    assert second.path != first.path
    assert second.images[1].mean() > 240 and first.images[1].mean() < 200


def test_unreadable_images_are_counted_and_left_black(tmp_path: Path, caplog):
    paths = _photos(tmp_path / "photos", 4)
    (tmp_path / "photos" / "text.jpg").write_text("not a photo")
    paths[1] = str(tmp_path / "photos" / "text.jpg")
    paths[3] = str(tmp_path / "photos" / "missing.jpg")
    with caplog.at_level(logging.WARNING, logger="landmarks.data.images"):
        cache = ImageCache.build(paths, 16, tmp_path / "cache", workers=1, progress=False)
    assert cache.num_failed == 2 and cache.valid.tolist() == [True, False, True, False]
    assert cache.images[1].max() == 0 and cache.images[3].max() == 0 and cache.images[0].max() > 0
    assert [p for p, _ in cache.failures] == [paths[1], paths[3]]
    assert "text.jpg is not an image" in cache.failures[0][1] and "does not exist" in cache.failures[1][1]
    assert f"skipped 2 unreadable images (see {cache.path / 'failures.json'})" in caplog.text
    assert json.loads((cache.path / "failures.json").read_text()) == [list(f) for f in cache.failures]


def test_parallel_build_matches_sequential(tmp_path: Path, monkeypatch):
    paths = _photos(tmp_path / "photos", 9)
    paths.append(str(tmp_path / "photos" / "missing.jpg"))
    monkeypatch.setattr(images_module, "CHUNK_SIZE", 3)  # 4 chunks over 2 worker processes
    parallel = ImageCache.build(paths, 16, tmp_path / "a", workers=2, progress=False)
    sequential = ImageCache.build(paths, 16, tmp_path / "b", workers=1, progress=False)
    assert np.array_equal(parallel.images, sequential.images)
    assert parallel.valid.tolist() == [True] * 9 + [False] and parallel.failures == sequential.failures


def test_cache_pickles_without_its_memory_map(tmp_path: Path):
    cache = ImageCache.build(_photos(tmp_path / "photos", 2), 16, tmp_path / "cache", workers=1, progress=False)
    _ = cache.images
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._images is None and np.array_equal(clone.images, cache.images)


def test_open_refuses_a_folder_that_is_not_a_cache(tmp_path: Path):
    with pytest.raises(DataError, match="is not a complete image cache"):
        ImageCache.open(tmp_path)


def test_default_cache_dir(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("LANDMARKS_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LANDMARKS_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "landmarks"


def _encoded(size: tuple[int, int], kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 60, 30)).save(buffer, kind)
    return buffer.getvalue()


def test_an_upload_is_decoded_at_reduced_scale_and_refused_over_the_pixel_limit():
    big_jpeg = _encoded((6000, 4000), "JPEG")  # 24 MP, decoded at 1/8 scale: 750 x 500
    pixels = decode_image_bytes(big_jpeg, 32, "big.jpg", max_pixels=1_000_000)
    assert pixels.shape == (32, 32, 3) and abs(int(pixels[..., 0].mean()) - 120) < 4
    with pytest.raises(ImageError, match=r"1500x1000 pixels to decode; at most 1 megapixels") as refused:
        decode_image_bytes(_encoded((1500, 1000), "PNG"), 32, "big.png", max_pixels=1_000_000)  # decoded at full size
    assert refused.value.kind == "too_large"


def test_a_kept_photo_is_scaled_down_to_its_longest_side():
    for size, kind, expected in (((5000, 1000), "JPEG", (2048, 410)), ((3000, 2000), "PNG", (2048, 1365)),
                                 ((640, 480), "JPEG", (640, 480))):
        kept = without_metadata(_encoded(size, kind), "p", max_side_px=2048, max_pixels=25_000_000)
        with Image.open(io.BytesIO(kept)) as image:
            assert image.size == expected and image.format == kind, (size, kind)
