"""GLDv2's tar shards read as they are published (``train/images_000.tar`` ..., members ``a/b/c/<id>.jpg``).

Two ways in:

- ``ShardIndex``: where each photo lies in which shard (its members' offsets, read from the tar headers once and
  kept beside the image cache); one photo's bytes are then a seek and a read (validation, the index, plots);
- ``ShardStream``: training photos streamed shard by shard with WebDataset, each DDP rank and each DataLoader
  worker its own shards (shuffled per epoch), photos shuffled within a buffer, decoded in the worker; memory holds
  the buffer, never the data set. An epoch interrupted after ``k`` batches resumes at batch ``k + 1``: each worker's
  stream is a function of (seed, epoch, its shards), and ``resume_roles`` tells which worker was next.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from landmarks.data.catalog import read_catalog
from landmarks.data.images import decode_image_bytes, default_cache_dir
from landmarks.errors import DataError, ImageError
from landmarks.utils import atomic_write_text

log = logging.getLogger(__name__)

SHARD_GLOB = "images_*.tar"
INDEX_VERSION = 1


def find_shards(data_dir: Path, split: str = "train") -> list[Path]:
    """The tar shards of a split, ``<data_dir>/<split>/images_NNN.tar``, in order (none: an empty list)."""
    folder = Path(data_dir) / split
    return sorted(folder.glob(SHARD_GLOB)) if folder.is_dir() else []


def photo_id(member: str) -> str:
    """``a/b/c/<id>.jpg`` (or a WebDataset key ``a/b/c/<id>``) -> ``<id>``."""
    name = member.replace("\\", "/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def _scan(shard: Path) -> list[tuple[str, int, int]]:
    """(id, data offset, size) of each JPEG member of a tar, from its headers alone (the data is skipped)."""
    members = []
    try:
        with tarfile.open(shard, "r:") as archive:
            for member in archive:
                if member.isfile() and member.name.lower().endswith((".jpg", ".jpeg")):
                    members.append((photo_id(member.name), member.offset_data, member.size))
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(f"{shard} is not a readable tar file ({error}).") from None
    return members


@dataclass
class ShardIndex:
    """Where each photo of a split's shards lies: ``locations[id] = (shard number, offset, size)``."""

    shards: list[str]
    locations: dict[str, tuple[int, int, int]]

    @classmethod
    def scan(cls, shards: Sequence[Path], cache_dir: str | Path | None = None) -> "ShardIndex":
        """Read the shards' headers, or the index an earlier run kept for the same files (size and mtime)."""
        shards = [Path(s).resolve() for s in shards]
        digest = hashlib.sha1(f"landmarks-shard-index v{INDEX_VERSION}".encode())
        for shard in shards:
            stat = shard.stat()
            digest.update(f"\n{shard}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
        kept = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / f"shards-{digest.hexdigest()}.json"
        if kept.exists():
            try:
                rows = json.loads(kept.read_text())
                return cls([str(s) for s in shards], {r[0]: (r[1], r[2], r[3]) for r in rows})
            except (OSError, ValueError, IndexError):
                log.warning("%s is unreadable; reading the shards' headers again", kept)
        locations: dict[str, tuple[int, int, int]] = {}
        for number, shard in enumerate(shards):
            for image_id, offset, size in _scan(shard):
                locations[image_id] = (number, offset, size)
        kept.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(kept, json.dumps([[k, *v] for k, v in locations.items()]))
        log.info("indexed %d photos in %d tar shards (%s)", len(locations), len(shards), kept)
        return cls([str(s) for s in shards], locations)

    def read(self, image_id: str) -> bytes:
        number, offset, size = self.locations[image_id]
        with open(self.shards[number], "rb") as handle:
            handle.seek(offset)
            return handle.read(size)

    def counts(self, wanted: set[str] | dict[str, int]) -> np.ndarray:
        """How many of the ``wanted`` photos each shard holds."""
        counts = np.zeros(len(self.shards), dtype=np.int64)
        for image_id in wanted:
            location = self.locations.get(image_id)
            if location is not None:
                counts[location[0]] += 1
        return counts


def assigned_shards(count: int, epoch: int, seed: int, rank: int, world: int, worker: int, workers: int) -> list[int]:
    """The shards one worker of one rank reads in an epoch: a permutation of all shards (the same on every rank,
    new each epoch), rank r taking every ``world``-th from r, its worker w every ``workers``-th of those from w."""
    order = np.random.default_rng([seed, epoch]).permutation(count)
    return [int(s) for s in order[rank::world][worker::workers]]


def batches_of(photos: int, batch_size: int) -> int:
    """Batches a worker makes of its photos: full ones and a last partial one unless it would hold one photo
    (BatchNorm cannot train on it)."""
    full, rest = divmod(int(photos), batch_size)
    return full + (1 if rest > 1 else 0)


def resume_roles(batches_per_worker: Sequence[int], done: int) -> tuple[list[int], list[int]]:
    """After ``done`` batches of an epoch: the workers that still have batches, in the order the DataLoader would
    next ask them, and how many batches each had given. A DataLoader asks its workers in turn (0, 1, ... and again),
    passing over those that have finished; the resumed loader's worker i plays ``roles[i]``, skipping ``skips[i]``."""
    consumed = [0] * len(batches_per_worker)
    turn, given = 0, 0
    while given < done and any(c < b for c, b in zip(consumed, batches_per_worker)):
        if consumed[turn] < batches_per_worker[turn]:
            consumed[turn] += 1
            given += 1
        turn = (turn + 1) % len(batches_per_worker)
    order = [(turn + i) % len(batches_per_worker) for i in range(len(batches_per_worker))]
    roles = [w for w in order if consumed[w] < batches_per_worker[w]]
    return roles, [consumed[w] for w in roles]


class ShardStream(IterableDataset):
    """An epoch of training photos from tar shards, in batches made in the DataLoader workers.

    ``labels`` maps the ids to train on to their class index (other members of the shards are passed over);
    ``roles[i]`` is the worker whose shards DataLoader worker i reads (all workers: ``range(workers)``), after
    skipping ``skips[i]`` batches (a resumed epoch; skipped photos are read but not decoded).
    """

    def __init__(self, index: ShardIndex, labels: dict[str, int], size_px: int, batch_size: int, epoch: int,
                 seed: int, workers: int, rank: int = 0, world: int = 1, buffer: int = 1000,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 roles: Sequence[int] | None = None, skips: Sequence[int] | None = None, raw: bool = False):
        self.index, self.labels, self.size_px, self.batch_size = index, labels, size_px, batch_size
        self.epoch, self.seed, self.workers, self.rank, self.world = epoch, seed, max(1, workers), rank, world
        self.buffer, self.transform = buffer, transform
        self.roles = list(range(self.workers)) if roles is None else list(roles)
        self.skips = [0] * len(self.roles) if skips is None else list(skips)
        self.raw = raw  # batches of undecoded JPEG bytes (1-D uint8 tensors) for ``decoded_on_gpu``

    def shards_of(self, worker: int) -> list[int]:
        return assigned_shards(len(self.index.shards), self.epoch, self.seed, self.rank, self.world, worker,
                               self.workers)

    def batches_per_worker(self) -> list[int]:
        counts = self.index.counts(self.labels)
        return [batches_of(counts[self.shards_of(w)].sum(), self.batch_size) for w in range(self.workers)]

    def __len__(self) -> int:
        per_worker = self.batches_per_worker()
        return sum(per_worker[role] - skip for role, skip in zip(self.roles, self.skips))

    def _samples(self, role: int) -> Iterator[dict]:
        import webdataset as wds

        urls = [self.index.shards[s] for s in self.shards_of(role)]
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{role}")
        return iter(wds.DataPipeline(
            wds.SimpleShardList(urls),
            wds.tarfile_to_samples(),
            wds.select(lambda sample: photo_id(sample["__key__"]) in self.labels and "jpg" in sample),
            wds.shuffle(self.buffer, initial=self.buffer, rng=rng),
        ))

    def _decoded(self, sample: dict) -> tuple[torch.Tensor, int] | None:
        image_id = photo_id(sample["__key__"])
        if self.raw:
            return torch.frombuffer(bytearray(sample["jpg"]), dtype=torch.uint8), self.labels[image_id]
        try:
            pixels = decode_image_bytes(sample["jpg"], self.size_px, f"{image_id}.jpg in {sample.get('__url__')}")
        except ImageError as error:
            log.warning("skipped: %s", error)
            return None
        image = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)  # writable: decoders give read-only arrays
        if self.transform is not None:
            image = self.transform(image)
        return image.float().div_(255.0), self.labels[image_id]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        slot = info.id if info is not None else 0
        if slot >= len(self.roles):
            return
        role, skip = self.roles[slot], self.skips[slot]
        samples = self._samples(role)
        for _ in range(skip * self.batch_size):  # the batches a resumed epoch already trained on: read, not decoded
            if next(samples, None) is None:
                return
        batch: list[tuple[torch.Tensor, int]] = []
        for sample in samples:
            decoded = self._decoded(sample)
            if decoded is None:
                continue
            batch.append(decoded)
            if len(batch) == self.batch_size:
                yield self._collate(batch)
                batch = []
        if len(batch) > 1:
            yield self._collate(batch)

    def _collate(self, batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]:
        images = [b[0] for b in batch]
        return images if self.raw else torch.stack(images), torch.tensor([b[1] for b in batch])


