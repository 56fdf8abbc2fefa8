"""The geo prior on landmarks-mini's test queries: with the true place, with a wrong one, and without.

Each test query is embedded once; the Recognizer then scores it three times:

- **none**: no location (what the service does for a photo without EXIF GPS);
- **true place**: a landmark query gets its landmark's coordinates moved 1-5 km in a random direction;
- **wrong place**: a landmark query gets the coordinates of another landmark at least 500 km from its own (+1-5 km).

Queries that show no known landmark get a random landmark's coordinates (+1-5 km) in both located settings: someone
standing at a landmark photographing something else. Figures: accuracy (landmark queries, top-1 whatever its
confidence), GAP (all queries ranked, as Kaggle's), precision of the known answers (those at or above the
threshold; an answer on a no-landmark query is wrong) and how many landmark queries got a right known answer.

    LANDMARKS_DATA=../shared/data/landmarks-mini python benchmarks/bench_geo.py --run runs/presets/glr [--write]
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np

from common import data_dir, write_section
from landmarks.data.catalog import read_catalog
from landmarks.evaluate.metrics import accuracy, global_average_precision
from landmarks.recognize.embed import embed_paths
from landmarks.recognize.geo import Location, haversine_km
from landmarks.recognize.recognizer import Recognizer

WRONG_MIN_KM = 500.0


def moved(place: Location, rng: np.random.Generator, low_km: float = 1.0, high_km: float = 5.0) -> Location:
    """``place`` moved low-high km in a random direction."""
    distance, bearing = rng.uniform(low_km, high_km), rng.uniform(0, 2 * math.pi)
    dlat = distance * math.cos(bearing) / 111.32
    dlon = distance * math.sin(bearing) / (111.32 * max(0.01, math.cos(math.radians(place.latitude))))
    return Location(max(-90.0, min(90.0, place.latitude + dlat)), ((place.longitude + dlon + 180) % 360) - 180)


def locations(truth: np.ndarray, coordinates: dict[int, Location], setting: str, rng: np.random.Generator) -> list:
    """Where each query is said to be taken in ``setting`` (none, true, wrong)."""
    if setting == "none":
        return [None] * len(truth)
    ids = sorted(coordinates)
    out: list[Location | None] = []
    for landmark_id in truth:
        landmark_id = int(landmark_id)
        if landmark_id not in coordinates:  # no landmark (or one without coordinates): a random landmark's place
            out.append(moved(coordinates[ids[rng.integers(len(ids))]], rng))
        elif setting == "true":
            out.append(moved(coordinates[landmark_id], rng))
        else:
            far = [i for i in ids if haversine_km(coordinates[i], coordinates[landmark_id]) >= WRONG_MIN_KM]
            out.append(moved(coordinates[far[rng.integers(len(far))]], rng))
    return out


def measure(recognizer: Recognizer, embeddings: np.ndarray, logits: np.ndarray, truth: np.ndarray,
            where: list) -> dict[str, float]:
    predictions = recognizer.score(embeddings, logits, locations=where)
    predicted = np.array([p.landmark_id for p in predictions])
    confidence = np.array([p.confidence for p in predictions])
    known = np.array([p.known for p in predictions])
    right = predicted == truth
    return {"accuracy": accuracy(predicted, truth), "gap": global_average_precision(predicted, confidence, truth),
            "known_precision": float((known & right).sum() / max(1, known.sum())), "known": int(known.sum()),
            "known_right": int((known & right & (truth >= 0)).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run folder trained on landmarks-mini")
    parser.add_argument("--radius-km", type=float, help="recognize.geo_radius_km (default: the run's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = data_dir()
    recognizer = Recognizer.load(args.run, trained_only=True)
    catalog = read_catalog(data)
    if not recognizer.coordinates:  # a run trained before labels.csv kept them: the data's landmarks.csv
        recognizer.info = {i: v for i, v in catalog.info.items() if i in recognizer.names}
    if args.radius_km is not None:
        recognizer.config.geo_radius_km = args.radius_km
    coordinates = recognizer.coordinates
    test = read_catalog(data, "test").frame
    embeddings, logits, valid, _ = embed_paths(recognizer.embedder, test["path"].tolist(), 32, 2)
    truth = test["landmark_id"].to_numpy()[valid]
    rows = []
    for setting, label in (("none", "no location"), ("true", "true place + 1-5 km"),
                           ("wrong", f"wrong place (another landmark's, >= {WRONG_MIN_KM:.0f} km away)")):
        figures = measure(recognizer, embeddings, logits, truth, locations(truth, coordinates, setting,
                                                                           np.random.default_rng(args.seed)))
        rows.append((label, figures))
        print(f"{label:55s} " + " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))
    landmark_queries, none_queries = int((truth >= 0).sum()), int((truth < 0).sum())
    table = ["| photo location | accuracy | GAP | precision of known answers | known answers (right, of landmark queries) |",
             "|---|---|---|---|---|"]
    for label, f in rows:
        table.append(f"| {label} | {f['accuracy']:.3f} | {f['gap']:.3f} | {f['known_precision']:.3f} | "
                     f"{f['known']} ({f['known_right']} of {landmark_queries}) |")
    body = (f"`LANDMARKS_DATA=../shared/data/landmarks-mini python benchmarks/bench_geo.py --run {args.run} --write`\n\n"
            f"Run `{Path(args.run).name}` (threshold {recognizer.config.min_confidence:.3f}), geo radius "
            f"{recognizer.config.geo_radius_km:g} km (rule: a landmark d > r km away keeps exp(-(d - r) / r) of its "
            f"confidence; `landmarks/recognize/geo.py`). {landmark_queries} landmark queries and {none_queries} "
            "no-landmark queries of landmarks-mini's test set; no-landmark queries get a random landmark's place "
            "(+1-5 km) in both located rows. Seed "
            f"{args.seed}.\n\n" + "\n".join(table))
    if args.write:
        write_section("Geo prior (landmarks-mini)", body)
    print(body)


if __name__ == "__main__":
    main()
