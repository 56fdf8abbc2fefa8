"""The device check of issue 19, for whoever has a CUDA GPU: glr with the backbone unfrozen on landmarks-mini shards.

    LANDMARKS_DATA=../shared/data/landmarks-mini python benchmarks/bench_gpu.py --write          # on a GPU machine
    LANDMARKS_DATA=../shared/data/landmarks-mini python benchmarks/bench_gpu.py --smoke          # CPU: the code runs

It packs LANDMARKS_DATA's training photos into tar shards (a temporary folder), then measures in turn:

1. training images/s of glr (EfficientNet-Lite2, ``--size`` px, batch 64, backbone unfrozen, Partial FC 0.5, photos
   streamed from the shards with data.cache=none) in fp32, bf16 and bf16 + torch.compile, over ``--batches`` batches
   after one warm-up batch, with the peak GPU memory of each (``torch.cuda.max_memory_allocated``);
2. JPEG decoding of the shards' photos: in 8 DataLoader workers on the CPU against nvJPEG on the GPU
   (``data.gpu_decode``), photos/s;
3. a fine-tuned run (``train.freeze_backbone_epochs=4``, bf16, ``--epochs`` epochs) through ``train``: its held-out
   accuracy and GAP (metrics.json).

Budget: about 6 minutes on one H200 with the defaults. Nothing here was measured on this project's CPU machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import data_dir, write_section  # noqa: E402

TITLE = "GPU device check: glr unfrozen, bf16, compile, GPU JPEG decoding (bench_gpu.py)"


def glr_overrides(args: argparse.Namespace, cache: Path) -> list[str]:
    return [f"data.image_size_px={args.size}", "data.cache=none", f"data.cache_dir={cache}",
            "train.freeze_backbone_epochs=0", "model.arcface_sample_rate=0.5", f"train.batch_size={args.batch}",
            f"train.workers={args.workers}", "train.max_minutes=none"]


def throughput(args: argparse.Namespace, data: Path, cache: Path, extra: list[str]) -> dict:
    import torch

    from landmarks.config import load_config
    from landmarks.data.prepared import prepare_data
    from landmarks.run_folder import RunFolder
    from landmarks.train.loop import Trainer

    config = load_config("glr", [*glr_overrides(args, cache), *extra])
    prepared = prepare_data(config, data)
    run = Path(tempfile.mkdtemp(prefix="bench-gpu-run-"))
    trainer = Trainer(config, prepared, RunFolder(run))
    original = trainer.loader
    trainer.loader = lambda split, train, skip=0: itertools.islice(original(split, train, skip), 1)  # warm-up, compile
    trainer.run_epoch("train", train=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    trainer.loader = lambda split, train, skip=0: itertools.islice(original(split, train, skip), args.batches)
    stats = trainer.run_epoch("train", train=True)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    shutil.rmtree(run, ignore_errors=True)
    return {"settings": " ".join(extra) or "fp32", "images_per_s": stats["images"] / stats["seconds"], "peak_gib": peak}


def decoding(args: argparse.Namespace, data: Path, cache: Path) -> list[dict]:
    import torch
    from torch.utils.data import DataLoader

    from landmarks.data.catalog import read_catalog
    from landmarks.data.shards import ShardIndex, ShardStream, decoded_on_gpu, find_shards

    frame = read_catalog(data, "train").frame
    labels = dict(zip(frame["id"].astype(str), range(len(frame))))
    index = ShardIndex.scan(find_shards(data), cache)
    rows = []
    for where in ("cpu", "cuda"):
        if where == "cuda" and not torch.cuda.is_available():
            continue
        stream = ShardStream(index, labels, args.size, args.batch, 0, 0, 8, raw=where == "cuda")
        batches = DataLoader(stream, batch_size=None, num_workers=8)
        started, count = time.monotonic(), 0
        for images, _ in (decoded_on_gpu(batches, args.size, torch.device("cuda")) if where == "cuda" else batches):
            count += len(images)
        if where == "cuda":
            torch.cuda.synchronize()
        rows.append({"decoder": "nvJPEG on the GPU" if where == "cuda" else "PIL in 8 workers (draft mode)",
                     "photos_per_s": count / (time.monotonic() - started)})
    return rows


def finetuned(args: argparse.Namespace, data: Path, cache: Path, root: Path) -> dict:
    from landmarks.config import load_config
    from landmarks.train.run import train

    config = load_config("glr", [*glr_overrides(args, cache), "train.freeze_backbone_epochs=4",
                                 f"train.epochs={args.epochs}", "train.precision=bf16", "train.backbone_lr_scale=0.1",
                                 "train.warmup_steps=20", "model.arcface_sample_rate=1.0"])
    started = time.monotonic()
    run = train(config, data, root / "finetuned")
    metrics = json.loads((run / "metrics.json").read_text())
    return {"minutes": (time.monotonic() - started) / 60, "accuracy": metrics.get("accuracy"), "gap": metrics.get("gap")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script on a CPU")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.batch, args.batches, args.epochs, args.workers = 64, 8, 1, 1, 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    from landmarks.data.shards import pack_gldv2

    root = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    data, cache = root / "shards", root / "cache"
    pack_gldv2(data_dir(), data, per_shard=100)
    variants = [[], ["train.precision=bf16"], ["train.precision=bf16", "train.compile=true"]]
    if torch.cuda.is_available():
        variants.append(["train.precision=bf16", "data.gpu_decode=true"])
    speed = [throughput(args, data, cache, extra) for extra in (variants[:2] if args.smoke else variants)]
    decode = decoding(args, data, cache)
    tuned = finetuned(args, data, cache, root)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (no GPU)"
    lines = ["```\nLANDMARKS_DATA=../shared/data/landmarks-mini python benchmarks/bench_gpu.py "
             + " ".join(sys.argv[1:]) + "\n```", "", f"On {device}: glr at {args.size} px, batch {args.batch}, backbone "
             f"unfrozen, Partial FC 0.5, landmarks-mini streamed from tar shards.", "",
             "| settings | training images/s | peak GPU memory (GiB) |", "|---|---|---|"]
    lines += [f"| {r['settings']} | {r['images_per_s']:.0f} | {r['peak_gib']:.1f} |" for r in speed]
    lines += ["", "| JPEG decoding | photos/s |", "|---|---|"]
    lines += [f"| {r['decoder']} | {r['photos_per_s']:.0f} |" for r in decode]
    lines += ["", f"Fine-tuned (freeze_backbone_epochs=4, bf16, {args.epochs} epochs): held-out accuracy "
              f"{tuned['accuracy']:.3f}, GAP {tuned['gap']:.3f}, {tuned['minutes']:.1f} min for the whole run."]
    body = "\n".join(lines)
    print(body)
    if args.write and not args.smoke:
        write_section(TITLE, body)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
