"""A bounded load test of the web service on loopback: N predictions at concurrency C, latency and throughput.

    LANDMARKS_DATA=../shared/data/landmarks-mini .venv/bin/python benchmarks/bench_serve.py --run RUN --write
    ... --requests 500 --concurrency 8

The server runs in its own process (`landmarks serve`); the client posts landmarks-mini's query photos.
Without --run, a no-training EfficientNet-Lite0 run is built and exported to ONNX first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_inference import ensure_run  # noqa: E402
from common import data_dir, served, write_section  # noqa: E402

import httpx  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    data = data_dir()
    run = ensure_run(args.run, data)
    photos = [p.read_bytes() for p in sorted((data / "test").rglob("*.jpg"))]
    with served(run) as (base, _):
        client = httpx.Client(base_url=base, timeout=60, limits=httpx.Limits(max_connections=args.concurrency))

        def one(i: int) -> tuple[float, int]:
            tick = time.perf_counter()
            response = client.post("/predict", files={"photo": (f"{i}.jpg", photos[i % len(photos)], "image/jpeg")})
            return (time.perf_counter() - tick) * 1000, response.status_code

        for i in range(10):  # warm-up
            one(i)
        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(one, range(args.requests)))
        seconds = time.perf_counter() - started
    latencies = sorted(r[0] for r in results)
    errors = sum(1 for r in results if r[1] != 200)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    backend = "ONNX Runtime" if (run / "model.onnx").exists() else "PyTorch"
    model = json.loads((run / "model.json").read_text())
    references = json.loads((run / "index" / "index.json").read_text())["count"]
    what = f"{model['config'].get('backbone', model['architecture'])} at {model['input_size_px']} px, {references:,} references"
    body = (
        f"`landmarks serve` ({backend}, {what}) on loopback, {args.requests} `POST /predict` of landmarks-mini's query photos "
        f"at concurrency {args.concurrency}, after 10 warm-up requests; client and server share the 2 cores.\n\n"
        f"```\nLANDMARKS_DATA=../shared/data/landmarks-mini .venv/bin/python benchmarks/bench_serve.py --write"
        f"{' --run RUN' if args.run else ''}\n```\n\n"
        "| requests | concurrency | errors | requests/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|\n"
        f"| {args.requests} | {args.concurrency} | {errors} | {args.requests / seconds:.1f} | "
        f"{statistics.median(latencies):.0f} | {p99:.0f} |"
    )
    print(body)
    if args.write:
        write_section("Web service load (bench_serve.py)", body)
    if errors:
        raise SystemExit(f"{errors} requests failed")


if __name__ == "__main__":
    main()
