"""Helpers shared by the benchmarks: machine description and RESULTS.md sections."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

RESULTS = Path(__file__).parent / "RESULTS.md"


def machine() -> str:
    import torch

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def write_section(title: str, body: str) -> None:
    """Replace (or append) the section ``## title`` of RESULTS.md, leaving the others alone."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nEach section says how to run it again.\n"
    section = f"## {title}\n\n{body.strip()}\n\n_Measured {time.strftime('%Y-%m-%d')} on {machine()}._\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip() + "\n\n" + section
    RESULTS.write_text(text.rstrip() + "\n")


def markdown_table(columns: list[str], rows: list[list[object]]) -> list[str]:
    """A Markdown table's lines: a header of ``columns``, then one line per row (cells already formatted)."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def publish(title: str, lines: list[str], write: bool) -> str:
    """Print the section's ``lines``, with the command that ran it first, and with ``write`` put them in RESULTS.md."""
    body = "\n".join(["`" + " ".join(["python", *sys.argv]) + "`", "", *lines])
    if write:
        write_section(title, body)
    print(body)
    return body


def data_dir() -> Path:
    value = os.environ.get("LANDMARKS_DATA")
    if not value or not Path(value).is_dir():
        raise SystemExit("set LANDMARKS_DATA to the landmarks-mini folder (e.g. ../shared/data/landmarks-mini)")
    return Path(value)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ``ru_maxrss``: Linux carries that over from the parent
    through fork and exec, so a child started by a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def served(run: Path, *options: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    """``landmarks serve RUN`` on a free loopback port, without a per-client predict limit: (its base URL, its pid)
    once it answers /health; stopped when the block ends."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "landmarks.cli", "serve", str(run), "--port", str(port),
                               "--predict-per-minute", "0", *options],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if server.poll() is not None:
                    break
                time.sleep(0.2)
        else:
            raise SystemExit("the server did not start in 2 minutes")
        if server.poll() is not None:
            raise SystemExit("the server did not start: " + server.stderr.read().decode()[-2000:])
        yield base, server.pid
    finally:
        server.terminate()
        server.wait(timeout=30)


def add_preset_run_arguments(parser: argparse.ArgumentParser) -> None:
    """--override PRESET KEY=VALUE..., --keep DIR and --write, shared by the benchmarks that train presets."""
    parser.add_argument("--override", nargs="+", action="append", default=[], metavar=("PRESET", "KEY=VALUE"))
    parser.add_argument("--keep", help="keep the run folders (and any dataset built) under this folder")
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")


def preset_run_setup(args: argparse.Namespace, prefix: str) -> tuple[Path, dict[str, list[str]], Path]:
    """Logging on; (LANDMARKS_DATA, overrides per preset, the folder for run folders)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides: dict[str, list[str]] = {}
    for preset, *items in args.override:
        overrides.setdefault(preset, []).extend(items)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix=prefix))
    return data_dir(), overrides, root


def answers(client: "TestClient", paths: list[str]) -> list[dict]:
    """``POST /predict`` of each photo through a FastAPI test client: the JSON answers, in order."""
    out = []
    for path in paths:
        response = client.post("/predict", files={"photo": (Path(path).name, Path(path).read_bytes(), "image/jpeg")})
        response.raise_for_status()
        out.append(response.json())
    return out


def add_teaching_arguments(parser: argparse.ArgumentParser, preset: str, verb: str) -> None:
    """--preset, --landmarks, --photos and --write of the benchmarks that teach held-out landmarks to a run."""
    parser.add_argument("--preset", default=preset)
    parser.add_argument("--landmarks", type=int, default=5, help=f"landmarks left out of training, then {verb}")
    parser.add_argument("--photos", type=int, default=5, help=f"photos each is {verb} from")
    parser.add_argument("--write", action="store_true")


def teaching_photos(paths: list[str], landmark_id: int, photos: int) -> tuple[list[str], list[str]]:
    """A landmark's photos shuffled by its id: the first ``photos`` to teach from, the rest to ask about."""
    order = [paths[i] for i in np.random.default_rng(landmark_id).permutation(len(paths))]
    return order[:photos], order[photos:]
