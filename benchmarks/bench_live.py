"""The live page's speed in headless Chromium with a fake camera: frames/s, frame latency, bundle load time and size.

The service runs the run folder in this process; Chromium (Debian's, headless, the fake camera playing a clip of
landmarks-mini's test photos) opens /live, which runs the device model in a Web Worker with ONNX Runtime Web.
Figures come from the page's ``window.liveStats``: frame latency is capture -> answer shown (the model plus the kNN
over the prototypes and the smoothing), frames/s counts answers over ``--seconds`` after a warm-up; load time is
navigation -> model ready, first with an empty cache and then from the service worker's cache.

    landmarks train --data $LANDMARKS_DATA --config baseline-knn --out runs/live-knn-cal
    landmarks export runs/live-knn-cal --quantize int8
    LANDMARKS_DATA=../shared/data/landmarks-mini python benchmarks/bench_live.py --run runs/live-knn-cal [--write]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests_helpers: the fake camera clip
from common import data_dir, write_section  # noqa: E402
from tests_helpers import write_y4m  # noqa: E402
from landmarks.data.catalog import read_catalog
from landmarks.export.web import build_bundle, write_bundle
from landmarks.recognize.recognizer import Recognizer
from landmarks.serve.app import create_app

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--use-fake-device-for-media-stream",
         "--use-fake-ui-for-media-stream"]


def start_server(run_dir: Path) -> tuple[uvicorn.Server, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(run_dir), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def measure_page(page, url: str, warm_up_frames: int, seconds: float) -> dict[str, float]:
    page.goto(url)
    page.wait_for_function(f"window.liveStats && window.liveStats.frames >= {warm_up_frames}", timeout=180_000)
    start_frames, start = page.evaluate("window.liveStats.frames"), time.perf_counter()
    time.sleep(seconds)
    stats = page.evaluate("window.liveStats")
    elapsed = time.perf_counter() - start
    return {"fps": (stats["frames"] - start_frames) / elapsed, "p50_ms": stats["p50Ms"], "p95_ms": stats["p95Ms"],
            "infer_p50_ms": stats["inferP50Ms"], "load_ms": stats["loadMs"], "first_answer_ms": stats["firstAnswerMs"],
            "backend": stats["backend"], "threads": stats["threads"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run folder with model.onnx (and model.int8.onnx)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long frames are counted")
    parser.add_argument("--warm-up", type=int, default=20, help="frames answered before counting")
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("Debian's chromium is needed (make browser-deps)")
    data = data_dir()
    work = Path(tempfile.mkdtemp(prefix="bench-live-"))
    run = work / "run"
    shutil.copytree(args.run, run, ignore=shutil.ignore_patterns("checkpoints", "store.sqlite*", "feedback.sqlite*"))
    bundle = build_bundle(Recognizer.load(run), run)
    report = write_bundle(bundle, work / "bundle")
    manifest = bundle.manifest
    test = read_catalog(data, "test").frame
    clip = write_y4m([Path(p) for p in test[test["landmark_id"] >= 0]["path"].tolist()[:30]], work / "clip.y4m")
    server, url = start_server(run)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                                 args=[*FLAGS, f"--use-file-for-fake-video-capture={clip}"])
            context = browser.new_context()
            page = context.new_page()
            cold = measure_page(page, url + "/live/", args.warm_up, args.seconds)
            page.wait_for_function("navigator.serviceWorker.controller !== null", timeout=60_000)
            warm = measure_page(page, url + "/live/", args.warm_up, 2.0)  # reloaded from the service worker's cache
            browser.close()
    finally:
        server.should_exit = True
    figures = {**cold, "warm_load_ms": warm["load_ms"], "bundle_mb_without_wasm": report["size_mb (no wasm)"],
               "bundle_mb": report["size_mb (with wasm)"], "model": manifest["model"]["source"],
               "model_mb": manifest["model"]["size_bytes"] / 1e6, "prototypes": manifest["prototypes"]["count"]}
    print(json.dumps(figures, indent=1))
    body = (f"`LANDMARKS_DATA=../shared/data/landmarks-mini python benchmarks/bench_live.py --run {args.run} --write` "
            f"(the run: `landmarks train --data $LANDMARKS_DATA --config baseline-knn --out {args.run}`, then "
            f"`landmarks export {args.run} --quantize int8`)\n\n"
            f"Headless Chromium ({os.cpu_count()} cores shared with the server), fake camera playing 30 test photos of "
            f"landmarks-mini; `/live` of run `{Path(args.run).name}`: {figures['model']} "
            f"({figures['model_mb']:.1f} MB, {manifest['model']['input_size_px']} px), {figures['prototypes']} "
            f"float16 prototypes, ONNX Runtime Web {figures['backend']} with {figures['threads']} thread(s).\n\n"
            "| frames/s | frame latency p50 | p95 | model run p50 | load, empty cache | load, cached | first answer | "
            "bundle (without wasm) | bundle (all) |\n|---|---|---|---|---|---|---|---|---|\n"
            f"| {figures['fps']:.1f} | {figures['p50_ms']:.0f} ms | {figures['p95_ms']:.0f} ms | "
            f"{figures['infer_p50_ms']:.0f} ms | {figures['load_ms']:.0f} ms | {figures['warm_load_ms']:.0f} ms | "
            f"{figures['first_answer_ms']:.0f} ms | {figures['bundle_mb_without_wasm']:.1f} MB | {figures['bundle_mb']:.1f} MB |\n\n"
            "Latency: frame captured -> answer shown (model, kNN, smoothing). Load: navigation -> model ready to run "
            "(manifest, prototypes, model and runtime fetched, session created); first answer includes the camera.")
    if args.write:
        write_section("Live page speed (headless Chromium, fake camera)", body)
    print(body)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
