"""Training at the speed of the hardware: `landmarks train` against a prediction pass of the same run, in one run.

Measured one after the other on the same machine, so that their ratios hold however busy it is:

1. the image cache, warmed first (``prepare_data``: decoded once, then read from the memory map);
2. ``landmarks train --config PRESET`` (wall time of the command), with its parts from its own log: the backbone
   pass over every photo and its mirror image, the head's epochs (history.csv), finishing and its calibration;
3. ``landmarks export RUN`` (not counted);
4. the prediction pass: ``landmarks predict RUN DATA/train`` (wall time; photo and mirror image, as the run
   predicts), every training photo decoded from its JPEG;
5. the bare model: the run's model.onnx in ONNX Runtime (2 threads) on photos decoded beforehand (uint8 NHWC at the
   model's size), batches of 32, photo and mirror image;
6. ``POST /predict`` of ``landmarks serve RUN`` on loopback: the same photos as the bare model, two at a time (the
   client shares the cores), whose answers must be the prediction pass's.

Ratios: training / prediction pass (the goal: at most 2.5) and prediction and ``/predict`` / bare model throughput
(at least 0.8).

    LANDMARKS_DATA=../shared/data/landmarks-mini .venv/bin/python benchmarks/bench_train_speed.py --write
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import data_dir, served, write_section

ROOT = Path(__file__).resolve().parents[1]


def _landmarks(*args: str, log_path: Path | None = None) -> tuple[float, list[tuple[float, str]]]:
    """Run the CLI; (wall seconds, its stderr lines with the second each arrived)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "landmarks.cli", *args], stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, text=True, env=env)
    lines = []
    for line in process.stderr:
        lines.append((time.monotonic() - started, line.rstrip()))
    if process.wait():
        raise SystemExit(f"landmarks {' '.join(args)} failed:\n" + "\n".join(line for _, line in lines[-20:]))
    if log_path is not None:
        log_path.write_text("\n".join(f"{t:8.1f} {line}" for t, line in lines) + "\n")
    return time.monotonic() - started, lines


def _seconds(pattern: str, lines: list[tuple[float, str]]) -> float | None:
    for _, line in lines:
        match = re.search(pattern, line)
        if match:
            return float(match.group(1))
    return None


def bare_model(onnx_path: Path, photos: list[Path], threads: int = 2, batch_size: int = 32) -> float:
    """Photos per second of model.onnx in ONNX Runtime on photos decoded beforehand, photo and mirror image."""
    from landmarks.data.images import decode_image
    from landmarks.recognize.embed import onnx_session

    session = onnx_session(onnx_path, threads)
    size = int(session.get_inputs()[0].shape[1])
    pixels = np.stack([decode_image(p, size) for p in photos])
    session.run(None, {"images": pixels[:2]})  # warm-up
    started = time.monotonic()
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start : start + batch_size]
        session.run(None, {"images": batch})
        session.run(None, {"images": np.ascontiguousarray(batch[:, :, ::-1])})
    return len(pixels) / (time.monotonic() - started)


