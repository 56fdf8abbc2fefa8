"""Google Landmarks Dataset v2 from its official mirror: image shards (md5-verified, resumable) and metadata CSVs.

The layout, from https://github.com/cvdfoundation/google-landmark (README, version 2.1)::

    {base}/{split}/images_{NNN}.tar              train: 000-499, index: 000-099, test: 000-019 (~1 GB, 850 MB, 500 MB)
    {base}/md5sum/{split}/md5.images_{NNN}.txt   "<md5>  images_NNN.tar"
    {base}/metadata/train.csv, train_clean.csv, train_attribution.csv, train_label_to_category.csv
    {base}/metadata/index.csv, index_image_to_landmark.csv, index_label_to_category.csv
    {base}/metadata/test.csv, {base}/ground_truth/recognition_solution_v2.1.csv, retrieval_solution_v2.1.csv

What lands in ``out``: ``out/<split>/a/b/c/<id>.jpg`` (the tars hold ``a/b/c/<id>.jpg``) and the metadata CSVs
in ``out`` itself, so that ``read_catalog(out)`` reads a downloaded train split as it is. For the test split the
recognition ground truth is also written as ``test_solution.csv``, the name ``read_catalog(out, "test")`` looks for.

Book-keeping: a shard downloads to ``out/.partial/<split>/images_NNN.tar.part`` (HTTP Range resumes it after an
interruption); once its md5 matches and it is extracted, ``out/.done/<split>_NNN`` records it, the archive is
deleted, and a rerun skips the shard.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import tarfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from landmarks.errors import ConfigError, DataError
from landmarks.utils import progress_disabled

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://s3.amazonaws.com/google-landmark"
SHARD_COUNTS = {"train": 500, "index": 100, "test": 20}
METADATA_FILES = {
    "train": ("metadata/train.csv", "metadata/train_clean.csv", "metadata/train_attribution.csv",
              "metadata/train_label_to_category.csv"),
    "index": ("metadata/index.csv", "metadata/index_image_to_landmark.csv", "metadata/index_label_to_category.csv"),
    "test": ("metadata/test.csv", "ground_truth/recognition_solution_v2.1.csv", "ground_truth/retrieval_solution_v2.1.csv"),
}
SOLUTION_ALIASES = {"recognition_solution_v2.1.csv": "test_solution.csv"}  # the name read_catalog looks for
TIMEOUT_SECONDS = 60.0  # per connection attempt and per read
CHUNK_BYTES = 1 << 20
RETRY_BACKOFF_SECONDS = 2.0  # waits 2, 4, 8 ... s before retrying after a network error
USER_AGENT = "landmarks-gldv2-downloader/1.0"


@dataclass
class DownloadReport:
    """What a call to ``download_gldv2`` did."""

    shards_done: list[int] = field(default_factory=list)  # downloaded, verified and extracted now
    shards_skipped: list[int] = field(default_factory=list)  # already done by an earlier run
    bytes_downloaded: int = 0
    refetched: list[int] = field(default_factory=list)  # shards fetched again after a bad md5
    metadata_files: list[str] = field(default_factory=list)  # metadata files downloaded now


class _Transient(Exception):
    """A network failure worth retrying (timeout, reset connection, HTTP 5xx)."""


class _Stopped(Exception):
    """The download was cancelled (Ctrl-C in the main thread)."""


def parse_shards(text: str, split: str = "train") -> list[int]:
    """Shard numbers from ``"0-4,7"`` -> ``[0, 1, 2, 3, 4, 7]`` (sorted, unique), checked against the split's count."""
    count = _shard_count(split)
    shards: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ConfigError(f"Shards {text!r} must look like 0-4,7 (numbers and ranges separated by commas).")
        first, last = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if first > last:
            raise ConfigError(f"Shard range {part} runs backwards; write it as {last}-{first}.")
        if last >= count:
            raise ConfigError(f"The {split} split has shards 0-{count - 1}; {last} does not exist.")
        shards.update(range(first, last + 1))
    return sorted(shards)


def _shard_count(split: str) -> int:
    if split not in SHARD_COUNTS:
        raise ConfigError(f"Unknown GLDv2 split {split!r}; choose one of {', '.join(SHARD_COUNTS)}.")
    return SHARD_COUNTS[split]


def shard_url(base_url: str, split: str, shard: int) -> str:
    return f"{base_url.rstrip('/')}/{split}/images_{shard:03d}.tar"


def md5_url(base_url: str, split: str, shard: int) -> str:
    return f"{base_url.rstrip('/')}/md5sum/{split}/md5.images_{shard:03d}.txt"


