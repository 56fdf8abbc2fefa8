"""Tar shards as GLDv2 publishes them: the index, the streamed epoch (ranks, workers, buffer) and its resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from tests_helpers import build_tiny_gldv2
from landmarks.data.catalog import read_catalog
from landmarks.data.images import decode_image
from landmarks.data.shards import (ShardIndex, ShardStream, assigned_shards, find_shards, pack_gldv2, photo_id,
                                   resume_roles)


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny GLDv2 folder (48 training photos) and the same packed into 5 shards of 10."""
    root = tmp_path_factory.mktemp("shards")
    source = build_tiny_gldv2(root / "files")
    pack_gldv2(source, root / "tars", per_shard=10)
    return source, root / "tars"


def _labels(source: Path) -> dict[str, int]:
    frame = read_catalog(source, "train").frame
    return dict(zip(frame["id"].astype(str), frame["landmark_id"].astype(int)))


def test_packed_shards_hold_every_photo_byte_for_byte(packed: tuple[Path, Path], tmp_path: Path) -> None:
    source, tars = packed
    shards = find_shards(tars)
    assert [s.name for s in shards] == [f"images_{i:03d}.tar" for i in range(5)]
    index = ShardIndex.scan(shards, tmp_path)
    frame = read_catalog(source, "train").frame
    assert set(index.locations) == set(frame["id"])
    for image_id, path in zip(frame["id"], frame["path"]):
        assert index.read(image_id) == Path(path).read_bytes()
    assert index.counts(set(frame["id"])).tolist() == [10, 10, 10, 10, 8]
    again = ShardIndex.scan(shards, tmp_path)  # read back from the kept index
    assert again.locations == index.locations
    assert photo_id("a/b/c/abc123.jpg") == "abc123" == photo_id("a/b/c/abc123")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_streamed_epoch_gives_every_photo_once_with_its_label_as_the_files_decode(
        packed: tuple[Path, Path], tmp_path: Path, workers: int) -> None:
    source, tars = packed
    labels = _labels(source)
    index = ShardIndex.scan(find_shards(tars), tmp_path)
    stream = ShardStream(index, labels, 24, 4, epoch=0, seed=1, workers=workers, buffer=8)
    batches = list(DataLoader(stream, batch_size=None, num_workers=workers))
    assert len(batches) == len(stream)
    frame = read_catalog(source, "train").frame
    by_pixels = {decode_image(p, 24).tobytes(): (str(i), int(l)) for i, p, l in
                 zip(frame["id"], frame["path"], frame["landmark_id"])}
    seen = []
    for images, targets in batches:
        for image, target in zip(images, targets):
            pixels = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy().tobytes()
            image_id, label = by_pixels[pixels]
            assert label == int(target) == labels[image_id]
            seen.append(image_id)
    assert sorted(seen) == sorted(labels)  # each photo once
    first = ShardStream(index, labels, 24, 4, epoch=0, seed=1, workers=1, buffer=8)
    other = ShardStream(index, labels, 24, 4, epoch=1, seed=1, workers=1, buffer=8)
    orders = [[photo_id(s["__key__"]) for s in stream._samples(0)] for stream in (first, other)]
    assert sorted(orders[0]) == sorted(orders[1]) and orders[0] != orders[1]  # another epoch, another order


def test_shards_are_split_between_ranks_and_workers_without_overlap() -> None:
    for epoch in range(3):
        parts = [assigned_shards(11, epoch, 5, rank, 2, worker, 3) for rank in range(2) for worker in range(3)]
        flat = [s for part in parts for s in part]
        assert sorted(flat) == list(range(11))  # every shard once, on one rank and one worker
    assert assigned_shards(11, 0, 5, 0, 2, 0, 3) != assigned_shards(11, 1, 5, 0, 2, 0, 3)


def test_resume_roles_by_hand() -> None:
    # workers with 1, 3 and 2 batches: asked 0,1,2, 1,2, 1
    assert resume_roles([1, 3, 2], 0) == ([0, 1, 2], [0, 0, 0])
    assert resume_roles([1, 3, 2], 2) == ([2, 1], [0, 1])  # worker 2 is next, then worker 1 (worker 0 is done)
    assert resume_roles([1, 3, 2], 4) == ([2, 1], [1, 2])
    assert resume_roles([1, 3, 2], 6) == ([], [])


