"""The catalog at GLDv2 scale: reading train.csv, sampling the top landmarks and splitting, on synthetic data.

    .venv/bin/python benchmarks/bench_catalog.py --write --tracemalloc   # GLDv2-clean (1.58M) and full (4.13M)
    .venv/bin/python benchmarks/bench_catalog.py --rows 100000      # a quick look

For each size a synthetic train.csv shaped like GLDv2's (id of 16 hex characters, url, landmark_id;
sparse landmark ids; long-tailed counts: every landmark has at least one photo, the largest thousands)
is written to a temporary folder by one process, then a fresh process measures, in that order:
read_catalog, sample_top_landmarks(500 landmarks, 40 photos each) and stratified_split (70/20/10) over
all rows. Peak memory is that process's peak RSS (VmHWM); ``--tracemalloc`` also reports
Python's allocation peak, from a second measuring process (tracing slows every step down).
No image is read: read_catalog never opens images.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import peak_rss_mb  # noqa: E402

import numpy as np  # noqa: E402

GLDV2_CLEAN = (1_580_470, 81_313)  # rows, landmarks
GLDV2_FULL = (4_132_914, 203_094)
TITLE = "Catalog at full scale (bench_catalog.py)"


def landmarks_for(rows: int) -> int:
    return {GLDV2_CLEAN[0]: GLDV2_CLEAN[1], GLDV2_FULL[0]: GLDV2_FULL[1]}.get(rows, max(1, rows // 20))


def generate(rows: int, landmarks: int, out: Path, seed: int = 0, chunk: int = 500_000) -> dict:
    """Write ``out/train.csv`` (id,url,landmark_id) with long-tailed landmark counts; return its shape."""
    rng = np.random.default_rng(seed)
    weights = (np.arange(landmarks) + 10.0) ** -0.8
    counts = 1 + rng.multinomial(rows - landmarks, weights / weights.sum())  # every landmark at least once
    landmark_ids = rng.choice(max(210_000, 2 * landmarks), landmarks, replace=False)  # sparse, as in GLDv2
    labels = np.repeat(landmark_ids, counts)
    rng.shuffle(labels)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.csv", "wb") as handle:
        handle.write(b"id,url,landmark_id\n")
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            ids = np.frombuffer(rng.bytes(8 * n).hex().encode(), dtype="S16")
            url = np.char.add(np.char.add(b"https://upload.wikimedia.org/wikipedia/commons/0/0a/", ids), b".jpg")
            line = np.char.add(np.char.add(np.char.add(np.char.add(ids, b","), url), b","),
                               labels[start : start + n].astype("S7"))
            handle.write(b"\n".join(line.tolist()) + b"\n")
    return {"rows": rows, "landmarks": landmarks, "max_per_landmark": int(counts.max()),
            "median_per_landmark": float(np.median(counts)),
            "csv_mb": (out / "train.csv").stat().st_size / 2**20}


def _rss_mb() -> float:
    return peak_rss_mb()


def measure(folder: Path, use_tracemalloc: bool) -> dict:
    """Time the three steps in this (fresh) process; peak RSS at the end."""
    from landmarks.data.catalog import read_catalog
    from landmarks.data.sampling import sample_top_landmarks, stratified_split

    result: dict = {"rss_after_imports_mb": _rss_mb()}
    if use_tracemalloc:
        import tracemalloc

        tracemalloc.start()
    start = time.perf_counter()
    catalog = read_catalog(folder)
    result["read_s"] = time.perf_counter() - start
    result["rss_after_read_mb"] = _rss_mb()
    start = time.perf_counter()
    sample = sample_top_landmarks(catalog.frame, 500, 40, seed=42)
    result["sample_s"] = time.perf_counter() - start
    result["sample_rows"] = len(sample)
    start = time.perf_counter()
    train, val, test = stratified_split(catalog.frame["landmark_id"].to_numpy(), 0.2, 0.1, seed=42)
    result["split_s"] = time.perf_counter() - start
    result["split_fractions"] = [len(x) / len(catalog.frame) for x in (train, val, test)]
    result["rows_read"] = len(catalog.frame)
    result["peak_rss_mb"] = _rss_mb()
    if use_tracemalloc:
        result["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return result


def run_size(rows: int, use_tracemalloc: bool) -> dict:
    """Generate in one process and measure in another, so each process's peak memory is its own."""
    script = str(Path(__file__).resolve())
    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as tmp:
        started = time.perf_counter()
        shape = json.loads(subprocess.run(
            [sys.executable, script, "--generate", str(rows), tmp], check=True, capture_output=True, text=True
        ).stdout)
        shape["generate_s"] = time.perf_counter() - started
        measured = [sys.executable, script, "--measure", tmp]
        shape.update(json.loads(subprocess.run(measured, check=True, capture_output=True, text=True).stdout))
        if use_tracemalloc:  # a separate pass: tracing slows every allocation, so it must not touch the timings
            traced = json.loads(subprocess.run(
                measured + ["--tracemalloc"], check=True, capture_output=True, text=True
            ).stdout)
            shape["tracemalloc_peak_mb"] = traced["tracemalloc_peak_mb"]
    return shape


