"""Teaching the web service landmarks it has never seen, on real photos, through its API.

    LANDMARKS_DATA=../shared/data/landmarks-mini .venv/bin/python benchmarks/bench_enrol.py --write
    ... --preset glr --landmarks 5 --photos 5

A run is trained (default: the no-training `baseline-knn` preset) on landmarks-mini without the N landmarks
that have the most photos. The service then answers every photo of those landmarks once before and once after
each was enrolled (`POST /landmarks`) from K of its photos; the other photos are the queries. Reported: how
often the top-1 is the right landmark, the median confidence, and how often the answer is "known" at all.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import add_teaching_arguments, answers, data_dir, teaching_photos, write_section  # noqa: E402

import numpy as np  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from landmarks.config import load_config  # noqa: E402
from landmarks.data.catalog import read_catalog, write_catalog  # noqa: E402
from landmarks.serve.app import create_app  # noqa: E402
from landmarks.serve.settings import Settings  # noqa: E402
from landmarks.train.run import train  # noqa: E402

TITLE = "Teaching new landmarks through the web service (bench_enrol.py, {preset})"


def summary(results: list[dict], truth: str) -> tuple[float, float, float]:
    right = np.mean([r["known"] and r["name"] == truth for r in results])
    top1 = np.mean([r["candidates"][0]["name"] == truth for r in results])
    return float(top1), float(right), float(statistics.median(r["confidence"] for r in results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_teaching_arguments(parser, "baseline-knn", "enrolled")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = data_dir()
    catalog = read_catalog(data)
    counts = catalog.frame["landmark_id"].value_counts()
    held_out = [int(i) for i in counts.index[: args.landmarks]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        known = catalog.frame[~catalog.frame["landmark_id"].isin(held_out)]
        subset = write_catalog(known, catalog.names, Path(tmp) / "data")
        run = train(load_config(args.preset), subset, Path(tmp) / "run")
        open_unlimited = Settings(open=True, predict_per_minute=0, suggestions_per_hour=0, max_pending_per_client=0)
        with TestClient(create_app(run, settings=open_unlimited)) as client:  # open: enrolment without a token
            for landmark_id in held_out:
                name = f"new: {catalog.name_of(landmark_id)}"
                paths = catalog.frame.loc[catalog.frame["landmark_id"] == landmark_id, "path"].tolist()
                teach, queries = teaching_photos(paths, landmark_id, args.photos)
                before = answers(client, queries)
                files = [("photos", (Path(p).name, Path(p).read_bytes(), "image/jpeg")) for p in teach]
                enrolled = client.post("/landmarks", data={"name": name}, files=files)
                enrolled.raise_for_status()
                after = answers(client, queries)
                rows.append((catalog.name_of(landmark_id), len(queries), summary(before, name), summary(after, name),
                             float(np.mean([r["known"] for r in before]))))
    lines = ["| landmark (never trained on) | query photos | before: known answers | after: top-1 right | "
             "after: right and known | after: median confidence |", "|---|---|---|---|---|---|"]
    for name, n, _, after, known_before in rows:
        lines.append(f"| {name} | {n} | {known_before:.2f} | {after[0]:.2f} | {after[1]:.2f} | {after[2]:.2f} |")
    total = sum(r[1] for r in rows)
    top1 = sum(r[1] * r[3][0] for r in rows) / total
    body = (
        f"`{args.preset}` run trained without landmarks-mini's {args.landmarks} largest landmarks; each enrolled through "
        f"`POST /landmarks` from {args.photos} of its photos (no retraining), then its other photos sent to `POST /predict`. "
        f"Before enrolment the right answer cannot be given; 'known' answers before are confident wrong answers.\n\n"
        f"```\nLANDMARKS_DATA=../shared/data/landmarks-mini .venv/bin/python benchmarks/bench_enrol.py --write --preset {args.preset}\n```\n\n"
        + "\n".join(lines) + f"\n\nAll {total} query photos: top-1 right {top1:.2f}."
    )
    print(body)
    if args.write:
        write_section(TITLE.format(preset=args.preset), body)


if __name__ == "__main__":
    main()
