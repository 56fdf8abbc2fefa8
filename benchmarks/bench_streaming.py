"""Training data at scale: the memory-mapped cache against photos decoded every epoch, from files and tar shards.

    .venv/bin/python benchmarks/bench_streaming.py --write                 # 2,000 and 8,000 photos
    .venv/bin/python benchmarks/bench_streaming.py --photos 500 --batches 5   # a quick look

The benchmark writes a synthetic GLDv2-shaped set per size (JPEGs of 320 x 240 px in train/a/b/c/<id>.jpg, one landmark
per 10 photos with long-tailed counts (Zipf), train.csv, and the same photos packed as 10 tar shards
train/images_NNN.tar in a second folder), then, each in a fresh process: prepares the data (``memmap``: decoding every
photo into the image cache first; ``none``: nothing to decode; ``tars``: reading the shards' headers) and trains one
epoch (at most ``--batches`` batches) of a tiny backbone (timm's test_efficientnet, ArcFace head) at 128 px, batch 64,
2 DataLoader workers, so that reading and decoding photos, not the network, is what is measured.
Memory: peak RSS (VmHWM) of the training process and of its largest DataLoader worker; the memory map's pages count in
the RSS of whoever reads them.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table, peak_rss_mb, publish  # noqa: E402

TITLE = "Streamed training data: memmap, none and tar shards (bench_streaming.py)"
MODES = ("memmap", "none", "tars")


def generate(photos: int, root: Path, seed: int = 0) -> tuple[Path, Path]:
    """``root/files`` (GLDv2 layout) and ``root/tars`` (the same as 10 shards)."""
    import numpy as np
    from PIL import Image

    from landmarks.data.shards import pack_gldv2

    rng = np.random.default_rng(seed)
    landmarks = max(2, photos // 10)
    weights = 1.0 / np.arange(1, landmarks + 1) ** 0.9
    labels = np.concatenate([np.arange(landmarks), rng.choice(landmarks, photos - landmarks, p=weights / weights.sum())])
    files = root / "files"
    rows = []
    yy, xx = np.mgrid[0:240, 0:320]
    for number, label in enumerate(labels):
        image_id = f"{rng.integers(0, 16**15):015x}{number % 16:x}"
        colour = np.array([(label * 37) % 255, (label * 91) % 255, (label * 53) % 255], dtype=np.float32)
        pixels = colour + 60 * np.sin((xx + number) / (7 + label % 13))[..., None] + rng.normal(0, 6, (240, 320, 3))
        path = files / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=85)
        rows.append(f"{image_id},{1000 + int(label)}")
    (files / "train.csv").write_text("id,landmark_id\n" + "\n".join(rows) + "\n")
    pack_gldv2(files, root / "tars", per_shard=-(-photos // 10))
    return files, root / "tars"


def measure(mode: str, data: Path, cache: Path, batches: int) -> dict:
    import itertools

    import torch

    from landmarks.config import load_config
    from landmarks.data.prepared import prepare_data
    from landmarks.run_folder import RunFolder
    from landmarks.train import loop
    from landmarks.train.loop import Trainer

    torch.set_num_threads(1)
    config = load_config("glr", [
        "model.backbone=test_efficientnet", "model.pretrained=none", "model.embedding_dim=64",
        "model.descriptor_dims=0", "data.image_size_px=128", f"data.cache={'memmap' if mode == 'memmap' else 'none'}",
        f"data.cache_dir={cache}", "train.freeze_backbone_epochs=0", "train.batch_size=64", "train.workers=2",
        "data.val_fraction=0.05", "data.test_fraction=0.05"])
    started = time.monotonic()
    prepared = prepare_data(config, data)
    prepare_s = time.monotonic() - started
    run = Path(tempfile.mkdtemp(prefix="bench-stream-run-"))
    trainer = Trainer(config, prepared, RunFolder(run))
    original = trainer.loader

    def limited(split: str, train: bool, skip: int = 0):
        return itertools.islice(original(split, train, skip), batches)

    trainer.loader = limited  # type: ignore[method-assign]
    stats = trainer.run_epoch("train", train=True)
    shutil.rmtree(run, ignore_errors=True)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    cached = sum(f.stat().st_size for f in cache.rglob("images.u8")) / 1e6 if cache.exists() else 0.0
    assert loop is not None
    return {"mode": mode, "photos": len(prepared.frame), "prepare_s": prepare_s, "images": stats["images"],
            "images_per_s": stats["images"] / stats["seconds"], "peak_mb": peak_rss_mb(), "worker_peak_mb": children,
            "cache_mb": cached, "streamed": prepared.streamed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, nargs="+", default=[2000, 8000])
    parser.add_argument("--batches", type=int, default=40, help="training batches measured per run (64 photos each)")
    parser.add_argument("--keep", help="keep the generated sets under this folder")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        mode, data, cache, batches = args.one
        print(json.dumps(measure(mode, Path(data), Path(cache), int(batches))))
        return
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-stream-"))
    rows = []
    try:
        for photos in args.photos:
            started = time.monotonic()
            files, tars = generate(photos, root / str(photos))
            print(f"{photos} photos generated in {time.monotonic() - started:.0f} s", flush=True)
            for mode in MODES:
                cache = root / str(photos) / f"cache-{mode}"
                out = subprocess.run([sys.executable, __file__, "--one", mode, str(tars if mode == "tars" else files),
                                      str(cache), str(args.batches)], capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(out.stderr[-2000:])
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
                shutil.rmtree(cache, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    names = {"memmap": "memmap (files)", "none": "none (files)", "tars": "none (tar shards, streamed)"}
    table = markdown_table(["photos", "data", "prepare (s)", "image cache written (MB)", "training images/s",
                            "peak RSS, training process (MB)", "peak RSS, largest worker (MB)"],
                           [[f"{r['photos']:,}", names[r["mode"]], f"{r['prepare_s']:.1f}", f"{r['cache_mb']:,.0f}",
                             f"{r['images_per_s']:.0f}", f"{r['peak_mb']:,.0f}", f"{r['worker_peak_mb']:,.0f}"]
                            for r in rows])
    publish(TITLE, [
        f"Synthetic GLDv2-shaped sets (320 x 240 JPEGs, one landmark per 10 photos, Zipf counts, 10 tar shards), "
        f"{args.batches} training batches of 64 at 128 px through a tiny backbone, 2 DataLoader workers, on a 2-core "
        "CPU shared with other jobs (no GPU was lent to this task). `prepare` is `prepare_data` (for memmap: decoding "
        "every photo into the cache).",
        "",
        *table,
    ], args.write)

if __name__ == "__main__":
    main()