@pytest.mark.parametrize("done", [1, 2, 3, 5])
def test_a_resumed_stream_continues_with_the_next_batch(packed: tuple[Path, Path], tmp_path: Path, done: int) -> None:
    """Two workers of unequal length (3 and 2 shards): the batches after ``done`` are those of the whole epoch."""
    source, tars = packed
    labels = _labels(source)
    index = ShardIndex.scan(find_shards(tars), tmp_path)
    whole = ShardStream(index, labels, 16, 4, epoch=0, seed=3, workers=2, buffer=6)
    expected = [t.tolist() for _, t in DataLoader(whole, batch_size=None, num_workers=2)]
    per_worker = whole.batches_per_worker()
    assert sum(per_worker) == len(expected) and per_worker[0] != per_worker[1]
    roles, skips = resume_roles(per_worker, done)
    rest = ShardStream(index, labels, 16, 4, epoch=0, seed=3, workers=2, buffer=6, roles=roles, skips=skips)
    got = [t.tolist() for _, t in DataLoader(rest, batch_size=None, num_workers=len(roles))]
    assert got == expected[done:]


def _rank_ids(rank: int, world: int, tars: str, labels: dict[str, int], cache: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{cache}/rendezvous", rank=rank, world_size=world)
    from landmarks.train import distributed

    index = ShardIndex.scan(find_shards(Path(tars)), cache)
    stream = ShardStream(index, labels, 16, 4, epoch=0, seed=1, workers=1, rank=distributed.rank(),
                         world=distributed.world_size(), buffer=4)
    seen = [photo_id(s["__key__"]) for s in stream._samples(0)]
    shards = sorted({index.locations[i][0] for i in seen})
    gathered: list = [None] * world
    dist.all_gather_object(gathered, shards)
    if rank == 0:
        Path(out).write_text(repr(gathered))
    dist.destroy_process_group()


def test_two_gloo_processes_read_disjoint_shards(packed: tuple[Path, Path], tmp_path: Path) -> None:
    source, tars = packed
    out = tmp_path / "shards.txt"
    torch.multiprocessing.spawn(_rank_ids, args=(2, str(tars), _labels(source), str(tmp_path), str(out)), nprocs=2)
    first, second = eval(out.read_text())  # noqa: S307 - written by the test above
    assert first and second and not set(first) & set(second) and sorted(first + second) == list(range(5))


def test_raw_batches_hold_the_jpeg_bytes_for_gpu_decoding(packed: tuple[Path, Path], tmp_path: Path) -> None:
    """The batches the GPU decoder gets are the members' bytes as they lie in the shards (decoding itself needs CUDA)."""
    source, tars = packed
    labels = _labels(source)
    index = ShardIndex.scan(find_shards(tars), tmp_path)
    encoded, targets = next(iter(ShardStream(index, labels, 16, 4, epoch=0, seed=1, workers=1, raw=True)))
    assert len(encoded) == 4 and len(targets) == 4
    by_bytes = {index.read(i): labels[i] for i in labels}
    assert [by_bytes[bytes(e.numpy())] for e in encoded] == targets.tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU JPEG decoding needs CUDA")
def test_gpu_decoding_gives_the_photos_the_cpu_decodes(packed: tuple[Path, Path], tmp_path: Path) -> None:
    from landmarks.data.shards import decoded_on_gpu

    source, tars = packed
    labels = _labels(source)
    index = ShardIndex.scan(find_shards(tars), tmp_path)
    raw = ShardStream(index, labels, 16, 4, epoch=0, seed=1, workers=1, raw=True)
    cpu = ShardStream(index, labels, 16, 4, epoch=0, seed=1, workers=1)
    (gpu_images, gpu_labels), (cpu_images, cpu_labels) = next(decoded_on_gpu(raw, 16, torch.device("cuda"))), next(iter(cpu))
    assert torch.equal(gpu_labels, cpu_labels)
    assert (gpu_images.cpu() - cpu_images).abs().mean() < 0.05  # another decoder and resampler, the same photos
