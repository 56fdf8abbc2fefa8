"""Teaching the web service landmarks it has never seen, on real photos, through its API.

    LANDMARKS_DATA=../shared/data/landmarks-mini .venv/bin/python benchmarks/bench_enrol.py --write --preset glr \\
        --photos 3 5 10 [--run runs/enrol-glr]

A run is trained (default: the no-training `baseline-knn` preset) on landmarks-mini without the N landmarks that
have the most photos; ``--run DIR`` keeps it there and reuses it when DIR already holds one. For each number K of
teaching photos, a fresh copy of the run is served and each of those landmarks is enrolled (``POST /landmarks``)
from K of its photos; its other photos are the queries. The trained landmarks' held-out photos (the run's test
split; a run without one: the data's test photos of trained landmarks) are asked before and after the teaching.

Reported, on the taught landmarks' other photos: top-1 right, right and known (above the threshold), known but
wrong, how often a right top-1 is given as known, and the median confidence of right top-1 answers; on the trained
landmarks' photos: precision of known answers and coverage (right and known / photos) before and after teaching.
Every photo is embedded once; the answers are ``Recognizer.score`` of the service's recognizer, the scoring
``POST /predict`` runs (a sample is checked against ``POST /predict`` itself).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import answers, data_dir, teaching_photos, write_section  # noqa: E402

import numpy as np  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from landmarks.config import load_config  # noqa: E402
from landmarks.data.catalog import read_catalog, write_catalog  # noqa: E402
from landmarks.recognize.embed import embed_paths  # noqa: E402
from landmarks.recognize.recognizer import Recognizer  # noqa: E402
from landmarks.run_folder import RunFolder  # noqa: E402
from landmarks.serve.app import create_app  # noqa: E402
from landmarks.serve.settings import Settings  # noqa: E402
from landmarks.store import STORE_FILE  # noqa: E402
from landmarks.train.run import train  # noqa: E402

TITLE = "Teaching new landmarks through the web service (bench_enrol.py, {preset})"
OPEN_UNLIMITED = dict(open=True, predict_per_minute=0, suggestions_per_hour=0, max_pending_per_client=0)


MIN_DRAWN_PHOTOS = 25  # a drawn landmark has photos for 10 teaching photos and at least 15 questions


def landmarks_to_teach(catalog, count: int, draw: int) -> list[int]:
    """The ``count`` landmarks with the most photos (``draw`` 0), or ``count`` drawn at random (seed ``draw``) among
    those with at least ``MIN_DRAWN_PHOTOS`` photos."""
    counts = catalog.frame["landmark_id"].value_counts()
    if not draw:
        return [int(i) for i in counts.index[:count]]
    eligible = np.sort(counts.index[counts >= MIN_DRAWN_PHOTOS].to_numpy())
    return [int(i) for i in np.random.default_rng(draw).choice(eligible, size=count, replace=False)]


def run_folder(args: argparse.Namespace, catalog, held_out: list[int], tmp: Path) -> Path:
    """The run trained without the held-out landmarks: ``--run`` when it holds one, else trained (into ``--run``)."""
    run_dir = Path(args.run) if args.run else tmp / "run"
    if RunFolder(run_dir).holds_a_run:
        labels = set(RunFolder(run_dir).read_labels()["landmark_id"].astype(int))
        if labels & set(held_out):
            raise SystemExit(f"{run_dir} was trained on some of the landmarks to teach; give another --run")
        return run_dir
    known = catalog.frame[~catalog.frame["landmark_id"].isin(held_out)]
    subset = write_catalog(known, catalog.names, run_dir.parent / f"{run_dir.name}-data")
    return train(load_config(args.preset), subset, run_dir)


def trained_queries(run_dir: Path, data: Path) -> tuple[list[str], np.ndarray, str]:
    """(paths, landmark ids, what they are) of the trained landmarks' photos held out of training."""
    split = RunFolder(run_dir).read_split()
    test = split[(split["split"] == "test") & split["valid"].astype(bool)]
    if len(test):
        return (test["path"].tolist(), test["landmark_id"].to_numpy(np.int64),
                "the run's held-out test split, searched without themselves (as the run measured them)")
    catalog = read_catalog(data, split="test")
    labels = set(RunFolder(run_dir).read_labels()["landmark_id"].astype(int))
    frame = catalog.frame[catalog.frame["landmark_id"].isin(labels)]
    return frame["path"].tolist(), frame["landmark_id"].to_numpy(np.int64), "the data's test photos of trained landmarks"


