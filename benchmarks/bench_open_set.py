"""Open-set proxy: measure a preset on queries it was never tuned on, built from train.csv alone.

A quarter of the landmarks (drawn by --seeds) is hidden: their photos never reach training and come back as
"no known landmark" queries, as many as there are queries of known landmarks (15 % of each known landmark's
photos, held back from training). Each preset trains and is evaluated on that split through the same
``train`` and ``evaluate_run`` as ``landmarks train`` and ``landmarks evaluate``; the real test set is never
read. Use it to compare recipes without tuning on the test set.

    LANDMARKS_DATA=../shared/data/landmarks-mini .venv/bin/python benchmarks/bench_open_set.py --write
    ... --presets glr --seeds 7 8 --override glr recognize.knn_weight=0.5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from common import add_preset_run_arguments, preset_run_setup, write_section  # noqa: E402

from landmarks.config import load_config  # noqa: E402
from landmarks.data.catalog import read_catalog, write_catalog  # noqa: E402
from landmarks.data.sampling import stratified_split  # noqa: E402
from landmarks.evaluate.report import evaluate_run  # noqa: E402
from landmarks.train.loop import train  # noqa: E402

HIDDEN_FRACTION = 0.25
QUERY_FRACTION = 0.15


def make_proxy(data: Path, seed: int, out: Path) -> dict[str, int]:
    """Write a dataset to ``out``: train.csv of the known landmarks' training photos, test.csv with the truth
    (landmark_id -1 for photos of hidden landmarks). Paths point at the original photos; nothing is copied."""
    catalog = read_catalog(data, "train")
    frame = catalog.frame[catalog.frame["landmark_id"] >= 0].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    landmarks = np.unique(frame["landmark_id"])
    hidden = rng.choice(landmarks, size=int(round(HIDDEN_FRACTION * len(landmarks))), replace=False)
    is_hidden = frame["landmark_id"].isin(hidden).to_numpy()
    known = frame[~is_hidden].reset_index(drop=True)
    train_idx, query_idx, _ = stratified_split(known["landmark_id"].to_numpy(), QUERY_FRACTION, 0.0, seed)
    hidden_pool = np.flatnonzero(is_hidden)
    hidden_queries = frame.iloc[rng.choice(hidden_pool, size=min(len(hidden_pool), len(query_idx)), replace=False)]
    write_catalog(known.iloc[train_idx], catalog.names, out)
    queries = pd.concat([known.iloc[query_idx], hidden_queries.assign(landmark_id=-1)])
    queries[["id", "landmark_id", "path"]].to_csv(out / "test.csv", index=False)
    return {"landmarks": len(landmarks) - len(hidden), "hidden": len(hidden), "train": len(train_idx),
            "known_queries": len(query_idx), "hidden_queries": len(hidden_queries)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["baseline-knn", "glr"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[7, 8])
    add_preset_run_arguments(parser)
    args = parser.parse_args()
    data, overrides, root = preset_run_setup(args, "bench-open-set-")
    rows, splits = [], {}
    for seed in args.seeds:
        proxy = root / f"proxy-{seed}"
        splits[seed] = make_proxy(data, seed, proxy)
        print(f"seed {seed}: {splits[seed]}", flush=True)
        for preset in args.presets:
            run_dir = root / f"{preset}-{seed}"
            started = time.monotonic()
            train(load_config(preset, overrides.get(preset, [])), proxy, run_dir)
            wall = (time.monotonic() - started) / 60
            result, _ = evaluate_run(run_dir, proxy, backend="torch")
            run_metrics = json.loads((run_dir / "metrics.json").read_text())
            rows.append({"preset": preset, "seed": seed, "train_minutes": run_metrics.get("train_minutes", 0.0),
                         "wall_minutes": wall, **{k: result.get(k, float("nan")) for k in
                         ("accuracy", "top5_accuracy", "gap", "map_at_100", "mean_confidence_landmark",
                          "mean_confidence_non_landmark")}})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    lines = ["| preset | seed | training min | wall min | accuracy | top-5 | GAP | mAP@100 | mean confidence: landmark / none |",
             "|---|---|---|---|---|---|---|---|---|"]
    for preset, group in table.groupby("preset", sort=False):
        label = f"`{preset}`" + (" " + " ".join(overrides[preset]) if overrides.get(preset) else "")
        for r in group.itertuples():
            lines.append(f"| {label} | {r.seed} | {r.train_minutes:.1f} | {r.wall_minutes:.1f} | {r.accuracy:.3f} | "
                         f"{r.top5_accuracy:.3f} | {r.gap:.3f} | {r.map_at_100:.3f} | "
                         f"{r.mean_confidence_landmark:.2f} / {r.mean_confidence_non_landmark:.2f} |")
        if len(group) > 1:
            lines.append(f"| {label} | mean | {group.train_minutes.mean():.1f} | {group.wall_minutes.mean():.1f} | "
                         f"**{group.accuracy.mean():.3f}** | {group.top5_accuracy.mean():.3f} | **{group.gap.mean():.3f}** | "
                         f"{group.map_at_100.mean():.3f} | |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        described = "; ".join(f"seed {s}: {v['landmarks']} known landmarks ({v['train']} training photos), {v['hidden']} "
                              f"hidden, {v['known_queries']} + {v['hidden_queries']} queries" for s, v in splits.items())
        body = (
            "A test set built from train.csv alone, so a recipe can be compared without tuning on the real test set: "
            f"{HIDDEN_FRACTION:.0%} of the landmarks are hidden from training and their photos return as 'no known "
            f"landmark' queries, beside {QUERY_FRACTION:.0%} of each known landmark's photos held back from training "
            f"({described}). Trained and evaluated through `train` and `evaluate_run`, as the CLI does.\n\n"
            "```\nLANDMARKS_DATA=../shared/data/landmarks-mini .venv/bin/python benchmarks/bench_open_set.py --write "
            f"--presets {' '.join(args.presets)} --seeds {' '.join(map(str, args.seeds))}"
            + "".join(f" --override {p} {' '.join(v)}" for p, v in overrides.items()) + "\n```\n\n" + text
        )
        write_section("Open-set proxy from train.csv (bench_open_set.py)", body)


if __name__ == "__main__":
    main()
