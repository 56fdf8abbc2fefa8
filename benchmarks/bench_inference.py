"""Inference speed, side by side in one run: the plain PyTorch eager path against the fast path.

    LANDMARKS_DATA=../shared/data/landmarks-mini .venv/bin/python benchmarks/bench_inference.py --write
    ... --run runs/glr   # any run folder (default: a no-training EfficientNet-Lite0 run built on the fly)

plain eager:  each photo fully decoded by PIL, resized, batched (32) and run through the PyTorch model,
              one step after the other.
fast:         JPEG draft-mode decoding straight to the input size in 2 threads, a batch ahead of inference,
              batched (32) through ONNX Runtime (model.onnx, preprocessing inside the graph).
Each path runs in its own process so that its peak memory (max RSS) is its own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import data_dir, peak_rss_mb, write_section  # noqa: E402

import numpy as np  # noqa: E402


def _paths(data: Path) -> list[str]:
    from landmarks.data.catalog import read_catalog

    return read_catalog(data).frame["path"].tolist()


def plain_eager(run: Path, paths: list[str], batch_size: int = 32) -> dict:
    import torch
    from PIL import Image

    from landmarks.run_folder import RunFolder

    model = RunFolder(run).load_model()
    size = model.input_size_px
    started = time.perf_counter()
    count = 0
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            batch = []
            for path in paths[start : start + batch_size]:
                with Image.open(path) as image:
                    batch.append(np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR)))
            x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 255
            model(x)
            count += len(batch)
    seconds = time.perf_counter() - started
    latencies = []
    with torch.inference_mode():
        for path in paths[:60]:
            tick = time.perf_counter()
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))
            model(torch.from_numpy(pixels[None]).permute(0, 3, 1, 2).float() / 255)
            latencies.append((time.perf_counter() - tick) * 1000)
    return {"images_per_second": count / seconds, "latencies_ms": latencies[10:]}


def fast(run: Path, paths: list[str], batch_size: int = 32) -> dict:
    from landmarks.recognize.embed import embed_paths
    from landmarks.recognize.recognizer import Recognizer

    recognizer = Recognizer.load(run, backend="onnx")
    started = time.perf_counter()
    embeddings, _, valid, _ = embed_paths(recognizer.embedder, paths, batch_size=batch_size, workers=2)
    seconds = time.perf_counter() - started
    latencies = []
    for path in paths[:60]:  # one photo end to end: decode, embed, kNN + classifier fusion
        tick = time.perf_counter()
        recognizer.predict_paths([path], batch_size=1, workers=1)
        latencies.append((time.perf_counter() - tick) * 1000)
    return {"images_per_second": int(valid.sum()) / seconds, "latencies_ms": latencies[10:]}


def child(mode: str, run: Path, data: Path) -> None:
    import torch

    torch.set_num_threads(2)
    paths = _paths(data)
    result = (plain_eager if mode == "eager" else fast)(run, paths)
    result["photos"] = len(paths)
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result))


def ensure_run(run: Path | None, data: Path) -> Path:
    """A run folder with model.onnx: the given one, or a no-training EfficientNet-Lite0 run."""
    from landmarks.config import load_config
    from landmarks.export.onnx import export_run
    from landmarks.train.run import train

    if run is None:
        run = Path(tempfile.mkdtemp(prefix="bench-inference-")) / "baseline-knn"
        train(load_config("baseline-knn"), data, run)
    if not (run / "model.onnx").exists():
        export_run(run)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--child", choices=("eager", "fast"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    data = data_dir()
    if args.child:
        child(args.child, args.run, data)
        return
    run = ensure_run(args.run, data)
    results = {}
    for mode in ("eager", "fast"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--run", str(run)], capture_output=True, text=True,
                             check=True)
        line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
        results[mode] = json.loads(line[len("RESULT "):])
    rows = []
    for mode, label in (("eager", "plain PyTorch eager (full PIL decode, sequential)"),
                        ("fast", "fast path (draft decode in threads + ONNX Runtime)")):
        r = results[mode]
        lat = sorted(r["latencies_ms"])
        p95 = lat[int(0.95 * (len(lat) - 1))]
        rows.append(f"| {label} | {r['images_per_second']:.1f} | {statistics.median(lat):.1f} | {p95:.1f} | {r['peak_rss_mb']:.0f} |")
    speedup = results["fast"]["images_per_second"] / results["eager"]["images_per_second"]
    from landmarks.run_folder import RunFolder

    size = RunFolder(run).load_model().input_size_px
    table = "\n".join([
        "| path | photos/s, files on disk to embeddings | single photo p50 ms | p95 ms | peak RSS MB |",
        "|---|---|---|---|---|",
        *rows,
    ])
    body = (
        f"EfficientNet-Lite0 at {size} px, the {results['fast']['photos']} training photos of landmarks-mini, batches of 32, "
        f"2 threads. Single-photo latency excludes process start and model loading (50 photos after 10 warm-up); for the fast "
        f"path it is a whole `Recognizer.predict_paths` call (decode, embed, kNN and fusion). Fast path speed-up: "
        f"**{speedup:.1f}x**.\n\n```\nLANDMARKS_DATA=../shared/data/landmarks-mini .venv/bin/python benchmarks/bench_inference.py --write\n```\n\n"
        + table
    )
    print(body)
    if args.write:
        write_section("Inference: eager vs fast path (bench_inference.py)", body)


if __name__ == "__main__":
    main()