def decoded_on_gpu(batches: Iterable, size_px: int, device: torch.device,
                   transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of JPEG bytes (``ShardStream(raw=True)``) decoded on the GPU (nvJPEG through
    ``torchvision.io.decode_jpeg``), upright, squashed bilinearly to ``size_px`` and augmented there: float32 in
    [0, 1] on ``device``. CUDA only; the CPU path decodes in the workers (JPEG draft mode) instead."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if device.type != "cuda":
        raise ValueError("GPU JPEG decoding needs a CUDA device.")
    for encoded, labels in batches:
        images = decode_jpeg(list(encoded), mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
        squashed = [torch.nn.functional.interpolate(image[None].float(), size=(size_px, size_px), mode="bilinear",
                                                    antialias=True, align_corners=False)[0].round().clamp(0, 255)
                    .to(torch.uint8) for image in images]
        if transform is not None:
            squashed = [transform(image) for image in squashed]
        yield torch.stack(squashed).float().div_(255.0), labels


def pack_shards(photos: Sequence[tuple[str, Path]], out_dir: Path, per_shard: int) -> list[Path]:
    """Write photos (id, file) into GLDv2-style shards ``out_dir/images_NNN.tar`` with members ``a/b/c/<id>.jpg``,
    ``per_shard`` to a shard; the shards written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for number in range(math.ceil(len(photos) / per_shard)):
        path = out_dir / f"images_{number:03d}.tar"
        tmp = path.with_suffix(f".tar.tmp-{os.getpid()}")
        with tarfile.open(tmp, "w") as archive:
            for image_id, file in photos[number * per_shard : (number + 1) * per_shard]:
                archive.add(str(file), arcname=f"{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg")
        os.replace(tmp, path)
        written.append(path)
    return written


def pack_gldv2(data_dir: Path, out_dir: Path, per_shard: int = 1000) -> list[Path]:
    """A GLDv2 folder's training photos packed as GLDv2 publishes them (``out/train/images_NNN.tar``, photos in
    train.csv order), its CSV files copied and its other splits' folders linked: a folder to train on from shards."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not (data_dir / "train.csv").is_file():
        raise DataError(f"{data_dir} has no train.csv: only a GLDv2-layout folder can be packed into shards.")
    if per_shard < 1:
        raise DataError(f"--per-shard must be at least 1, got {per_shard}.")
    frame = read_catalog(data_dir, "train").frame
    present = [(str(i), Path(p)) for i, p in zip(frame["id"], frame["path"]) if os.path.isfile(p)]
    out_dir.mkdir(parents=True, exist_ok=True)
    for csv in data_dir.glob("*.csv"):
        (out_dir / csv.name).write_bytes(csv.read_bytes())
    for folder in data_dir.iterdir():
        if folder.is_dir() and folder.name != "train" and not (out_dir / folder.name).exists():
            (out_dir / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
    return pack_shards(present, out_dir / "train", per_shard)


__all__ = ["ShardIndex", "ShardStream", "assigned_shards", "batches_of", "decoded_on_gpu", "find_shards", "pack_gldv2", "pack_shards", "photo_id",
           "resume_roles"]

