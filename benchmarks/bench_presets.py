"""Train each preset on landmarks-mini and evaluate it on the test set, side by side in one run.

    LANDMARKS_DATA=../shared/data/landmarks-mini .venv/bin/python benchmarks/bench_presets.py --write
    ... --presets seed-cnn seed-cnn-faithful      # a subset
    ... --override seed-resnet152 train.epochs=1   # per-preset overrides
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import add_preset_run_arguments, preset_run_setup, write_section  # noqa: E402

from landmarks.config import load_config  # noqa: E402
from landmarks.evaluate.report import evaluate_run  # noqa: E402
from landmarks.train.run import train  # noqa: E402

DEFAULT_PRESETS = ["baseline-knn", "seed-cnn-faithful", "seed-cnn", "glr"]
ORDER = ["baseline-knn", "seed-cnn-faithful", "seed-cnn", "seed-resnet152", "glr"]
STORE = Path(__file__).parent / "presets_results.json"  # one row per preset, so presets can be measured one at a time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=DEFAULT_PRESETS)
    add_preset_run_arguments(parser)
    args = parser.parse_args()
    data, overrides, root = preset_run_setup(args, "bench-presets-")
    stored = json.loads(STORE.read_text()) if STORE.exists() else {}
    for preset in args.presets:
        run_dir = root / preset
        shutil.rmtree(run_dir, ignore_errors=True)
        config = load_config(preset, overrides.get(preset, []))
        started = time.monotonic()
        train(config, data, run_dir)
        wall_minutes = (time.monotonic() - started) / 60
        result, _ = evaluate_run(run_dir, data, backend="torch")
        held_out = json.loads((run_dir / "metrics.json").read_text())
        history = held_out.get("epochs", 0)
        import pandas as pd

        frame = pd.read_csv(run_dir / "history.csv")
        seconds_per_epoch = float(frame["seconds"].mean()) if len(frame) else 0.0
        images_per_second = float(frame["images_per_second"].mean()) if len(frame) else 0.0
        label = f"`{preset}`" + (" " + " ".join(overrides.get(preset, [])) if overrides.get(preset) else "")
        stored[preset] = (
            f"| {label} | {history} | {held_out.get('train_minutes', 0):.1f} | {wall_minutes:.1f} | {seconds_per_epoch:.1f} | "
            f"{images_per_second:.0f} | {result['accuracy']:.3f} | {result['top5_accuracy']:.3f} | {result['gap']:.3f} | "
            f"{result.get('map_at_100', float('nan')):.3f} | "
            + (f"{held_out['accuracy']:.3f} / {held_out['gap']:.3f}" if "gap" in held_out else "- (no held-out split)")
            + f" | {time.strftime('%Y-%m-%d %H:%M')} |"
        )
        print(stored[preset], flush=True)
        if args.write:
            STORE.write_text(json.dumps(stored, indent=1))
    rows = [stored[p] for p in ORDER if p in stored] + [v for p, v in stored.items() if p not in ORDER]
    table = "\n".join(
        [
            "| preset | epochs | training min | wall min (train command) | s/epoch | train img/s | accuracy | top-5 | GAP | mAP@100 | held-out split acc / GAP | measured |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    if args.write:
        body = (
            "Each preset trained on landmarks-mini's train.csv (its own train/val/held-out split) and evaluated on its "
            "test set (187 queries, 88 of them showing no known landmark) through `landmarks evaluate`; the held-out "
            "column is the preset's own held-out split of train.csv (landmark photos only). Rows are kept per preset "
            "in `benchmarks/presets_results.json`, so the table can be refreshed one preset at a time.\n\n"
            f"```\nLANDMARKS_DATA=../shared/data/landmarks-mini .venv/bin/python benchmarks/bench_presets.py --write "
            f"--presets {' '.join(args.presets)}"
            + "".join(f" --override {p} {' '.join(v)}" for p, v in overrides.items())
            + "\n```\n\n"
            + table
        )
        write_section("Presets on landmarks-mini (bench_presets.py)", body)


if __name__ == "__main__":
    main()