def file_md5(path: Path) -> str:
    """The md5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Downloader:
    """Shared state of one ``download_gldv2`` call: the progress bar, the report, the stop flag."""

    def __init__(self, out_dir: Path, base_url: str, retries: int, progress: bool, keep_tars: bool = False):
        self.keep_tars = keep_tars
        self.out_dir = out_dir
        self.base_url = base_url
        self.retries = retries
        self.report = DownloadReport()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc="GLDv2", dynamic_ncols=True,
                        disable=not progress or progress_disabled())

    def say(self, line: str) -> None:
        """One line per finished file: above the bar when it shows, in the log otherwise."""
        if self.bar.disable:
            log.info("%s", line)
        else:
            self.bar.write(line)

    # -- HTTP ---------------------------------------------------------------------------------
    def _open(self, url: str, start: int = 0):
        headers = {"User-Agent": USER_AGENT}
        if start:
            headers["Range"] = f"bytes={start}-"
        try:
            return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_SECONDS)
        except urllib.error.HTTPError as error:
            if error.code == 416 and start:
                return error  # the caller checks: the partial file may already be complete
            error.close()
            if error.code >= 500 or error.code == 429:
                raise _Transient(f"{url} answered HTTP {error.code} {error.reason}") from None
            raise DataError(f"Downloading {url} failed with HTTP {error.code} {error.reason}; check the base URL "
                            f"and the shard numbers.") from None
        except (urllib.error.URLError, socket.timeout, ConnectionError, HTTPException) as error:
            reason = getattr(error, "reason", error)
            raise _Transient(f"cannot reach {urllib.parse.urlsplit(url).netloc} ({reason})") from None

    def _with_retries(self, what: str, action):
        """Run ``action`` and retry it on network failures (``retries`` times, with backoff)."""
        for attempt in range(self.retries + 1):
            if self.stop.is_set():
                raise _Stopped()
            try:
                return action()
            except _Transient as error:
                if attempt == self.retries:
                    raise DataError(f"Downloading {what} failed after {attempt + 1} attempts: {error}.") from None
                wait = RETRY_BACKOFF_SECONDS * 2**attempt
                log.warning("%s: %s; retrying in %.0f s", what, error, wait)
                if self.stop.wait(wait):
                    raise _Stopped() from None
        raise AssertionError("unreachable")  # pragma: no cover

    def fetch_text(self, url: str) -> str:
        def action() -> str:
            try:
                with self._open(url) as response:
                    return response.read().decode("utf-8", errors="replace")
            except (socket.timeout, ConnectionError, HTTPException) as error:
                raise _Transient(f"reading {url} failed ({error})") from None

        return self._with_retries(url, action)

    def fetch_file(self, url: str, part: Path) -> None:
        """Download ``url`` into ``part``, resuming from the bytes already there (HTTP Range)."""

        def action() -> None:
            start = part.stat().st_size if part.exists() else 0
            response = self._open(url, start)
            with response:
                status = getattr(response, "status", None) or response.getcode()
                if status == 416:  # nothing left to send: the part is complete (or longer; the md5 will tell)
                    return
                length = int(response.headers.get("Content-Length") or 0)
                if start and status == 206:
                    content_range = response.headers.get("Content-Range", "")
                    if not content_range.startswith(f"bytes {start}-"):
                        raise _Transient(f"{url} answered the range {content_range!r} for bytes {start}-")
                    mode = "ab"
                else:
                    if start:
                        log.info("%s ignored the Range request; downloading it again from the start", url)
                    mode = "wb"
                with self.lock:
                    self.bar.total = (self.bar.total or 0) + length
                    self.bar.refresh()
                try:
                    with open(part, mode) as handle:
                        while chunk := response.read(CHUNK_BYTES):
                            if self.stop.is_set():
                                raise _Stopped()
                            handle.write(chunk)
                            with self.lock:
                                self.report.bytes_downloaded += len(chunk)
                                self.bar.update(len(chunk))
                except (socket.timeout, ConnectionError, HTTPException) as error:
                    raise _Transient(f"the transfer of {url} broke off ({error})") from None
                if length and status == 206 and part.stat().st_size != start + length:
                    raise _Transient(f"the transfer of {url} ended early")
                if length and status == 200 and part.stat().st_size != length:
                    raise _Transient(f"the transfer of {url} ended early")

        part.parent.mkdir(parents=True, exist_ok=True)
        self._with_retries(url, action)

    # -- shards -------------------------------------------------------------------------------
    def shard(self, split: str, shard: int) -> str:
        """Download, verify and extract one shard; 'skipped' when an earlier run did it."""
        name = f"images_{shard:03d}.tar"
        done = self.out_dir / ".done" / f"{split}_{shard:03d}"
        if done.exists():
            return "skipped"
        listed = self.fetch_text(md5_url(self.base_url, split, shard)).split()
        expected = listed[0].lower() if listed else ""
        if not re.fullmatch(r"[0-9a-f]{32}", expected):
            raise DataError(f"The md5 file of {split} shard {shard:03d} holds no md5 sum.")
        part = self.out_dir / ".partial" / split / f"{name}.part"
        url = shard_url(self.base_url, split, shard)
        for attempt in range(self.retries + 1):
            self.fetch_file(url, part)
            actual = file_md5(part)
            if actual == expected:
                break
            part.unlink(missing_ok=True)  # never keep a corrupt archive: the next attempt starts from zero
            if attempt == self.retries:
                raise DataError(f"The {split} shard {shard:03d} failed its md5 check {attempt + 1} times "
                                f"(expected {expected}, got {actual}); nothing of it was extracted.")
            log.warning("%s shard %03d: md5 %s instead of %s; fetching it again", split, shard, actual, expected)
            with self.lock:
                if shard not in self.report.refetched:
                    self.report.refetched.append(shard)
        if self.keep_tars:  # kept as published, for data.cache=none to stream (landmarks.data.shards)
            kept = self.out_dir / split / name
            kept.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, kept)
            done.parent.mkdir(parents=True, exist_ok=True)
            done.write_text(f"{expected}  {name}\nkept as {kept}\n")
            return "kept as a tar"
        files = extract_shard(part, self.out_dir / split, f"{split} shard {shard:03d}")
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(f"{expected}  {name}\n{files} files\n")
        part.unlink(missing_ok=True)
        return f"{files} images"

    def metadata(self, split: str) -> None:
        for remote in METADATA_FILES[split]:
            name = remote.rsplit("/", 1)[-1]
            target = self.out_dir / name
            if not target.exists():
                part = self.out_dir / ".partial" / "metadata" / f"{name}.part"
                self.fetch_file(f"{self.base_url.rstrip('/')}/{remote}", part)
                os.replace(part, target)
                self.report.metadata_files.append(name)
                self.say(f"{name}: downloaded")
            alias = SOLUTION_ALIASES.get(name)
            if alias and not (self.out_dir / alias).exists():
                shutil.copyfile(target, self.out_dir / alias)


def _checked_members(archive: tarfile.TarFile, what: str) -> list[tarfile.TarInfo]:
    """The regular files of an archive; DataError for a member that is a link, a device, absolute or climbs out."""
    members = []
    for member in archive.getmembers():
        path = member.name.replace("\\", "/")
        if path.startswith("/") or re.match(r"^[A-Za-z]:", path) or ".." in path.split("/"):
            raise DataError(f"The {what} archive has the unsafe path {member.name!r}; nothing of it was extracted.")
        if member.isdir():
            continue
        if not member.isfile():
            raise DataError(f"The {what} archive holds {member.name!r}, which is not a regular file; "
                            f"nothing of it was extracted.")
        members.append(member)
    return members


def extract_shard(archive_path: Path, destination: Path, what: str = "shard") -> int:
    """Extract the regular files of a tar into ``destination`` after checking every member; their count."""
    destination.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive_path, "r:*") as archive:
            members = _checked_members(archive, what)
            archive.extractall(destination, members=members, filter="data")
    except (tarfile.TarError, EOFError) as error:
        raise DataError(f"The {what} archive is not a readable tar file ({error}).") from None
    return len(members)


def download_gldv2(
    split: str,
    out_dir: Path,
    shards: Sequence[int] | None = None,
    metadata: bool = False,
    base_url: str = DEFAULT_BASE_URL,
    workers: int = 4,
    progress: bool = True,
    retries: int = 3,
    keep_tars: bool = False,
) -> DownloadReport:
    """Download GLDv2 image shards of ``split`` (all when ``shards`` is None) into ``out_dir/<split>/a/b/c/<id>.jpg``,
    md5-verified, several at once, resuming partial downloads and skipping shards an earlier run finished;
    with ``metadata``, also the split's CSVs into ``out_dir``; with ``keep_tars``, the verified shards stay tars in
    ``out_dir/<split>/images_NNN.tar`` (nothing extracted)."""
    count = _shard_count(split)
    wanted = list(range(count)) if shards is None else sorted({int(s) for s in shards})
    outside = [s for s in wanted if not 0 <= s < count]
    if outside:
        raise ConfigError(f"The {split} split has shards 0-{count - 1}; {outside[0]} does not exist.")
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}.")
    if retries < 0:
        raise ConfigError(f"retries must be 0 or more, got {retries}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    downloader = _Downloader(out_dir, base_url, retries, progress, keep_tars)
    report = downloader.report
    failures: list[tuple[int, str]] = []
    try:
        if metadata:
            downloader.metadata(split)
        with ThreadPoolExecutor(max_workers=min(workers, max(1, len(wanted))), thread_name_prefix="gldv2") as pool:
            futures = {pool.submit(downloader.shard, split, shard): shard for shard in wanted}
            try:
                for future in as_completed(futures):
                    shard = futures[future]
                    try:
                        outcome = future.result()
                    except DataError as error:
                        failures.append((shard, str(error)))
                        downloader.say(f"{split} shard {shard:03d}: failed: {error}")
                        continue
                    (report.shards_skipped if outcome == "skipped" else report.shards_done).append(shard)
                    downloader.say(f"{split} shard {shard:03d}: {'already done' if outcome == 'skipped' else outcome}")
            except BaseException:  # Ctrl-C or an unexpected error (a full disk): stop the other downloads too
                downloader.stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        downloader.bar.close()
    report.shards_done.sort()
    report.shards_skipped.sort()
    report.refetched.sort()
    if failures:
        failures.sort()
        message = failures[0][1].rstrip(".")
        others = f", and {len(failures) - 1} more shards failed" if len(failures) > 1 else ""
        raise DataError(f"{message}{others} ({len(report.shards_done) + len(report.shards_skipped)} shards are done; "
                        f"rerun to retry the rest).")
    return report
