"""GLDv2 downloader against a real HTTP server on 127.0.0.1 that serves tiny shards, md5 files and metadata."""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import tarfile
import threading
from pathlib import Path

import pytest
from PIL import Image

from landmarks.data import download as download_module
from landmarks.data.download import DownloadReport, download_gldv2, parse_shards
from landmarks.errors import ConfigError, DataError


def jpeg_bytes(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def tar_bytes(entries: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, payload in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
        for info in extra or []:
            archive.addfile(info)
    return buffer.getvalue()


def shard_images(shard: int) -> dict[str, bytes]:
    """Three photos per shard, at a/b/c/<id>.jpg as in the real tars."""
    images = {}
    for i in range(3):
        image_id = f"{shard:x}{i:x}{(shard + i) % 16:x}{shard:04x}{i:09x}"
        images[f"{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg"] = jpeg_bytes((40 * shard, 60 * i, 90))
    return images


class Site:
    """What the test server serves: path -> bytes, or a list of bytes served one after the other (last one stays)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes | list[bytes]] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.ignore_range = False
        self.lock = threading.Lock()

    def add_shard(self, split: str, shard: int, payload: bytes, served: list[bytes] | None = None) -> None:
        name = f"images_{shard:03d}.tar"
        self.files[f"/{split}/{name}"] = served if served is not None else payload
        self.files[f"/md5sum/{split}/md5.{name.replace('.tar', '.txt')}"] = (
            f"{hashlib.md5(payload).hexdigest()}  {name}\n".encode())

    def body(self, path: str) -> bytes | None:
        with self.lock:
            item = self.files.get(path)
            if isinstance(item, list):
                return item.pop(0) if len(item) > 1 else item[0]
            return item

    def tar_requests(self, shard: int | None = None) -> list[tuple[str, str | None]]:
        suffix = f"images_{shard:03d}.tar" if shard is not None else ".tar"
        return [r for r in self.requests if r[0].endswith(suffix)]


@pytest.fixture
def site():
    """(Site, base URL) of a ThreadingHTTPServer on 127.0.0.1 that honours ``Range: bytes=N-`` (206 replies)."""
    served = Site()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            requested_range = self.headers.get("Range")
            with served.lock:
                served.requests.append((self.path, requested_range))
            body = served.body(self.path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", requested_range or "")
            if match and not served.ignore_range:
                start = int(match[1])
                end = int(match[2]) if match[2] else len(body) - 1
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                chunk = body[start : end + 1]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{start + len(chunk) - 1}/{len(body)}")
            else:
                chunk = body
                self.send_response(200)
            self.send_header("Content-Length", str(len(chunk)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            self.wfile.write(chunk)

        def log_message(self, *args) -> None:  # keep pytest's output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_module, "RETRY_BACKOFF_SECONDS", 0.0)
    monkeypatch.setattr(download_module, "TIMEOUT_SECONDS", 5.0)


def add_train_metadata(site: Site, shards: list[int]) -> dict[str, bytes]:
    ids = [Path(name).stem for shard in shards for name in shard_images(shard)]
    files = {
        "train.csv": ("id,url,landmark_id\n" + "".join(f"{i},http://x/{i}.jpg,{n % 2}\n" for n, i in enumerate(ids))).encode(),
        "train_clean.csv": b"landmark_id,images\n0 " + b" ".join(i.encode() for i in ids[::2]) + b"\n",
        "train_attribution.csv": b"id,url,author,license,title\n",
        "train_label_to_category.csv": b"landmark_id,category\n0,http://commons.wikimedia.org/wiki/Category:A\n",
    }
    for name, payload in files.items():
        site.files[f"/metadata/{name}"] = payload
    return files


def test_download_verify_extract_and_metadata(site, tmp_path: Path):
    server, base = site
    tars = {shard: tar_bytes(shard_images(shard)) for shard in (0, 1, 2)}
    for shard, payload in tars.items():
        server.add_shard("train", shard, payload)
    metadata = add_train_metadata(server, [0, 2])

    report = download_gldv2("train", tmp_path, shards=[0, 2], metadata=True, base_url=base, workers=2, progress=False)

    assert isinstance(report, DownloadReport)
    assert report.shards_done == [0, 2] and report.shards_skipped == [] and report.refetched == []
    assert report.bytes_downloaded == len(tars[0]) + len(tars[2]) + sum(len(p) for p in metadata.values())
    assert sorted(report.metadata_files) == sorted(metadata)
    for shard in (0, 2):
        for name, payload in shard_images(shard).items():
            path = tmp_path / "train" / name
            assert path.read_bytes() == payload
            with Image.open(path) as image:
                assert image.size == (8, 6)
        assert (tmp_path / ".done" / f"train_{shard:03d}").is_file()
    assert not any((tmp_path / "train" / name).exists() for name in shard_images(1))
    assert server.tar_requests(1) == []
    for name, payload in metadata.items():
        assert (tmp_path / name).read_bytes() == payload
    assert list((tmp_path / ".partial").rglob("*.part")) == []  # verified archives are deleted once extracted

    from landmarks.data.catalog import read_catalog

    catalog = read_catalog(tmp_path)  # train.csv + train/a/b/c/<id>.jpg: readable as it lands
    assert len(catalog.frame) == 6 and all(Path(p).is_file() for p in catalog.frame["path"])


def test_resume_with_a_range_request(site, tmp_path: Path):
    server, base = site
    payload = tar_bytes(shard_images(3))
    server.add_shard("test", 3, payload)
    half = len(payload) // 2
    part = tmp_path / ".partial" / "test" / "images_003.tar.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(payload[:half])

    report = download_gldv2("test", tmp_path, shards=[3], base_url=base, progress=False)

    assert server.tar_requests(3) == [("/test/images_003.tar", f"bytes={half}-")]
    assert report.shards_done == [3] and report.bytes_downloaded == len(payload) - half
    for name, image in shard_images(3).items():
        assert (tmp_path / "test" / name).read_bytes() == image


def test_resume_falls_back_to_a_full_download_when_range_is_ignored(site, tmp_path: Path):
    server, base = site
    server.ignore_range = True
    payload = tar_bytes(shard_images(4))
    server.add_shard("train", 4, payload)
    part = tmp_path / ".partial" / "train" / "images_004.tar.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(payload[:100])

    report = download_gldv2("train", tmp_path, shards=[4], base_url=base, progress=False)

    assert server.tar_requests(4)[0][1] == "bytes=100-"  # asked for the rest, got the whole file
    assert report.shards_done == [4] and report.bytes_downloaded == len(payload) and report.refetched == []
    for name, image in shard_images(4).items():
        assert (tmp_path / "train" / name).read_bytes() == image


def test_a_complete_partial_file_is_verified_without_downloading_again(site, tmp_path: Path):
    server, base = site
    payload = tar_bytes(shard_images(5))
    server.add_shard("train", 5, payload)
    part = tmp_path / ".partial" / "train" / "images_005.tar.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(payload)

    report = download_gldv2("train", tmp_path, shards=[5], base_url=base, progress=False)

    assert server.tar_requests(5) == [("/train/images_005.tar", f"bytes={len(payload)}-")]  # answered 416
    assert report.shards_done == [5] and report.bytes_downloaded == 0


def test_a_corrupt_download_is_fetched_again(site, tmp_path: Path):
    server, base = site
    payload = tar_bytes(shard_images(1))
    corrupt = bytearray(payload)
    corrupt[700] ^= 0xFF  # inside the first member's data: still a tar, wrong md5
    server.add_shard("train", 1, payload, served=[bytes(corrupt), payload])

    report = download_gldv2("train", tmp_path, shards=[1], base_url=base, progress=False)

    assert report.refetched == [1] and report.shards_done == [1]
    assert len(server.tar_requests(1)) == 2 and all(r[1] is None for r in server.tar_requests(1))
    for name, image in shard_images(1).items():
        assert (tmp_path / "train" / name).read_bytes() == image


def test_an_always_corrupt_shard_raises_and_extracts_nothing(site, tmp_path: Path):
    server, base = site
    good = tar_bytes(shard_images(0))
    server.add_shard("train", 0, good)
    payload = tar_bytes(shard_images(7))
    server.add_shard("train", 7, payload, served=[payload[:-1024] + bytes(1024) + b"x"])

    with pytest.raises(DataError, match=r"train shard 007 failed its md5 check 3 times") as caught:
        download_gldv2("train", tmp_path, shards=[0, 7], base_url=base, progress=False, retries=2)

    assert "\n" not in str(caught.value)
    assert len(server.tar_requests(7)) == 3  # the first try and 2 re-fetches
    assert not any((tmp_path / "train" / name).exists() for name in shard_images(7))
    assert not (tmp_path / ".done" / "train_007").exists()
    assert not (tmp_path / ".partial" / "train" / "images_007.tar.part").exists()  # no corrupt archive is kept
    assert (tmp_path / ".done" / "train_000").exists()  # the good shard still finished


def test_a_rerun_skips_done_shards(site, tmp_path: Path):
    server, base = site
    for shard in (0, 1):
        server.add_shard("index", shard, tar_bytes(shard_images(shard)))
    first = download_gldv2("index", tmp_path, shards=[0, 1], base_url=base, progress=False)
    assert first.shards_done == [0, 1]
    requests_before = len(server.requests)

    second = download_gldv2("index", tmp_path, shards=[0, 1], base_url=base, progress=False)

    assert second.shards_done == [] and second.shards_skipped == [0, 1] and second.bytes_downloaded == 0
    assert len(server.requests) == requests_before  # not even the md5 files


@pytest.mark.parametrize("member", ["../evil.jpg", "/tmp/evil.jpg", "a/../../evil.jpg", "link"])
def test_unsafe_members_are_refused(site, tmp_path: Path, member: str):
    server, base = site
    images = shard_images(2)
    if member == "link":
        link = tarfile.TarInfo("a/b/c/link.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        payload = tar_bytes(images, extra=[link])
    else:
        payload = tar_bytes({**images, member: b"evil"})
    server.add_shard("train", 2, payload)
    out = tmp_path / "out"

    with pytest.raises(DataError, match=r"train shard 002 archive .*nothing of it was extracted"):
        download_gldv2("train", out, shards=[2], base_url=base, progress=False)

    assert not (tmp_path / "evil.jpg").exists() and not (out / "evil.jpg").exists()
    assert not any((out / "train" / name).exists() for name in images)
    assert not (out / ".done" / "train_002").exists()


def test_http_errors_are_one_sentence(site, tmp_path: Path):
    server, base = site  # serves nothing
    with pytest.raises(DataError, match=r"HTTP 404.*check the base URL") as caught:
        download_gldv2("train", tmp_path, shards=[0], base_url=base, progress=False)
    assert "\n" not in str(caught.value)
    with pytest.raises(DataError, match=r"HTTP 404"):
        download_gldv2("test", tmp_path, shards=[], metadata=True, base_url=base, progress=False)


def test_an_unreachable_host_is_a_data_error(tmp_path: Path):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DataError, match=r"failed after 2 attempts: cannot reach 127\.0\.0\.1"):
        download_gldv2("train", tmp_path, shards=[0], base_url=f"http://127.0.0.1:{port}", progress=False, retries=1)


def test_test_split_metadata_adds_the_solution_name_read_catalog_expects(site, tmp_path: Path):
    server, base = site
    server.files["/metadata/test.csv"] = b"id\n0123456789abcdef\n"
    server.files["/ground_truth/recognition_solution_v2.1.csv"] = b"id,landmarks,Usage\n0123456789abcdef,7,Private\n"
    server.files["/ground_truth/retrieval_solution_v2.1.csv"] = b"id,images,Usage\n0123456789abcdef,None,Ignored\n"

    report = download_gldv2("test", tmp_path, shards=[], metadata=True, base_url=base, progress=False)

    assert sorted(report.metadata_files) == ["recognition_solution_v2.1.csv", "retrieval_solution_v2.1.csv", "test.csv"]
    assert (tmp_path / "test_solution.csv").read_bytes() == (tmp_path / "recognition_solution_v2.1.csv").read_bytes()
    again = download_gldv2("test", tmp_path, shards=[], metadata=True, base_url=base, progress=False)
    assert again.metadata_files == [] and len(server.requests) == 3


def test_parse_shards():
    assert parse_shards("0-4,7") == [0, 1, 2, 3, 4, 7]
    assert parse_shards(" 7, 3-4 ,3 ", "test") == [3, 4, 7]
    assert parse_shards("499") == [499]
    assert parse_shards("99", "index") == [99]
    for text, message in [("5-2", "runs backwards"), ("0-500", "shards 0-499"), ("20", "shards 0-19"),
                          ("a", "must look like"), ("1,,2", "must look like"), ("-3", "must look like")]:
        with pytest.raises(ConfigError, match=message):
            parse_shards(text, "test" if text == "20" else "train")
    with pytest.raises(ConfigError, match="Unknown GLDv2 split"):
        parse_shards("0", "val")


def test_bad_arguments(tmp_path: Path):
    with pytest.raises(ConfigError, match="shards 0-19"):
        download_gldv2("test", tmp_path, shards=[20], progress=False)
    with pytest.raises(ConfigError, match="Unknown GLDv2 split"):
        download_gldv2("valid", tmp_path, shards=[0], progress=False)
    with pytest.raises(ConfigError, match="workers"):
        download_gldv2("test", tmp_path, shards=[0], workers=0, progress=False)


def test_the_cli_downloads_a_corrupt_shard_again_and_reports_it(site, tmp_path: Path, capsys: pytest.CaptureFixture):
    from landmarks.cli import main

    server, base = site
    good = tar_bytes(shard_images(0))
    server.add_shard("train", 0, good, served=[good[:-10] + b"corrupted!", good])
    out = tmp_path / "gld"

    code = main(["-q", "download", "gldv2", "--split", "train", "--shards", "0", "--base-url", base, "--out", str(out)])

    assert code == 0
    printed = capsys.readouterr().out
    assert "1 shards downloaded" in printed and "1 re-fetched after a bad md5" in printed
    assert all((out / "train" / name).read_bytes() == payload for name, payload in shard_images(0).items())
    assert main(["download", "gldv2", "--split", "train", "--shards", "9-2", "--out", str(out)]) == 2
    assert "landmarks: error:" in capsys.readouterr().err
