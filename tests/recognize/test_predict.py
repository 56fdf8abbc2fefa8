"""``landmarks predict``: the answer's info in JSON lines, and the photo's EXIF GPS as the geo prior."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from landmarks.recognize.predict import predict_to_stream
from landmarks.run_folder import RunFolder

EIFFEL = (48.8584, 2.2945, "https://en.wikipedia.org/wiki/Eiffel_Tower")
RED = (220, 30, 30)  # the colour of the tiny run's landmark 7


def red_photo(path: Path, gps: tuple[tuple[float, float, float], str, tuple[float, float, float], str] | None) -> Path:
    exif = Image.Exif()
    if gps:
        exif.get_ifd(0x8825).update({1: gps[1], 2: gps[0], 3: gps[3], 4: gps[2]})
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), RED).save(buffer, "JPEG", exif=exif)
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture
def run(tiny_run_dir: Path, tmp_path: Path) -> Path:
    """The tiny run with coordinates for landmark 7 (the red one) and every answer above 0.001 known."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run_dir, copy)
    labels = pd.read_csv(copy / "labels.csv")
    labels["latitude"] = [EIFFEL[0] if i == 7 else None for i in labels["landmark_id"]]
    labels["longitude"] = [EIFFEL[1] if i == 7 else None for i in labels["landmark_id"]]
    labels["url"] = [EIFFEL[2] if i == 7 else "" for i in labels["landmark_id"]]
    labels.to_csv(copy / "labels.csv", index=False)
    folder = RunFolder(copy)
    scoring = folder.read_scoring()
    scoring.recognize.min_confidence, scoring.calibration = 0.001, None
    folder.write_scoring(scoring)
    return copy


def rows(run: Path, photos: list[Path], out: Path) -> list[dict]:
    assert predict_to_stream(run, photos, top_k=3, out=out, backend="torch") == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_json_lines_carry_the_answers_info_and_exif_moves_far_landmarks_down(run: Path, tmp_path: Path):
    plain = red_photo(tmp_path / "plain.jpg", None)
    in_paris = red_photo(tmp_path / "paris.jpg", ((48.0, 51.0, 30.0), "N", (2.0, 17.0, 40.0), "E"))
    in_sydney = red_photo(tmp_path / "sydney.jpg", ((33.0, 51.0, 54.0), "S", (151.0, 12.0, 36.0), "E"))
    by_name = {Path(r["path"]).name: r for r in rows(run, [plain, in_paris, in_sydney], tmp_path / "out.jsonl")}
    for name in ("plain.jpg", "paris.jpg"):
        assert by_name[name]["landmark_id"] == 7
        assert by_name[name]["info"] == {"latitude": EIFFEL[0], "longitude": EIFFEL[1], "url": EIFFEL[2]}
    sydney = by_name["sydney.jpg"]
    assert sydney["landmark_id"] != 7 and sydney["info"] == {}  # 17,000 km from the only landmark with coordinates
    assert {c["landmark_id"]: c["score"] for c in sydney["top"]}.get(7, 0.0) < 1e-3
