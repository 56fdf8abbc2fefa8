"""Peak memory of `landmarks serve` while 8 clients upload a 9400 x 9400 JPEG to POST /predict at once.

    git archive ad07564 src | tar -x -C /tmp/before      # the code before bounded decoding
    .venv/bin/python benchmarks/bench_serve_memory.py --run RUN --before /tmp/before/src --write

The server runs in its own process (``python -m landmarks.cli serve RUN``), once with this checkout's code and once
with ``--before``'s; its VmRSS once it answers /health and its VmHWM (peak resident memory) after the uploads are
read from /proc.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import served, write_section  # noqa: E402

SIDE_PX = 9400
CLIENTS = 8
ROOT = Path(__file__).resolve().parents[1]


def big_jpeg(side_px: int = SIDE_PX) -> bytes:
    """A legal photo of side_px x side_px (under PIL's 89-MP bomb limit): smooth colour with some texture."""
    rng = np.random.default_rng(0)
    small = (rng.random((side_px // 50, side_px // 50, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(small).resize((side_px, side_px), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def measure(run: Path, src: Path, photo: bytes) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    with served(run, env=env) as (base, pid):
        idle = memory_mb(pid, "VmRSS")

        def one(i: int) -> int:
            return httpx.post(base + "/predict", files={"photo": (f"{i}.jpg", photo, "image/jpeg")}, timeout=300).status_code

        with ThreadPoolExecutor(CLIENTS) as pool:
            statuses = list(pool.map(one, range(CLIENTS)))
        return {"idle_mb": idle, "peak_mb": memory_mb(pid, "VmHWM"), "ok": sum(s == 200 for s in statuses)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--before", type=Path, help="the src/ folder of the code to compare with")
    parser.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    photo = big_jpeg()
    rows = []
    for label, src in ([("before (ad07564)", args.before)] if args.before else []) + [("after", ROOT / "src")]:
        result = measure(args.run, src, photo)
        rows.append(f"| {label} | {result['ok']}/{CLIENTS} | {result['idle_mb']:.0f} MB | {result['peak_mb']:.0f} MB | "
                    f"{result['peak_mb'] - result['idle_mb']:+.0f} MB |")
        print(rows[-1], flush=True)
    if args.write:
        write_section("Server memory with 8 concurrent 9400 x 9400 uploads (bench_serve_memory.py)", f"""
`landmarks serve RUN` on loopback; {CLIENTS} clients post the same {SIDE_PX} x {SIDE_PX} JPEG ({len(photo) / 1e6:.1f} MB,
83 MP, under PIL's 89-MP bomb limit) to `POST /predict` at once; the server's resident memory once it answers
`/health` and its peak (VmHWM) after the last answer. RUN: the tests' tiny `seed-cnn` run (32 px, 2 epochs on
synthetic photos; the model's size does not change how a photo is decoded: 9400 px is drafted to 1/8 for any input
size up to 1175 px). Before: the photo decoded in draft mode for the model, but re-encoded at full size to be kept
(without its metadata). After: kept photos are drafted to 2048 px on their longest side, at most 4 decodes at once.

```
git archive ad07564 src | tar -x -C /tmp/before
.venv/bin/python benchmarks/bench_serve_memory.py --run RUN --before /tmp/before/src --write
```

| code | answered 200 | idle RSS | peak RSS | peak - idle |
|---|---|---|---|---|
""" + "\n".join(rows))


if __name__ == "__main__":
    main()
