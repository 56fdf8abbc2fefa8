"""Open-set proxy: measure a preset on queries it was never tuned on, built from train.csv alone.

A quarter of the landmarks (drawn by --seeds) is hidden: their photos never reach training and come back as
"no known landmark" queries, as many as there are queries of known landmarks (15 % of each known landmark's
photos, held back from training). With --non-landmarks DIR (a bank of photos without any landmark), a third of
the bank is held out as further "no known landmark" queries and the rest is given to training as
``data.non_landmarks`` (split there into references labelled -1 and calibration negatives). The real test set
is never read: use this to compare recipes without tuning on it.

Each preset trains once per seed, through the same ``train`` as ``landmarks train``; the variants of the table
are then measured on that one run by re-scoring the same query embeddings:

- ``min_confidence 0.3``: the fused score, as before calibration, known from 0.3;
- ``calibrated (METHOD)``: the map fitted as ``finish_run`` fits it (held-out photos, their hidden-landmark twins
  and, with the bank, its calibration negatives) and the threshold chosen for ``recognize.target_precision``;
- each with and without the bank (its references in the index and its negatives in the calibration).

Columns: precision = known answers that are right, over every query (landmark photos, hidden landmarks, bank
photos); coverage = landmark photos with a right known answer; "hidden named" / "bank named" = share of the
hidden-landmark photos / held-out bank photos answered with a landmark; ECE = mean |confidence - share right|
over 10 bins (all queries); GAP over the proxy's queries (landmark and hidden-landmark photos); oracle coverage =
the highest coverage any single threshold reaches at 95 % precision when chosen on these very queries (not a
method, a ceiling: what a perfect threshold choice on this confidence could give).

    LANDMARKS_DATA=../shared/data/landmarks-mini .venv/bin/python benchmarks/bench_open_set.py --write \\
        --non-landmarks ../shared/data/non-landmarks --presets glr --seeds 7 8
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from common import add_preset_run_arguments, preset_run_setup, write_section  # noqa: E402

from landmarks.config import load_config  # noqa: E402
from landmarks.run_folder import RunFolder  # noqa: E402
from landmarks.data.catalog import NO_LANDMARK, non_landmark_photos, read_catalog, write_catalog  # noqa: E402
from landmarks.data.sampling import stratified_split  # noqa: E402
from landmarks.evaluate import metrics  # noqa: E402
from landmarks.train.open_set import calibrate, calibration_model_samples, gather_samples, probe_recognizer  # noqa: E402
from landmarks.train.pooled import capture_pooled, has_arcface_neck, pooled_views  # noqa: E402
from landmarks.evaluate.metrics import expected_calibration_error, precision_coverage  # noqa: E402
from landmarks.train.open_set import split_non_landmark_bank  # noqa: E402
from landmarks.recognize.embed import embed_paths  # noqa: E402
from landmarks.recognize.index import EmbeddingIndex  # noqa: E402
from landmarks.recognize.recognizer import Recognizer  # noqa: E402
from landmarks.train.run import train  # noqa: E402

log = logging.getLogger("bench_open_set")

HIDDEN_FRACTION = 0.25
QUERY_FRACTION = 0.15
BANK_HELD_OUT_FRACTION = 1 / 3  # of the non-landmark bank: queries only, never seen by training or calibration
METHODS = ("platt", "isotonic", "gate")
ORACLE_PRECISION = 0.95  # "oracle coverage": the most coverage any threshold on these very queries gives at this precision


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


def split_bank_for_bench(bank: Path, seed: int, out: Path) -> list[Path]:
    """Hold a third of the bank out as queries; link the rest into ``out`` (the training's data.non_landmarks).
    Returns the held-out photos. By content hash, like the training's own split, with another salt."""
    held_out, for_training = split_non_landmark_bank(non_landmark_photos(bank), BANK_HELD_OUT_FRACTION, seed=1000 + seed)
    out.mkdir(parents=True, exist_ok=True)
    for photo in for_training:
        link = out / photo.name
        if not link.exists():
            link.symlink_to(photo.resolve())
    return held_out


def measure(predictions: list, true: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    """Known-answer figures over all queries; ``kinds``: "landmark", "hidden" or "bank" per query."""
    predicted = np.array([p.landmark_id for p in predictions])
    confidence = np.array([p.confidence for p in predictions])
    known = np.array([p.known for p in predictions])
    right = predicted == true
    proxy = kinds != "bank"
    answers = metrics.known_answers(right, known, kinds == "landmark")
    result = {
        "gap": metrics.global_average_precision(predicted[proxy], confidence[proxy], true[proxy]),
        "accuracy": metrics.accuracy(predicted[proxy], true[proxy]),
        "precision": answers["precision_of_known_answers"] if known.any() else float("nan"),
        "coverage": answers["coverage"],
        "hidden_named": float(known[kinds == "hidden"].mean()),
        "bank_named": float(known[kinds == "bank"].mean()) if (kinds == "bank").any() else float("nan"),
        "ece": expected_calibration_error(confidence, right),
    }
    table = precision_coverage(confidence, right, kinds == "landmark")
    reached = table["precision"] >= ORACLE_PRECISION
    result["oracle_coverage"] = float(table["coverage"][reached].max()) if reached.any() else 0.0
    return result


def embed_queries(run_dir: Path, proxy: Path, bank_held_out: list[Path], bank: Path | None, cache: Path) -> dict:
    """Embeddings and logits of every photo the variants need, computed once per run (kept in ``cache``):
    calibration queries (the validation split, or the training photos of an untrained run), the bank's
    calibration negatives and references (as ``finish_run`` splits it), the proxy's queries and the held-out bank."""
    out: dict = dict(np.load(cache, allow_pickle=True)) if cache.exists() else {}
    shipped = Recognizer.load(run_dir, backend="torch")
    model = getattr(shipped.embedder, "model", None)
    wants_pooled = has_arcface_neck(model) and RunFolder(run_dir).read_scoring().recognize.hidden_landmarks == "model"
    if out and ("train_pooled" in out or not wants_pooled):
        return out
    config = RunFolder(run_dir).read_config()
    split = pd.read_csv(run_dir / "split.csv")
    split = split[split["valid"].astype(bool)]

    def embed(paths: list) -> tuple[np.ndarray, np.ndarray]:
        embeddings, logits, valid, _ = embed_paths(shipped.embedder, [str(p) for p in paths], desc="bench")
        if not valid.all():
            raise SystemExit(f"unreadable photos among {len(paths)} bench photos")
        return embeddings, logits

    def pooled(paths: list) -> np.ndarray:
        with capture_pooled(model) as calls:
            embed(paths)
        return pooled_views(calls, [len(paths)], config.recognize.tta_flip)[0]

    if wants_pooled:  # the calibration model's inputs: pooled backbone features of train, val and bank photos
        for name in ("train", "val"):
            photos = split[split["split"] == name]
            out[f"{name}_pooled"] = pooled(photos["path"].tolist())
            out[f"{name}_pooled_true"] = photos["landmark_id"].to_numpy()
        if bank is not None:
            references, negatives = split_non_landmark_bank(non_landmark_photos(bank), seed=config.train.seed)
            out["bank_reference_pooled"], out["negative_pooled"] = pooled(references), pooled(negatives)
        if "test_embeddings" in out:
            np.savez(cache, **out)
            return out

    val = split[split["split"] == "val"]
    calibration_photos = split[split["split"] == "train"] if val.empty else val
    out["queries_are_references"] = val.empty
    out["query_embeddings"], out["query_logits"] = embed(calibration_photos["path"].tolist())
    out["query_true"] = calibration_photos["landmark_id"].to_numpy()
    out["query_ids"] = calibration_photos["id"].to_numpy().astype(str)
    if bank is not None:
        references, negatives = split_non_landmark_bank(non_landmark_photos(bank), seed=config.train.seed)
        out["negative_embeddings"], out["negative_logits"] = embed(negatives)
        out["bank_reference_embeddings"], _ = embed(references)
        out["bank_reference_ids"] = np.array([f"non-landmark:{p.name}" for p in references])
    test = read_catalog(proxy, "test").frame
    embeddings, logits = embed(test["path"].tolist() + [str(p) for p in bank_held_out])
    out["test_embeddings"], out["test_logits"] = embeddings, logits
    out["test_true"] = np.concatenate([test["landmark_id"].to_numpy(), np.full(len(bank_held_out), NO_LANDMARK)])
    out["test_kinds"] = np.concatenate([np.where(test["landmark_id"].to_numpy() == NO_LANDMARK, "hidden", "landmark"),
                                        np.full(len(bank_held_out), "bank")])
    np.savez(cache, **out)
    return out


def evaluate_variants(run_dir: Path, proxy: Path, bank_held_out: list[Path], bank: Path | None,
                      target_precision: float, cache: Path) -> list[dict]:
    """Every variant of the table, measured on one trained run by re-scoring the same embeddings. A run trained
    without ``data.non_landmarks`` gets the bank's references here, as ``finish_run`` would have added them."""
    shipped = Recognizer.load(run_dir, backend="torch")
    config = RunFolder(run_dir).read_config()
    bank = Path(config.data.non_landmarks) if config.data.non_landmarks else bank
    photos = embed_queries(run_dir, proxy, bank_held_out, bank, cache)
    index = shipped.index
    image_ids = np.asarray(index.image_ids, dtype=object)
    labels = index.landmark_ids_at(np.arange(len(index)))
    vectors = index.vectors()
    landmark_positions = np.flatnonzero(labels != NO_LANDMARK)
    bank_positions = np.flatnonzero(labels == NO_LANDMARK)
    if bank is not None and not len(bank_positions):
        bank_positions = len(vectors) + np.arange(len(photos["bank_reference_ids"]))
        vectors = np.concatenate([vectors, photos["bank_reference_embeddings"]])
        image_ids = np.concatenate([image_ids, photos["bank_reference_ids"].astype(object)])
        labels = np.concatenate([labels, np.full(len(bank_positions), NO_LANDMARK)])
    position_of = {str(image_id): i for i, image_id in enumerate(image_ids)}
    split = pd.read_csv(run_dir / "split.csv")
    train_ids = split[(split["split"] == "train") & split["valid"].astype(bool)]["id"].astype(str)
    train_positions = np.array([position_of[i] for i in train_ids], dtype=np.int64)
    queries_are_references = bool(photos["queries_are_references"])
    queries = (photos["query_embeddings"], photos["query_logits"], photos["query_true"])
    negatives = (photos["negative_embeddings"], photos["negative_logits"]) if bank is not None else None
    test_embeddings, test_logits = photos["test_embeddings"], photos["test_logits"]
    true, kinds = photos["test_true"], photos["test_kinds"]

    rows = []
    for with_bank in ([False, True] if len(bank_positions) else [False]):
        kept = np.arange(len(vectors)) if with_bank else landmark_positions
        recognizer = Recognizer(shipped.embedder, shipped.class_landmark_ids, shipped.names,
                                EmbeddingIndex.build(vectors[kept], image_ids[kept].tolist(), labels[kept], "flat"),
                                copy.deepcopy(shipped.config), logit_scale=shipped.logit_scale)
        recognizer.calibration = None
        raw = recognizer.score(test_embeddings, test_logits)
        references = np.concatenate([train_positions, bank_positions]) if with_bank else train_positions
        probe = probe_recognizer(recognizer, vectors[references], image_ids[references].tolist(), labels[references])
        samples = gather_samples(probe, queries, negatives if with_bank else None, queries_are_references)
        variants = [("min_confidence 0.3", calibrate(samples, "none", None, 0.3))]
        certainty = config.recognize.precision_certainty
        variants += [(f"calibrated ({m}), own landmark left out",
                      calibrate(samples, m, target_precision, certainty=certainty)) for m in METHODS]
        if "train_pooled" in photos:
            model_samples = calibration_model_samples(
                recognizer, config, (photos["train_pooled"], photos["train_pooled_true"]),
                (photos["val_pooled"], photos["val_pooled_true"]),
                photos["bank_reference_pooled"] if with_bank else None, photos["negative_pooled"] if with_bank else None)
            variants += [(f"calibrated ({m}), calibration model",
                          calibrate(model_samples, m, target_precision, certainty=certainty))
                         for m in ("platt", "gate")]
        for name, calibration in variants:
            predictions = copy.deepcopy(raw)
            calibration.apply(predictions, calibration.threshold)
            rows.append({"variant": name, "bank": with_bank, "threshold": calibration.threshold,
                         **measure(predictions, true, kinds),
                         "calibration_precision": calibration.measured["precision_of_known_answers"],
                         "calibration_coverage": calibration.measured["coverage"]})
            log.info("%s", rows[-1])
    if shipped.calibration is not None:
        log.info("the run's own calibration.json: %s, threshold %.4f", shipped.calibration.method,
                 shipped.calibration.threshold)
    return rows


def table(frame: pd.DataFrame) -> str:
    lines = ["| preset | bank | variant | seed | threshold | GAP | accuracy | precision of known answers | coverage | "
             "hidden named | bank named | ECE | oracle coverage |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (preset, bank, variant), group in frame.groupby(["preset", "bank", "variant"], sort=False):
        label = f"`{preset}` | {'yes' if bank else 'no'} | {variant}"
        for r in group.itertuples():
            lines.append(f"| {label} | {r.seed} | {r.threshold:.3f} | {r.gap:.3f} | {r.accuracy:.3f} | {r.precision:.3f} | "
                         f"{r.coverage:.3f} | {r.hidden_named:.3f} | {r.bank_named:.3f} | {r.ece:.3f} | "
                         f"{r.oracle_coverage:.3f} |")
        if len(group) > 1:
            m = group.mean(numeric_only=True)
            lines.append(f"| {label} | **mean** | {m.threshold:.3f} | **{m.gap:.3f}** | {m.accuracy:.3f} | **{m.precision:.3f}** | "
                         f"**{m.coverage:.3f}** | {m.hidden_named:.3f} | {m.bank_named:.3f} | {m.ece:.3f} | "
                         f"{m.oracle_coverage:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["glr"],
                        help="preset names; PRESET+KEY=VALUE[+KEY=VALUE] measures a preset with settings changed")
    parser.add_argument("--seeds", nargs="+", type=int, default=[7, 8])
    parser.add_argument("--non-landmarks", metavar="DIR", help="a bank of photos without any landmark")
    parser.add_argument("--reuse", action="store_true", help="measure run folders already under --keep, no training")
    add_preset_run_arguments(parser)
    args = parser.parse_args()
    data, overrides, root = preset_run_setup(args, "bench-open-set-")
    rows, splits = [], {}
    for seed in args.seeds:
        proxy = root / f"proxy-{seed}"
        splits[seed] = make_proxy(data, seed, proxy)
        bank_held_out: list[Path] = []
        extra: list[str] = []
        if args.non_landmarks:
            bank_for_training = root / f"non-landmarks-{seed}"
            bank_held_out = split_bank_for_bench(Path(args.non_landmarks), seed, bank_for_training)
            extra = [f"data.non_landmarks={bank_for_training}"]
            splits[seed]["bank_held_out"] = len(bank_held_out)
        print(f"seed {seed}: {splits[seed]}", flush=True)
        for spec in args.presets:
            preset, *changes = spec.split("+")
            run_dir = root / f"{spec}-{seed}"
            started = time.monotonic()
            if not (args.reuse and (run_dir / "model.json").exists()):
                train(load_config(preset, overrides.get(preset, []) + changes + extra), proxy, run_dir)
            wall = (time.monotonic() - started) / 60
            target = RunFolder(run_dir).read_scoring().recognize.target_precision
            bank = root / f"non-landmarks-{seed}" if args.non_landmarks else None
            cache = root / f"embeddings-{spec}-{seed}.npz"
            for row in evaluate_variants(run_dir, proxy, bank_held_out, bank, target, cache):
                rows.append({"preset": " ".join([preset, *changes]), "seed": seed, "wall_minutes": wall, **row})
    frame = pd.DataFrame(rows)
    frame.to_csv(root / "open_set.csv", index=False)
    text = table(frame)
    print(text)
    if args.write:
        described = "; ".join(
            f"seed {s}: {v['landmarks']} known landmarks ({v['train']} training photos), {v['hidden']} hidden, "
            f"{v['known_queries']} + {v['hidden_queries']} queries"
            + (f" + {v['bank_held_out']} held-out bank photos" if "bank_held_out" in v else "")
            for s, v in splits.items())
        command = ("LANDMARKS_DATA=../shared/data/landmarks-mini .venv/bin/python benchmarks/bench_open_set.py --write "
                   + (f"--non-landmarks {args.non_landmarks} " if args.non_landmarks else "")
                   + f"--presets {' '.join(args.presets)} --seeds {' '.join(map(str, args.seeds))}"
                   + "".join(f" --override {p} {' '.join(v)}" for p, v in overrides.items()))
        body = (
            "A test set built from train.csv alone, so a recipe can be compared without tuning on the real test set: "
            f"{HIDDEN_FRACTION:.0%} of the landmarks are hidden from training and their photos return as 'no known "
            f"landmark' queries, beside {QUERY_FRACTION:.0%} of each known landmark's photos held back from training"
            + ("; a third of the non-landmark bank is held out as queries, the rest goes to training as "
               "`data.non_landmarks`" if args.non_landmarks else "")
            + f" ({described}). One training per preset and seed; every variant re-scores the same embeddings "
            "(see the docstring of bench_open_set.py for the columns).\n\n```\n" + command + "\n```\n\n" + text
        )
        write_section("Open-set proxy from train.csv (bench_open_set.py)", body)


if __name__ == "__main__":
    main()