def served_predictions(run: Path, photos: list[Path], concurrency: int = 2) -> tuple[float, dict[str, int]]:
    """Photos per second of ``POST /predict`` on ``landmarks serve RUN`` (after 4 warm-up requests), and the landmark
    each photo was answered with."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    contents = [p.read_bytes() for p in photos]
    with served(run) as (base, _), httpx.Client(base_url=base, timeout=120) as client:
        def ask(i: int) -> int:
            response = client.post("/predict", files={"photo": (photos[i].name, contents[i], "image/jpeg")})
            response.raise_for_status()
            return int(response.json()["landmark_id"])

        for i in range(min(4, len(photos))):
            ask(i)
        started = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            answered = list(pool.map(ask, range(len(photos))))
        rate = len(photos) / (time.monotonic() - started)
    return rate, {str(p.resolve()): a for p, a in zip(photos, answered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="glr")
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE", help="settings for the training")
    parser.add_argument("--keep", type=Path, help="keep the run folder here (default: a temporary folder)")
    parser.add_argument("--bare-photos", type=int, default=320, help="training photos the bare model is timed on")
    parser.add_argument("--write", action="store_true", help="write the figures into benchmarks/RESULTS.md")
    args = parser.parse_args()
    data = data_dir()
    sys.path.insert(0, str(ROOT / "src"))
    from landmarks.config import load_config
    from landmarks.data.prepared import prepare_data

    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_train_speed_"))
    folder.mkdir(parents=True, exist_ok=True)
    run = folder / f"{args.preset}-speed"
    if run.exists():
        raise SystemExit(f"{run} exists: remove it or choose another --keep")
    started = time.monotonic()
    prepare_data(load_config(args.preset, args.override), data)  # the image cache, warm for the training below
    cache_seconds = time.monotonic() - started

    train_seconds, lines = _landmarks("train", "--data", str(data), "--config", args.preset, "--out", str(run),
                                      *args.override, log_path=folder / "train.log")
    import pandas as pd

    history = pd.read_csv(run / "history.csv")
    metrics = json.loads((run / "metrics.json").read_text())
    backbone = _seconds(r"backbone pass over \d+ photos and their mirror images: ([\d.]+)s", lines)
    finishing = _seconds(r"finished the run in ([\d.]+)s", lines)
    calibration = _seconds(r"finished the run in [\d.]+s \(calibration ([\d.]+)s\)", lines)
    epochs_seconds = float(history["seconds"].sum())
    export_seconds, _ = _landmarks("export", str(run))
    photos = sorted(p for p in (data / "train").rglob("*.jpg"))
    predict_seconds, _ = _landmarks("predict", str(run), str(data / "train"), "--out", str(folder / "predictions.csv"))
    predict_rate = len(photos) / predict_seconds
    bare_rate = bare_model(run / "model.onnx", photos[: args.bare_photos])
    served_rate, served_answers = served_predictions(run, photos[: args.bare_photos])
    predicted = {str(Path(path).resolve()): int(landmark) for path, landmark in
                 pd.read_csv(folder / "predictions.csv")[["path", "landmark_id"]].itertuples(index=False)}
    differing = sum(predicted[path] != answer for path, answer in served_answers.items())

    figures = {
        "cache_s": cache_seconds, "train_s": train_seconds, "backbone_pass_s": backbone,
        "epochs": int(len(history)), "epochs_s": epochs_seconds, "finishing_s": finishing,
        "calibration_s": calibration, "export_s": export_seconds, "predict_s": predict_seconds,
        "predict_photos_per_s": predict_rate, "bare_photos_per_s": bare_rate,
        "served_photos_per_s": served_rate, "served_answers_differing": differing,
        "train_over_predict": train_seconds / predict_seconds, "predict_over_bare": predict_rate / bare_rate,
        "served_over_bare": served_rate / bare_rate,
        "held_out": {k: metrics.get(k) for k in ("accuracy", "gap", "map_at_100", "classifier_accuracy")},
    }
    print(json.dumps(figures, indent=1))
    (folder / "figures.json").write_text(json.dumps(figures, indent=1))

    def sec(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    held = figures["held_out"]
    body = f"""`landmarks train --config {args.preset}` on landmarks-mini ({len(photos)} photos) with a warm image cache,
then `landmarks export` and `landmarks predict RUN {data.name}/train` (every training photo decoded from its
JPEG, photo and mirror image), then the bare model (the run's model.onnx in ONNX Runtime, 2 threads, on
{min(len(photos), args.bare_photos)} photos decoded beforehand, uint8 NHWC, batches of 32, photo and mirror image),
one after the other in one run.

```
LANDMARKS_DATA=../shared/data/landmarks-mini .venv/bin/python benchmarks/bench_train_speed.py --write{''.join(' --override ' + o for o in args.override) if args.override else ''}
```

| what | seconds |
|---|---|
| image cache (warm: read, not decoded) | {sec(cache_seconds)} |
| **training, wall** (`landmarks train`) | **{sec(train_seconds)}** |
| - backbone pass (every photo and its mirror image, once) | {sec(backbone)} |
| - epochs ({len(history)}, early stop; the first includes the backbone pass, the others run on its cached feature maps) | {sec(epochs_seconds)} |
| - finishing (index, descriptor, held-out metrics, calibration, plots) | {sec(finishing)} |
| - of which the calibration ({'six calibration models'}) | {sec(calibration)} |
| **prediction pass** (`landmarks predict`, {predict_rate:.1f} photos/s) | **{sec(predict_seconds)}** |
| bare model ({bare_rate:.1f} photos/s) | |
| `POST /predict` ({served_rate:.1f} photos/s, 2 at a time; {differing} of {len(served_answers)} answers differ from the prediction pass) | |

**Training = {figures['train_over_predict']:.2f} prediction passes** (goal: at most 2.5); **prediction =
{figures['predict_over_bare']:.2f}x the bare model** (goal: at least 0.8), **`/predict` =
{figures['served_over_bare']:.2f}x**. Held-out split of the run: accuracy
{held['accuracy']:.3f}, GAP {held['gap']:.3f}, mAP@100 {held['map_at_100']:.3f}.
"""
    if args.write:
        write_section(f"Training speed against a prediction pass (bench_train_speed.py, {args.preset})", body)


if __name__ == "__main__":
    main()
