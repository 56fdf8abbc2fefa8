"""From feedback to a better model: landmarks taught through the service's review, then exported and retrained.

    LANDMARKS_DATA=../shared/data/landmarks-mini .venv/bin/python benchmarks/bench_feedback.py --write
    ... --preset glr --landmarks 5 --photos 5 [--keep DIR]

A run is trained on landmarks-mini without the N landmarks that have the most photos. Each is then taught through
the API as a deployed service would be: a contributor suggests it (`POST /landmarks` with a contributor token) from
K of its photos and an admin approves every suggestion (`POST /suggestions/{id}/approve`). Its other photos are the
queries, answered (a) by the service from the approved references alone (no retraining), then (b) by a run retrained
on `landmarks feedback export RUN --out DIR --base DATA` (the training data plus the approved photos).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import add_teaching_arguments, answers, data_dir, teaching_photos, write_section  # noqa: E402

import numpy as np  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from landmarks.config import load_config  # noqa: E402
from landmarks.data.catalog import read_catalog, write_catalog  # noqa: E402
from landmarks.recognize.embed import embed_paths  # noqa: E402
from landmarks.recognize.recognizer import Recognizer  # noqa: E402
from landmarks.serve.admin import create_token  # noqa: E402
from landmarks.serve.app import create_app  # noqa: E402
from landmarks.serve.dataset_export import export_feedback  # noqa: E402
from landmarks.serve.settings import Settings  # noqa: E402
from landmarks.train.run import train  # noqa: E402

TITLE = "From feedback to a better model: review, export, retrain (bench_feedback.py, {preset})"
UNLIMITED = Settings(predict_per_minute=0, suggestions_per_hour=0, max_pending_per_client=0)


def scores(results: list[dict], truth: str) -> tuple[float, float]:
    """(top-1 right, right and known)."""
    return (float(np.mean([r["candidates"][0]["name"] == truth for r in results])),
            float(np.mean([r["known"] and r["name"] == truth for r in results])))


def diagnosis(run: Path, queries: dict[str, list[str]]) -> tuple[float, float, float]:
    """Top-1 right of the nearest reference photo alone, of the classifier alone, and the median fused confidence."""
    recognizer = Recognizer.load(run)
    paths = [p for ps in queries.values() for p in ps]
    truth = [n for n, ps in queries.items() for _ in ps]
    embeddings, logits, valid, _ = embed_paths(recognizer.embedder, paths)
    truth = [t for t, ok in zip(truth, valid) if ok]
    _, _, nearest = recognizer.search(embeddings, 1)
    knn = float(np.mean([recognizer.name_of(int(l)) == t for l, t in zip(nearest[:, 0], truth)]))
    classes = recognizer.class_landmark_ids[np.argmax(logits, axis=1)]
    classifier = float(np.mean([recognizer.name_of(int(l)) == t for l, t in zip(classes, truth)]))
    return knn, classifier, float(np.median([p.confidence for p in recognizer.score(embeddings, logits)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_teaching_arguments(parser, "glr", "taught")
    parser.add_argument("--keep", help="keep the runs and the exported dataset under this folder")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides for both trainings")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = data_dir()
    catalog = read_catalog(data)
    counts = catalog.frame["landmark_id"].value_counts()
    held_out = [int(i) for i in counts.index[: args.landmarks]]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-feedback-"))
    known = catalog.frame[~catalog.frame["landmark_id"].isin(held_out)]
    base = write_catalog(known, catalog.names, root / "data")
    started = time.time()
    run = train(load_config(args.preset, args.overrides), base, root / "run")
    minutes_first = (time.time() - started) / 60
    admin, contributor = create_token(run, "admin", "bench admin")[1], create_token(run, "contributor", "bench contributor")[1]
    queries: dict[str, list[str]] = {}
    before: dict[str, tuple[float, float]] = {}
    with TestClient(create_app(run, settings=UNLIMITED)) as client:
        for landmark_id in held_out:
            name = catalog.name_of(landmark_id)
            paths = catalog.frame.loc[catalog.frame["landmark_id"] == landmark_id, "path"].tolist()
            teach, queries[name] = teaching_photos(paths, landmark_id, args.photos)
            files = [("photos", (Path(p).name, Path(p).read_bytes(), "image/jpeg")) for p in teach]
            suggested = client.post("/landmarks", data={"name": name}, files=files,
                                    headers={"Authorization": f"Bearer {contributor}"})
            suggested.raise_for_status()
            assert suggested.json()["status"] == "pending"
            for suggestion_id in suggested.json()["suggestion_ids"]:
                client.post(f"/suggestions/{suggestion_id}/approve", headers={"Authorization": f"Bearer {admin}"}).raise_for_status()
        for name, paths in queries.items():
            before[name] = scores(answers(client, paths), name)
    report = export_feedback(run, root / "export", base)
    started = time.time()
    retrained = train(load_config(args.preset, args.overrides), report.out_dir, root / "retrained")
    minutes_second = (time.time() - started) / 60
    after: dict[str, tuple[float, float]] = {}
    with TestClient(create_app(retrained, settings=UNLIMITED)) as client:
        for name, paths in queries.items():
            after[name] = scores(answers(client, paths), name)
    metrics = [json.loads((r / "metrics.json").read_text()) for r in (run, retrained)]
    diagnoses = [diagnosis(r, queries) for r in (run, retrained)]

    lines = ["| landmark (not in the first training) | query photos | (a) references alone: top-1 right | (a) right and known | "
             "(b) after export + retraining: top-1 right | (b) right and known |", "|---|---|---|---|---|---|"]
    for name, paths in queries.items():
        lines.append(f"| {name} | {len(paths)} | {before[name][0]:.2f} | {before[name][1]:.2f} | {after[name][0]:.2f} | {after[name][1]:.2f} |")
    total = sum(len(p) for p in queries.values())

    def overall(table: dict[str, tuple[float, float]], column: int) -> float:
        return sum(len(queries[n]) * table[n][column] for n in queries) / total

    lines.append(f"| **all** | {total} | **{overall(before, 0):.2f}** | **{overall(before, 1):.2f}** | "
                 f"**{overall(after, 0):.2f}** | **{overall(after, 1):.2f}** |")
    body = (
        f"`{args.preset}` trained on landmarks-mini without its {args.landmarks} largest landmarks ({minutes_first:.1f} min). "
        f"Each was then taught through the API from {args.photos} of its photos: a contributor suggested it "
        f"(`POST /landmarks` with a contributor token), an admin approved every suggestion (`POST /suggestions/{{id}}/approve`). "
        f"Its other photos were sent to `POST /predict` (a) at once, from the approved references alone, and (b) to a run "
        f"retrained ({minutes_second:.1f} min) on `landmarks feedback export RUN --out DIR --base DATA` "
        f"({report.base_photos} training photos + {report.photos_written} approved ones). "
        f"Held-out metrics of the known landmarks (each run's own split): accuracy {metrics[0].get('accuracy', float('nan')):.3f} "
        f"-> {metrics[1].get('accuracy', float('nan')):.3f}, GAP {metrics[0].get('gap', float('nan')):.3f} -> "
        f"{metrics[1].get('gap', float('nan')):.3f} (the second split also holds a few taught photos).\n\n"
        f"```\nLANDMARKS_DATA=../shared/data/landmarks-mini .venv/bin/python benchmarks/bench_feedback.py --write --preset {args.preset}\n```\n\n"
        + "\n".join(lines)
        + "\n\nWhere the answers come from (all query photos, top-1 right): the nearest reference photo alone "
        f"{diagnoses[0][0]:.2f} -> {diagnoses[1][0]:.2f}, the classifier alone {diagnoses[0][1]:.2f} -> {diagnoses[1][1]:.2f}; "
        f"median fused confidence {diagnoses[0][2]:.2f} -> {diagnoses[1][2]:.2f}. Before retraining the classifier does not "
        "know the taught landmarks, so their kNN score stands in for it (fused = kNN); after, their own classifier score "
        f"counts, and from {args.photos} photos (of which the 70/20/10 split trains on about 70 %) it is weak."
    )
    print(body)
    if args.write:
        write_section(TITLE.format(preset=args.preset), body)


if __name__ == "__main__":
    main()