def embed_once(recognizer: Recognizer, paths: list[str], cache: Path | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """path -> (embedding, logits) of every readable photo, from ``cache`` when it holds them all."""
    if cache is not None and cache.exists():
        stored = np.load(cache, allow_pickle=False)
        known = {str(p): i for i, p in enumerate(stored["paths"])}
        if all(p in known for p in paths):
            return {p: (stored["embeddings"][known[p]], stored["logits"][known[p]]) for p in paths}
    embeddings, logits, valid, _ = embed_paths(recognizer.embedder, paths)
    readable = [p for p, ok in zip(paths, valid) if ok]
    if cache is not None:
        np.savez(cache, paths=np.asarray(readable), embeddings=embeddings, logits=logits)
    return {p: (embeddings[i], logits[i]) for i, p in enumerate(readable)}


def shares(predictions, truth: np.ndarray) -> dict[str, float]:
    top1 = np.array([p.landmark_id for p in predictions]) == truth
    known = np.array([p.known for p in predictions])
    right_known = top1 & known
    right_confidences = [p.confidence for p, ok in zip(predictions, top1) if ok]
    return {"photos": len(truth), "top1": top1.mean(), "right_known": right_known.mean(),
            "known_wrong": (known & ~top1).mean(), "given": right_known.sum() / max(1, top1.sum()),
            "precision": right_known.sum() / known.sum() if known.any() else float("nan"),
            "median_right": statistics.median(right_confidences) if right_confidences else float("nan")}


def photo_order(catalog, landmark_id: int, most_photos: int, max_queries: int) -> list[str]:
    """A landmark's photos in teaching order (``teaching_photos``), cut to the most teaching photos asked for plus
    ``max_queries`` (0: all)."""
    paths = catalog.frame.loc[catalog.frame["landmark_id"] == landmark_id, "path"].tolist()
    taught, _ = teaching_photos(paths, landmark_id, len(paths))
    return taught[: most_photos + max_queries] if max_queries else taught


def held_out_references(run_dir: Path) -> list[tuple[str, int]]:
    """(image id, landmark id) of the run's held-out test photos: finishing a run adds them to its references, so
    they are taken out of the search before they are asked about."""
    split = RunFolder(run_dir).read_split()
    test = split[split["split"] == "test"]
    return [(str(i), int(l)) for i, l in zip(test["id"], test["landmark_id"])]


def teach(run_dir: Path, catalog, held_out: list[int], photos: int, embedded: dict, trained: tuple,
          max_queries: int = 0, most_photos: int = 0) -> dict:
    """One number of teaching photos on a fresh copy of the run: the figures before and after."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(STORE_FILE + "*", "evaluation", "plots"))
        with TestClient(create_app(copy, settings=Settings(**OPEN_UNLIMITED))) as client:
            service = client.app.state.service
            service.recognizer.remove_references(held_out_references(run_dir))  # in memory only, not in the store
            trained_before = shares(service.recognizer.score(*trained[:2]), trained[2])
            asked, truth, checks = [], [], []
            for landmark_id in held_out:
                name = f"new: {catalog.name_of(landmark_id)}"
                paths = catalog.frame.loc[catalog.frame["landmark_id"] == landmark_id, "path"].tolist()
                taught, queries = teaching_photos(paths, landmark_id, photos)
                if max_queries:  # the same photos for every number of teaching photos: those after the most taught
                    queries = queries[most_photos - photos:][:max_queries]
                queries = [p for p in queries if p in embedded]  # readable ones
                files = [("photos", (Path(p).name, Path(p).read_bytes(), "image/jpeg")) for p in taught]
                response = client.post("/landmarks", data={"name": name}, files=files)
                response.raise_for_status()
                new_id = response.json()["landmark_id"]
                asked += queries
                truth += [new_id] * len(queries)
                checks.append((queries[0], new_id))
            embeddings = np.stack([embedded[p][0] for p in asked])
            logits = np.stack([embedded[p][1] for p in asked])
            predictions = service.recognizer.score(embeddings, logits)
            for (path, _), answer in zip(checks, answers(client, [p for p, _ in checks])):  # the API agrees
                mine = predictions[asked.index(path)]
                assert answer["candidates"][0]["landmark_id"] == mine.landmark_id, (path, answer, mine)
                assert abs(answer["confidence"] - mine.confidence) < 1e-4, (path, answer, mine)
            taught_after = shares(predictions, np.asarray(truth))
            wrong_known = [p for p, t in zip(predictions, truth) if p.known and p.landmark_id != t]
            taught_after["known_wrong_taught"] = (sum(service.recognizer.is_taught(p.landmark_id) for p in wrong_known)
                                                  / max(1, len(predictions)))
            trained_after = shares(service.recognizer.score(*trained[:2]), trained[2])
            centres = {i: c.copy() for i, c in service.recognizer.centres.items()}
        with TestClient(create_app(copy, settings=Settings(**OPEN_UNLIMITED))) as client:  # a restart
            recognizer = client.app.state.service.recognizer
            recognizer.remove_references(held_out_references(run_dir))
            kept = (recognizer.centres.keys() == centres.keys()
                    and all(np.array_equal(recognizer.centres[i], c) for i, c in centres.items()))
            same = [p.landmark_id for p in recognizer.score(embeddings, logits)] == [p.landmark_id for p in predictions]
    return {"photos": photos, "taught": taught_after, "trained_before": trained_before, "trained_after": trained_after,
            "centres": len(centres), "restart": kept and same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="baseline-knn")
    parser.add_argument("--landmarks", type=int, default=5, help="landmarks left out of training, then enrolled")
    parser.add_argument("--draw", type=int, default=0, help="0: the landmarks with the most photos; N: landmarks "
                                                            f"drawn at random (seed N) among those with {MIN_DRAWN_PHOTOS}+ photos")
    parser.add_argument("--photos", type=int, nargs="+", default=[3, 5, 10], help="photos each is enrolled from")
    parser.add_argument("--run", help="the run folder trained without those landmarks: reused when it holds one, "
                                      "else trained there")
    parser.add_argument("--embeddings", help="an .npz of the photos' embeddings: read when it exists (it must come from "
                                             "this --run's model), else written, so that a run is embedded once")
    parser.add_argument("--max-queries", type=int, default=0, help="ask at most this many other photos of each taught "
                                                                     "landmark (0: all), the same for every --photos")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = data_dir()
    catalog = read_catalog(data)
    held_out = landmarks_to_teach(catalog, args.landmarks, args.draw)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = run_folder(args, catalog, held_out, Path(tmp))
        recognizer = Recognizer.load(run_dir, trained_only=True)
        trained_paths, trained_truth, trained_what = trained_queries(run_dir, data)
        taught_paths = [p for landmark_id in held_out
                        for p in photo_order(catalog, landmark_id, max(args.photos), args.max_queries)]
        paths = [*trained_paths, *taught_paths]
        embedded = embed_once(recognizer, paths, Path(args.embeddings) if args.embeddings else None)
        keep = [p in embedded for p in trained_paths]
        trained = (np.stack([embedded[p][0] for p, k in zip(trained_paths, keep) if k]),
                   np.stack([embedded[p][1] for p, k in zip(trained_paths, keep) if k]), trained_truth[keep])
        rows = [teach(run_dir, catalog, held_out, photos, embedded, trained, args.max_queries, max(args.photos))
                for photos in args.photos]
    scoring = RunFolder(run_dir).read_scoring()
    body = report(args, rows, trained_what, scoring, run_dir, [catalog.name_of(i) for i in held_out])
    print(body)
    if args.write:
        write_section(TITLE.format(preset=args.preset) + (f", draw {args.draw}" if args.draw else ""), body)


def report(args: argparse.Namespace, rows: list[dict], trained_what: str, scoring, run_dir: Path,
           taught_names: list[str]) -> str:
    def pct(value: float) -> str:
        return "n/a" if value != value else f"{value:.0%}"

    restarts = ", ".join(f"{r['photos']} photos: {r['centres']} taught landmarks with centres, "
                         f"{'the same centres and answers' if r['restart'] else 'NOT the same'} after a restart"
                         for r in rows)
    lines = ["| teaching photos | taught: photos asked | top-1 right | right and known | known but wrong (naming a taught landmark) | "
             "right top-1 given as known | precision of known | median confidence (right top-1) | trained: "
             "right top-1 given as known | trained: precision before -> after | trained: coverage before -> after |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t, before, after = r["taught"], r["trained_before"], r["trained_after"]
        lines.append(f"| {r['photos']} | {t['photos']} | {pct(t['top1'])} | {pct(t['right_known'])} | "
                     f"{pct(t['known_wrong'])} ({pct(t['known_wrong_taught'])}) | {pct(t['given'])} | {pct(t['precision'])} | {t['median_right']:.2f} | "
                     f"{pct(after['given'])} | {pct(before['precision'])} -> {pct(after['precision'])} | "
                     f"{pct(before['right_known'])} -> {pct(after['right_known'])} |")
    calibration = scoring.calibration
    fitted = "not calibrated" if calibration is None else (
        f"calibration `{calibration.method}` fitted on {', '.join(f'{v} {k}' for k, v in calibration.fitted_on.items() if isinstance(v, int))}, "
        f"threshold {scoring.recognize.min_confidence:.3f}")
    which = (f"landmarks-mini's {args.landmarks} largest landmarks" if not args.draw else
             f"{args.landmarks} landmarks drawn at random (seed {args.draw}) among those with {MIN_DRAWN_PHOTOS}+ photos")
    which += f" ({', '.join(taught_names)})"
    queries = (f"each landmark asked about the same {args.max_queries} of its other photos" if args.max_queries
               else "all its other photos asked")
    command = ("LANDMARKS_DATA=../shared/data/landmarks-mini .venv/bin/python benchmarks/bench_enrol.py --write "
               f"--preset {args.preset} --photos {' '.join(map(str, args.photos))} --max-queries {args.max_queries}"
               f"{f' --draw {args.draw}' if args.draw else ''} --run RUN_DIR")
    return (
        f"`{args.preset}` run trained without {which} ({fitted}); for each "
        f"number of teaching photos ({queries}) a fresh copy is served and each of the {args.landmarks} landmarks enrolled through "
        f"`POST /landmarks` from that many of its photos (no retraining; class centres imprinted from them where the "
        f"head is a cosine classifier); its other photos are then asked. Trained landmarks: {trained_what} "
        f"({rows[0]['trained_before']['photos']} photos), asked before and after the teaching. "
        f"'Right top-1 given as known': right and known / top-1 right.\n\n```\n{command}\n```\n\n" + "\n".join(lines)
        + f"\n\nRestarts: {restarts}."
    )


if __name__ == "__main__":
    main()
