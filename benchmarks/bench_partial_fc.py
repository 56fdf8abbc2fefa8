"""The sub-center ArcFace head at GLDv2 scale on synthetic features: full against Partial FC.

    .venv/bin/python benchmarks/bench_partial_fc.py --write            # 81,313 and 203,094 classes, rates 1.0 and 0.1
    .venv/bin/python benchmarks/bench_partial_fc.py --classes 81313 --rates 1.0 0.1 --steps 3

Each (classes, rate) runs in a fresh process: SubCenterArcFace(512, classes, k=3) with GLDv2-clean's long-tailed
margins, a batch of 64 random unit embeddings with random labels, cross-entropy, AdamW (the glr preset's optimiser)
over the whole head. Step time is the median of ``--steps`` timed steps (forward, backward, optimiser step) after one
warm-up step; peak memory is the process's peak RSS (VmHWM), minus its RSS before the head was built (torch itself).
On a CPU only: no GPU was lent to this benchmark.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table, peak_rss_mb, publish  # noqa: E402

TITLE = "Partial FC: the ArcFace head at GLDv2 scale (bench_partial_fc.py)"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(classes: int, rate: float, steps: int, batch: int, threads: int) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from landmarks.models.heads import SubCenterArcFace, dynamic_margins

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base = rss_mb()
    counts = np.random.default_rng(0).zipf(1.8, classes).clip(1, 5000)
    head = SubCenterArcFace(512, classes, 3, 30.0, dynamic_margins(counts), sample_rate=rate).train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    times = []
    for step in range(steps + 1):
        embedding = F.normalize(torch.randn(batch, 512), dim=1)
        labels = torch.randint(0, classes, (batch,))
        started = time.perf_counter()
        logits = head(embedding, labels)
        loss = F.cross_entropy(logits, head.targets_of(labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:
            times.append(time.perf_counter() - started)
    return {"classes": classes, "rate": rate, "scored": int(logits.shape[1]), "step_s": statistics.median(times),
            "peak_mb": peak_rss_mb() - base, "params_m": head.weight.numel() / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[81_313, 203_094])
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(int(args.one[0]), float(args.one[1]), args.steps, args.batch, args.threads)))
        return
    rows = []
    for classes in args.classes:
        for rate in args.rates:
            out = subprocess.run([sys.executable, __file__, "--one", str(classes), str(rate), "--steps", str(args.steps),
                                  "--batch", str(args.batch), "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    table = markdown_table(["classes", "head parameters", "rate", "classes scored per step", "step (s)",
                            "peak memory of the head (MB)"],
                           [[f"{r['classes']:,}", f"{r['params_m']:.0f}M", r["rate"], f"{r['scored']:,}",
                             f"{r['step_s']:.2f}", f"{r['peak_mb']:,.0f}"] for r in rows])
    publish(TITLE, [
        f"Sub-center ArcFace (k=3, 512-d) alone on synthetic unit embeddings, batch {args.batch}, AdamW over the whole "
        f"head, {args.threads} threads on a CPU shared with other jobs (no GPU was lent to this task). Step time: "
        f"median of {args.steps} steps (forward, backward, optimiser step); memory: the process's peak RSS above "
        "its RSS before the head was built.",
        "",
        *table,
        "",
        "What Partial FC saves here is the scoring: the normalised copy of the scored centres, the (batch, classes x k) "
        "cosines and their gradients. The weights, their gradient and AdamW's two moments stay whole (4 x the "
        "parameters in fp32), so on one device memory falls by that part only; across GPUs insightface also shards "
        "the centres, which this head does not do.",
    ], args.write)

if __name__ == "__main__":
    main()