def table(results: list[dict]) -> str:
    lines = [
        "| rows | landmarks (max / median photos) | train.csv | read_catalog | sample_top_landmarks(500, 40) "
        "| stratified_split 70/20/10 | peak RSS (after imports) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['rows']:,} | {r['landmarks']:,} ({r['max_per_landmark']:,} / {r['median_per_landmark']:.0f}) "
            f"| {r['csv_mb']:.0f} MB | {r['read_s']:.2f} s | {r['sample_s']:.2f} s ({r['sample_rows']:,} rows) "
            f"| {r['split_s']:.2f} s | {r['peak_rss_mb']:,.0f} MB ({r['rss_after_imports_mb']:.0f} MB)"
            + (f", tracemalloc peak {r['tracemalloc_peak_mb']:,.0f} MB" if "tracemalloc_peak_mb" in r else "")
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[GLDV2_CLEAN[0], GLDV2_FULL[0]],
                        help="catalog sizes to measure (default: GLDv2-clean 1,580,470 and GLDv2 4,132,914)")
    parser.add_argument("--tracemalloc", action="store_true", help="also report tracemalloc's peak (slower)")
    parser.add_argument("--write", action="store_true", help=f"replace the section '{TITLE}' of benchmarks/RESULTS.md")
    parser.add_argument("--generate", nargs=2, metavar=("ROWS", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--measure", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        rows = int(args.generate[0])
        print(json.dumps(generate(rows, landmarks_for(rows), Path(args.generate[1]))))
        return
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.tracemalloc)))
        return
    results = []
    for rows in args.rows:
        print(f"{rows:,} rows ...", file=sys.stderr, flush=True)
        results.append(run_size(rows, args.tracemalloc))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    body = table(results)
    print(body)
    if args.write:
        from common import write_section

        command = ".venv/bin/python benchmarks/bench_catalog.py --write" + (
            "" if args.rows == [GLDV2_CLEAN[0], GLDV2_FULL[0]] else " --rows " + " ".join(map(str, args.rows))
        ) + (" --tracemalloc" if args.tracemalloc else "")
        split = results[-1]["split_fractions"]
        write_section(
            TITLE,
            f"Synthetic GLDv2-shaped `train.csv` (16-hex ids, a `url` column, sparse landmark ids, long-tailed counts), "
            f"read and processed in one fresh process per size; no image is opened. Rerun: `{command}`.\n\n"
            f"{body}\n\n"
            f"stratified_split over all rows of the largest catalog gave "
            f"{split[0]:.1%} / {split[1]:.1%} / {split[2]:.1%} (train / val / test): small landmarks keep at least "
            f"one training photo and give one to val (2+ photos) and test (3+ photos) first.",
        )


if __name__ == "__main__":
    main()
