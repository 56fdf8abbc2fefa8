"""Embedding speed of ViT backbones against the glr recipe's EfficientNet-Lite2, side by side in one run, on this CPU.

    LANDMARKS_DATA=../shared/data/landmarks-mini .venv/bin/python benchmarks/bench_vit.py --write
    ... --vit-sizes 224 336 --photos 48 --threads 2

Each backbone is built as ``foundation-knn`` builds it (ViT-S/14 ``vit_small_patch14_dinov2``, class token) or as
``glr`` does (Lite2, ImageNet weights, GeM), exported with ``landmarks.export.onnx`` (fp32 ``model.onnx``, and
``model.int8.onnx``: static int8 calibrated on 8 photos, which speed does not depend on), then each of PyTorch eager, ONNX Runtime fp32 and ONNX
Runtime int8 embeds the same landmarks-mini photos (decoded beforehand, batches of 16, after one warm-up batch) in
a process of its own, so that its peak memory (VmHWM) is its own. Speed does not depend on the weights: the ViT's
are random (no DINOv2 weights on this machine), Lite2's are ImageNet's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import data_dir, peak_rss_mb, write_section  # noqa: E402

import numpy as np  # noqa: E402

BATCH = 16
RUNTIMES = ("torch", "onnx", "int8")


def specs(vit_sizes: list[int]) -> list[dict]:
    vits = [{"key": f"vit_s14_{s}", "label": f"ViT-S/14 (DINOv2) {s} px", "backbone": "vit_small_patch14_dinov2",
             "size": s, "pretrained": "none", "pooling": "cls"} for s in vit_sizes]
    lite = {"key": "lite2_384", "label": "EfficientNet-Lite2 384 px", "backbone": "tf_efficientnet_lite2", "size": 384,
            "pretrained": "imagenet", "pooling": "gem"}
    return [*vits, lite]


def photos(data: Path, size: int, count: int) -> np.ndarray:
    from landmarks.data.catalog import read_catalog
    from landmarks.data.images import decode_image

    paths = read_catalog(data).frame["path"].tolist()[:count]
    return np.stack([decode_image(p, size) for p in paths])


def build(spec: dict):
    from landmarks.models.registry import build_model
    from landmarks.models.spec import ModelConfig

    cfg = ModelConfig(architecture="classifier", backbone=spec["backbone"], pretrained=spec["pretrained"],
                      pooling=spec["pooling"], embedding_dim=0)
    return build_model(cfg, 41, spec["size"]).eval()


def prepare(spec: dict, folder: Path, data: Path) -> dict:
    from landmarks.export.onnx import export_onnx, quantize_int8

    model = build(spec)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    export_onnx(model, folder / "model.onnx")
    exported = time.perf_counter()
    quantize_int8(folder / "model.onnx", folder / "model.int8.onnx", photos(data, spec["size"], 8))
    return {"parameters_m": sum(p.numel() for p in model.backbone.parameters()) / 1e6,
            "onnx_mb": (folder / "model.onnx").stat().st_size / 1e6,
            "int8_mb": (folder / "model.int8.onnx").stat().st_size / 1e6,
            "export_seconds": exported - started, "quantize_seconds": time.perf_counter() - exported}


def measure(spec: dict, runtime: str, folder: Path, data: Path, count: int, threads: int) -> dict:
    images = photos(data, spec["size"], count)
    if runtime == "torch":
        import torch

        torch.set_num_threads(threads)
        model = build(spec)

        def run(batch: np.ndarray) -> None:
            with torch.inference_mode():
                model.embed(torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255)
    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        name = "model.onnx" if runtime == "onnx" else "model.int8.onnx"
        session = ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])

        def run(batch: np.ndarray) -> None:
            session.run(None, {"images": batch})

    run(images[:BATCH])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(images), BATCH):
        run(images[start : start + BATCH])
    seconds = time.perf_counter() - started
    return {"images_per_second": len(images) / seconds, "peak_rss_mb": peak_rss_mb()}


def child(args: argparse.Namespace) -> None:
    spec = json.loads(args.spec)
    folder, data = Path(args.folder), data_dir()
    result = (prepare(spec, folder, data) if args.child == "prepare"
              else measure(spec, args.child, folder, data, args.photos, args.threads))
    print("RESULT " + json.dumps(result))


def call(mode: str, spec: dict, folder: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--spec", json.dumps(spec), "--folder", str(folder),
               "--photos", str(args.photos), "--threads", str(args.threads)]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{mode} {spec['key']} failed:\n{out.stderr[-3000:]}")
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vit-sizes", type=int, nargs="+", default=[224, 336])
    parser.add_argument("--photos", type=int, default=48, help="photos each runtime embeds (after a warm-up batch)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--child", choices=("prepare", *RUNTIMES), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    data_dir()
    root = Path(tempfile.mkdtemp(prefix="bench-vit-"))
    results: dict[str, dict] = {}
    for spec in specs(args.vit_sizes):
        folder = root / spec["key"]
        results[spec["key"]] = {"prepare": call("prepare", spec, folder, args)}
        for runtime in RUNTIMES:
            results[spec["key"]][runtime] = call(runtime, spec, folder, args)
            print(spec["key"], runtime, results[spec["key"]][runtime], flush=True)
    lite = results["lite2_384"]
    rows = []
    for spec in specs(args.vit_sizes):
        r = results[spec["key"]]
        cells = []
        for runtime in RUNTIMES:
            speed = r[runtime]["images_per_second"]
            ratio = speed / lite[runtime]["images_per_second"]
            cells.append(f"{speed:.1f} ({ratio:.2f}x) | {r[runtime]['peak_rss_mb']:.0f}")
        p = r["prepare"]
        rows.append(f"| {spec['label']} | {p['parameters_m']:.1f} | {p['onnx_mb']:.1f} / {p['int8_mb']:.1f} | "
                    + " | ".join(cells) + " |")
    table = "\n".join([
        ("| backbone | params M | ONNX MB fp32 / int8 | PyTorch img/s (x Lite2) | peak MB | ONNX fp32 img/s (x Lite2) "
         "| peak MB | ONNX int8 img/s (x Lite2) | peak MB |"),
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    body = (
        f"Embedding speed on this CPU, no GPU lent for this measurement: {args.photos} landmarks-mini photos decoded "
        f"beforehand, batches of {BATCH}, {args.threads} threads, each backbone and runtime in its own process "
        f"(peak MB: its VmHWM, torch or ONNX Runtime included). Ratios are against EfficientNet-Lite2 at 384 px (the "
        f"glr backbone) in the same runtime. Where the 2 cores are shared with other work, absolute figures "
        f"drop with its load, and the ratios, measured one process after another, carry some of it too.\n\n"
        f"```\nLANDMARKS_DATA=../shared/data/landmarks-mini .venv/bin/python benchmarks/bench_vit.py --write\n```\n\n"
        + table
    )
    print(body)
    if args.write:
        write_section("ViT backbones: embedding speed (bench_vit.py)", body)


if __name__ == "__main__":
    main()
