"""Million-scale kNN: build time, memory, query time and recall of the exact and approximate indexes.

    nice -n 10 .venv/bin/python benchmarks/bench_index.py --write         # 1M x 512-d, the RESULTS.md section
    .venv/bin/python benchmarks/bench_index.py --count 100000 --landmarks 5000 --queries 2000   # a quick look
    .venv/bin/python benchmarks/bench_index.py --types ivf --nlist 2048 --nprobe 8 16 32          # tuning

Synthetic references shaped like real landmark embeddings: ``--landmarks`` centres (random unit vectors), photos
per landmark long-tailed (a truncated power law on 1..200 whose mean gives ``--count`` photos), each photo
``normalise(centre + s * g)`` with g ~ N(0, I/dim) and s uniform in [0.75, 1.33], so that its cosine to its
centre is 0.6-0.8 and two photos of one landmark have a cosine of ~0.5 (random pairs: ~0 +- 0.04). Queries
are new photos (held out) of landmarks drawn uniformly, so many have only one or two reference photos.

Each index type runs in a fresh process (peak RSS is that process's: its data plus its index). Exact search
(``flat``) runs first and its top-1 is the ground truth: recall@1 = same top-1 position as exact search;
landmark@1 = same top-1 landmark as exact search; true@1 = top-1 landmark is the query's own. Query time is
all queries searched in batches of ``--batch`` (k = 10, as the Recognizer asks), divided by their number.
Index size is the byte length of the serialised FAISS index (``faiss.write_index``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from common import peak_rss_mb  # noqa: E402

import numpy as np  # noqa: E402

TITLE = "Million-scale kNN (bench_index.py)"
MAX_PHOTOS = 200
K = 10


def long_tail_counts(count: int, landmarks: int, rng: np.random.Generator, max_photos: int = MAX_PHOTOS) -> np.ndarray:
    """Photos per landmark: a power law on 1..max_photos (exponent solved for the mean count/landmarks), summing to count."""
    if not landmarks <= count <= landmarks * max_photos:
        raise SystemExit(f"--count must be between --landmarks and {max_photos} x --landmarks")
    sizes = np.arange(1, max_photos + 1, dtype=np.float64)
    low, high = -3.0, 6.0  # P(size) ~ size^-alpha; mean decreases as alpha grows
    for _ in range(60):
        alpha = (low + high) / 2
        p = sizes**-alpha
        if (sizes * p).sum() / p.sum() > count / landmarks:
            low = alpha
        else:
            high = alpha
    p = sizes**-alpha
    counts = rng.choice(sizes.astype(np.int64), landmarks, p=p / p.sum())
    difference = count - int(counts.sum())
    while difference:  # add or remove single photos at random landmarks that stay within 1..max_photos
        step = 1 if difference > 0 else -1
        room = np.flatnonzero(counts < max_photos) if step > 0 else np.flatnonzero(counts > 1)
        chosen = rng.choice(room, min(abs(difference), len(room)), replace=False)
        counts[chosen] += step
        difference -= step * len(chosen)
    return counts


def photos(centres: np.ndarray, labels: np.ndarray, rng: np.random.Generator, chunk: int = 65_536) -> np.ndarray:
    """normalise(centre + s * g), s uniform in [0.75, 1.33], g ~ N(0, I/dim); float32, built chunk by chunk."""
    dim = centres.shape[1]
    out = np.empty((len(labels), dim), dtype=np.float32)
    for start in range(0, len(labels), chunk):
        rows = labels[start : start + chunk]
        scale = rng.uniform(0.75, 1.33, (len(rows), 1)).astype(np.float32) / np.float32(np.sqrt(dim))
        block = rng.standard_normal((len(rows), dim), dtype=np.float32) * scale
        block += centres[rows]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + len(rows)] = block
    return out


def dataset(count: int, landmarks: int, dim: int, queries: int, seed: int = 0):
    """(references, reference landmark ids, queries, query landmark ids, shape statistics)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((landmarks, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    counts = long_tail_counts(count, landmarks, rng)
    labels = np.repeat(np.arange(landmarks, dtype=np.int64), counts)
    rng.shuffle(labels)
    references = photos(centres, labels, rng)
    query_labels = rng.integers(0, landmarks, queries)
    query_photos = photos(centres, query_labels, rng)
    _, first_photo = np.unique(labels, return_index=True)  # one reference photo of every landmark
    sample = slice(0, min(10_000, queries))
    stats = {"median_photos": float(np.median(counts)), "max_photos": int(counts.max()),
             "cosine_to_centre": float(np.mean(np.sum(references[sample] * centres[labels[sample]], axis=1))),
             "cosine_same_landmark": float(np.mean(np.sum(query_photos[sample] * references[first_photo[query_labels[sample]]], axis=1))),
             "cosine_random": float(np.std(np.sum(query_photos[sample] * references[sample], axis=1)))}
    return references, labels, query_photos, query_labels, stats





def worker(spec: dict) -> dict:
    """Build one index type over the data set, time its batched search, compare with the exact top-1."""
    import faiss

    from landmarks.recognize.index import EmbeddingIndex, available_cores

    references, labels, queries, query_labels, stats = dataset(spec["count"], spec["landmarks"], spec["dim"], spec["queries"])
    image_ids = [f"{i:016x}" for i in range(len(references))]
    data_rss = peak_rss_mb()
    start = time.perf_counter()
    index = EmbeddingIndex.build(references, image_ids, labels, spec["type"], nlist=spec.get("nlist"), pq_m=spec.get("pq_m"))
    build_seconds = time.perf_counter() - start
    default_nprobe = index.nprobe
    del references
    gc.collect()
    with tempfile.TemporaryDirectory() as tmp:
        faiss.write_index(index.index, f"{tmp}/index.faiss")
        index_bytes = os.path.getsize(f"{tmp}/index.faiss")
    limit = min(len(queries), spec.get("query_limit") or len(queries))
    queries, query_labels = queries[:limit], query_labels[:limit]
    exact = np.load(spec["exact"])[:limit] if spec["type"] != "flat" else None
    rows = []
    for nprobe in spec.get("sweep") or [default_nprobe]:
        if nprobe is not None:
            index.nprobe = nprobe
        positions = np.empty((len(queries), K), np.int64)
        start = time.perf_counter()
        for first in range(0, len(queries), spec["batch"]):
            positions[first : first + spec["batch"]] = index.search(queries[first : first + spec["batch"]], K)[1]
        seconds = time.perf_counter() - start
        top1 = positions[:, 0]
        if exact is None:
            np.save(spec["exact"], top1)
        exact_top1 = top1 if exact is None else exact
        top1_labels = index.landmark_ids_at(top1)
        rows.append({
            "nprobe": index.nprobe, "default": index.nprobe == default_nprobe, "queries": len(queries),
            "ms_per_query": 1000 * seconds / len(queries),
            "recall_at_1": float((top1 == exact_top1).mean()),
            "landmark_at_1": float((top1_labels == index.landmark_ids_at(exact_top1)).mean()),
            "true_at_1": float((top1_labels == query_labels).mean()),
        })
    pq_m = faiss.downcast_index(faiss.extract_index_ivf(index.index)).pq.M if index.index_type == "ivfpq" else None
    return {"type": spec["type"], "built": index.index_type, "nlist": index.nlist, "count": len(index), "pq_m": pq_m,
            "k_factor": float(index.index.k_factor) if pq_m else None, "threads": available_cores(),
            "build_seconds": build_seconds, "index_bytes": index_bytes, "data_rss_mb": data_rss,
            "peak_rss_mb": peak_rss_mb(), "stats": stats, "searches": rows}


def run_worker(spec: dict) -> dict:
    result = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"worker {spec['type']} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    lines = [
        "| index | nlist / nprobe | build s | index size | peak RSS (data alone) | queries | ms/query (batched) "
        "| recall@1 vs exact | landmark@1 vs exact | true landmark@1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for s in r["searches"]:
            name = r["type"] if r["type"] == r["built"] else f"{r['type']} -> {r['built']}"
            if r.get("pq_m"):
                name += f" (PQ {r['pq_m']}x4 bit, re-rank {r['k_factor']:.0f}k)"
            ivf = f"{r['nlist']:,} / {s['nprobe']:,}{' (default)' if s['default'] else ''}" if r["nlist"] else "-"
            lines.append(
                f"| {name} | {ivf} | {r['build_seconds']:.1f} | {r['index_bytes'] / 2**20:,.0f} MB | "
                f"{r['peak_rss_mb']:,.0f} MB ({r['data_rss_mb']:,.0f} MB) | {s['queries']:,} | {s['ms_per_query']:.3f} | "
                f"{s['recall_at_1']:.4f} | {s['landmark_at_1']:.4f} | {s['true_at_1']:.4f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="reference photos")
    parser.add_argument("--landmarks", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000, help="queries per search call")
    parser.add_argument("--types", default="flat,ivf,ivfpq,auto", help="comma-separated; flat always runs first")
    parser.add_argument("--nlist", type=int, help="override the default nlist of ivf / ivfpq")
    parser.add_argument("--nprobe", type=int, nargs="+",
                        help="search with each of these nprobe (default: 10%%, 25%% and 50%% (the default) of nlist)")
    parser.add_argument("--pq-m", type=int, help="override the default PQ sub-quantizers of ivfpq")
    parser.add_argument("--ivf-queries", type=int, default=1000,
                        help="queries searched by IVF-flat (slow at a large nprobe); the others search all")
    parser.add_argument("--write", action="store_true", help=f"replace the section '{TITLE}' of benchmarks/RESULTS.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    from landmarks.recognize.index import EmbeddingIndex, default_nlist, default_nprobe

    types = [t.strip() for t in args.types.split(",") if t.strip()]
    order = ["flat"] + [t for t in types if t != "flat"]
    nlist = args.nlist or default_nlist(args.count)
    sweep = args.nprobe or sorted({max(1, round(0.1 * nlist)), max(1, round(0.25 * nlist)), default_nprobe(nlist)})
    base = {"count": args.count, "landmarks": args.landmarks, "dim": args.dim, "queries": args.queries, "batch": args.batch}
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in order:
            spec = dict(base, type=kind, exact=f"{tmp}/exact.npy")
            if kind in ("ivf", "ivfpq"):
                spec.update(nlist=args.nlist, pq_m=args.pq_m, sweep=sweep)
            if kind == "ivf":
                spec["query_limit"] = args.ivf_queries
            chosen = EmbeddingIndex.choose_type(args.count)
            reuse = next((r for r in results if kind == "auto" and r["type"] == chosen and not args.nlist
                          and not args.pq_m), None)
            if reuse:  # auto builds what the default `chosen` build built (same defaults, same seed): show its default row
                result = dict(reuse, type="auto", searches=[s for s in reuse["searches"] if s["default"]])
            else:
                print(f"{time.strftime('%H:%M:%S')} {kind} ...", file=sys.stderr, flush=True)
                result = run_worker(spec)
            results.append(result)
            print("\n".join(table([result]).splitlines()[2:]), file=sys.stderr, flush=True)
    text = table(results)
    print(text)
    if args.write:
        from common import write_section

        stats = results[0]["stats"]
        command = "nice -n 10 .venv/bin/python benchmarks/bench_index.py --write"
        shape = (f"{args.count:,} references x {args.dim}-d of {args.landmarks:,} synthetic landmarks "
                 f"(1-{MAX_PHOTOS} photos each, power law: median {stats['median_photos']:.0f}, max {stats['max_photos']}; "
                 f"mean cosine of a photo to its landmark centre {stats['cosine_to_centre']:.2f}, to another photo of its "
                 f"landmark {stats['cosine_same_landmark']:.2f}, between unrelated photos 0 +- {stats['cosine_random']:.2f}), "
                 f"{args.queries:,} held-out queries of uniformly drawn landmarks, k = {K}, batches of {args.batch}, "
                 f"{results[0]['threads']} threads. Rerun: `{command}` (~15 min).")
        body = (f"{shape}\n\n{text}\n\n"
                "recall@1 vs exact: the top-1 is exact search's top-1; landmark@1 vs exact: its landmark is that of exact "
                "search's top-1; true landmark@1: its landmark is the query's own. Index size: the serialised FAISS index "
                "(ivfpq keeps the float vectors for the exact re-ranking). Peak RSS: the measuring process (data alone: "
                "after generating the references and queries). `auto` is the default ivfpq row (same build).")
        write_section(TITLE, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
