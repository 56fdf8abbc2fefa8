"""The device bundle: prototype compaction, the page's scoring (scoring.js) against the Recognizer, the export's files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from landmarks.cli import main
from landmarks.config import RecognizeConfig, load_config
from landmarks.data.catalog import read_catalog
from landmarks.errors import DataError
from landmarks.evaluate.metrics import accuracy, global_average_precision
from landmarks.export.onnx import export_onnx
from landmarks.export.web import (
    RUNTIME_FILES, RUNTIME_MISSING, build_bundle, compact_references, page_dir, recognizer_prototypes, runtime_dir,
    scoring_rule, spherical_kmeans, write_bundle,
)
from landmarks.run_folder import RunFolder
from landmarks.recognize.confidence import FEATURES, Calibration, is_known
from landmarks.recognize.embed import embed_paths
from landmarks.recognize.geo import Location, geo_factor, haversine_km
from landmarks.recognize.index import EmbeddingIndex
from landmarks.recognize.recognizer import Recognizer
from landmarks.train.run import train
from tests_helpers import with_prototypes, write_y4m

NODE = shutil.which("node")
ROOT = Path(__file__).resolve().parents[2]


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def toy_references(landmarks: int = 12, views: int = 3, per_view: int = 15, dim: int = 64, noise: float = 0.35,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Landmarks seen from a few views each (a direction per view, photos scattered around it): references plus
    the view directions, to draw queries from."""
    rng = np.random.default_rng(seed)
    directions = unit(rng.normal(size=(landmarks, views, dim)).reshape(-1, dim)).reshape(landmarks, views, dim)
    vectors, labels = [], []
    for landmark in range(landmarks):
        for view in range(views):
            vectors.append(unit(directions[landmark, view] + noise * rng.normal(size=(per_view, dim)) / np.sqrt(dim) * 4))
            labels += [100 + landmark] * per_view
    return np.concatenate(vectors), np.asarray(labels), directions


def toy_recognizer(vectors: np.ndarray, labels: np.ndarray, **config: object) -> Recognizer:
    index = EmbeddingIndex.build(vectors, [f"r{i}" for i in range(len(vectors))], labels, "flat")
    names = {int(l): f"place {l}" for l in np.unique(labels) if l >= 0}
    settings = {"knn_k": 5, "knn_weight": 1.0, "min_confidence": 0.5, **config}
    return Recognizer(None, np.zeros(0, np.int64), names, index, RecognizeConfig(**settings))


def test_kmeans_finds_the_clusters_and_prototypes_are_unit_centres():
    a = unit(np.array([[1, 0.05, 0], [1, -0.05, 0], [1, 0, 0.05]], np.float32))
    b = unit(np.array([[0, 1, 0.05], [0.05, 1, 0]], np.float32))
    vectors = np.concatenate([a, b])
    assignment = spherical_kmeans(vectors, 2)
    assert len(set(assignment[:3])) == 1 and len(set(assignment[3:])) == 1 and assignment[0] != assignment[3]
    prototypes, ids = compact_references(vectors, np.array([7, 7, 7, 7, 7]), per_landmark=2)
    assert ids.tolist() == [7, 7]
    expected = {tuple(np.round(unit(part.sum(axis=0, keepdims=True))[0], 5)) for part in (a, b)}
    assert {tuple(np.round(p, 5)) for p in prototypes} == expected
    # fewer references than prototypes: each reference is its own prototype; -1 gets its own budget
    prototypes, ids = compact_references(vectors, np.array([3, 3, -1, -1, -1]), per_landmark=4, non_landmark=1)
    assert ids.tolist() == [-1, 3, 3] and np.allclose(np.linalg.norm(prototypes, axis=1), 1.0, atol=1e-5)


def test_prototypes_recognise_nearly_as_well_as_every_reference():
    vectors, labels, directions = toy_references()
    rng = np.random.default_rng(1)
    truth = np.repeat(np.arange(len(directions)) + 100, 2 * directions.shape[1])
    queries = unit(np.repeat(directions.reshape(-1, directions.shape[2]), 2, axis=0)
                   + 0.45 * rng.normal(size=(len(truth), directions.shape[2])) / np.sqrt(directions.shape[2]) * 4)
    full = toy_recognizer(vectors, labels)
    device = with_prototypes(full, *recognizer_prototypes(full, per_landmark=3))
    assert len(device.index) == 3 * len(directions) and len(full.index) == len(vectors)
    results = {}
    for name, recognizer in (("full", full), ("prototypes", device)):
        predictions = recognizer.score(queries, np.zeros((len(queries), 0), np.float32))
        predicted = np.array([p.landmark_id for p in predictions])
        confidence = np.array([p.confidence for p in predictions])
        results[name] = (accuracy(predicted, truth), global_average_precision(predicted, confidence, truth))
    print(f"toy set: full index accuracy/GAP {results['full']}, prototypes {results['prototypes']}")
    assert results["full"][0] > 0.8
    assert results["prototypes"][0] >= results["full"][0] - 0.05
    assert results["prototypes"][1] >= results["full"][1] - 0.05


@pytest.mark.skipif(NODE is None, reason="node is not installed")
@pytest.mark.parametrize("calibration", [None, "platt", "isotonic", "gate", "platt, taught"])
def test_page_scoring_agrees_with_the_recognizer(tmp_path: Path, calibration: str | None):
    """scoring.js over the prototypes gives the answer and confidence Recognizer.score gives over the same index
    (taught: a cosine head, and landmarks 100 and 105, which it has no column for, scored by imprinted centres)."""
    vectors, labels, directions = toy_references(landmarks=6, dim=32)
    labels[:10] = -1  # a few known non-landmark references: their penalty is part of the rule
    rng = np.random.default_rng(2)
    queries = unit(directions.reshape(-1, 32)[:12] + 0.5 * rng.normal(size=(12, 32)))
    logits = rng.normal(size=(12, 4)).astype(np.float32)
    recognizer = toy_recognizer(vectors, labels, knn_weight=0.7, top_k=3)
    recognizer.class_landmark_ids = np.array([101, 102, 103, 104])
    recognizer.class_of = {101: 0, 102: 1, 103: 2, 104: 3}
    if calibration and "taught" in calibration:
        calibration = "platt"
        recognizer.logit_scale = 5.0
        recognizer.set_head_shape({"embedding_dim": 32, "config": {"embedding_dim": 24, "descriptor_dims": 8,
                                                                   "arcface_subcenters": 2}})
        assert recognizer.imprint(100) is not None and recognizer.imprint(105) is not None
        assert scoring_rule(recognizer)["taught_centres"]["landmark_ids"] == [100, 100, 105, 105]
    parameters = {"platt": {"slope": 6.0, "intercept": -3.0},
                  "isotonic": {"x": [0.0, 0.3, 0.6, 1.0], "y": [0.0, 0.2, 0.7, 1.0]},
                  "gate": {"mean": [0.5, 0.1, 0.5, 0.1, 0.6][: len(FEATURES)], "scale": [0.2, 0.1, 0.3, 0.1, 0.2][: len(FEATURES)],
                           "weights": [2.0, 1.0, 0.5, -1.0, 1.5][: len(FEATURES)], "bias": 0.1}}
    if calibration:
        recognizer.calibration = Calibration(calibration, parameters[calibration], threshold=0.4)
    if recognizer.centres:  # and taught answers get a map of their own
        recognizer.calibration.taught = {"method": "platt", "parameters": {"slope": 9.0, "intercept": -2.0}}
    device = with_prototypes(recognizer, *recognizer_prototypes(recognizer, per_landmark=2))
    device.config.min_confidence = float(np.median([p.confidence for p in device.score(queries, logits)]))
    expected = device.score(queries, logits)
    case = {"queries": queries.tolist(), "logits": logits.tolist(), "rule": scoring_rule(device),
            "prototypes": device.index.vectors().tolist(), "ids": device.index.landmark_ids.tolist()}
    (tmp_path / "case.json").write_text(json.dumps(case))
    script = tmp_path / "run.mjs"
    script.write_text(f"""
        import {{ readFileSync }} from "node:fs";
        import {{ scoreEmbedding }} from "{(page_dir() / 'scoring.js').as_uri()}";
        const c = JSON.parse(readFileSync("{tmp_path / 'case.json'}", "utf8"));
        const prototypes = Float32Array.from(c.prototypes.flat());
        const out = c.queries.map((q, i) => scoreEmbedding(Float32Array.from(q), Float32Array.from(c.logits[i]),
                                                           prototypes, c.ids, c.rule));
        console.log(JSON.stringify(out));
    """)
    answers = json.loads(subprocess.run([NODE, str(script)], capture_output=True, text=True, check=True).stdout)
    assert [a["landmark_id"] for a in answers] == [p.landmark_id for p in expected]
    assert np.allclose([a["confidence"] for a in answers], [p.confidence for p in expected], atol=1e-4)
    assert [a["known"] for a in answers] == [p.known for p in expected]
    assert {a["known"] for a in answers} == {True, False}  # the case has both answers


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_page_known_rule_is_the_recognizers(tmp_path: Path):
    """scoring.js's isKnown decides as landmarks.recognize.confidence.is_known, at and around the threshold."""
    cases = [(c, t) for t in (0.0, 0.3, 0.82, 1.0) for c in (0.0, t - 1e-6, t, t + 1e-6, 0.5, 1.0)]
    script = tmp_path / "known.mjs"
    script.write_text(f"""
        import {{ isKnown }} from "{(page_dir() / 'scoring.js').as_uri()}";
        console.log(JSON.stringify({json.dumps(cases)}.map(([c, t]) => isKnown(c, t))));
    """)
    answers = json.loads(subprocess.run([NODE, str(script)], capture_output=True, text=True, check=True).stdout)
    assert answers == [is_known(c, t) for c, t in cases]
    assert set(answers) == {True, False}


@pytest.fixture
def exported_run(tiny_run_dir: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    export_onnx(RunFolder(run).load_model(), run / "model.onnx")
    return run


def test_export_writes_a_self_contained_bundle(exported_run: Path, tmp_path: Path):
    recognizer = Recognizer.load(exported_run)
    enrolled = recognizer.next_landmark_id()
    recognizer.add_references(unit(np.random.default_rng(0).normal(size=(3, recognizer.index.dim))),
                              ["e1", "e2", "e3"], enrolled, "Enrolled Tower")
    out = tmp_path / "bundle"
    report = write_bundle(build_bundle(recognizer, exported_run, per_landmark=2), out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["variant"] == "fp32" and manifest["model"]["source"] == "model.onnx"
    assert (out / "model.onnx").read_bytes() == (exported_run / "model.onnx").read_bytes()
    assert manifest["model"]["input_size_px"] == 32
    count, dim = manifest["prototypes"]["count"], manifest["prototypes"]["dim"]
    assert (out / "prototypes.bin").stat().st_size == count * dim * 2 and count == len(manifest["prototypes"]["landmark_ids"])
    assert manifest["prototypes"]["landmark_ids"].count(enrolled) == 2  # the service's landmark travels too
    assert set(manifest["prototypes"]["landmark_ids"]) == {7, 55, 300, 1042, enrolled}
    stored = np.frombuffer((out / "prototypes.bin").read_bytes(), "<f2").reshape(count, dim).astype(np.float32)
    assert np.allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-2)
    names = {l["landmark_id"]: l["name"] for l in json.loads((out / "landmarks.json").read_text())}
    assert names[enrolled] == "Enrolled Tower" and names[7] == "place_7"
    assert manifest["scoring"]["threshold"] == recognizer.config.min_confidence  # what the Recognizer applies
    for name in ("index.html", "live.js", "worker.js", "scoring.js", "sw.js", "live.css"):
        assert (out / name).read_bytes() == (page_dir() / name).read_bytes()
    assert set(manifest["files"]) == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    if runtime_dir() is not None:
        assert all((out / "ort" / name).is_file() for name in RUNTIME_FILES) and manifest["runtime"]["missing"] is None
    else:
        assert manifest["runtime"]["missing"] == RUNTIME_MISSING and report["live page"] == RUNTIME_MISSING
    assert "cdn" not in (out / "worker.js").read_text().lower() and "http" not in (out / "worker.js").read_text()


def test_bundle_prefers_the_int8_model_and_the_calibrated_threshold(exported_run: Path, tmp_path: Path):
    shutil.copyfile(exported_run / "model.onnx", exported_run / "model.int8.onnx")  # stands in for a quantized one
    run = RunFolder(exported_run)
    scoring = run.read_scoring()
    scoring.calibration = Calibration("platt", {"slope": 5.0, "intercept": -2.0}, threshold=0.62)
    scoring.recognize.min_confidence = 0.62  # as training writes the calibrated threshold
    run.write_scoring(scoring)
    recognizer = Recognizer.load(exported_run)
    manifest = build_bundle(recognizer, exported_run).manifest
    assert manifest["model"]["variant"] == "int8" and manifest["model"]["source"] == "model.int8.onnx"
    assert manifest["scoring"]["threshold"] == 0.62 and manifest["scoring"]["threshold_source"] == "scoring.json (calibrated)"
    assert manifest["scoring"]["calibration"] == {"method": "platt", "features": list(FEATURES),
                                                  "parameters": {"slope": 5.0, "intercept": -2.0}, "taught": None}


def test_bundle_needs_an_exported_model(tiny_run_dir: Path):
    with pytest.raises(DataError, match="landmarks export"):
        build_bundle(Recognizer.load(tiny_run_dir, backend="torch"), tiny_run_dir)


def test_makefile_copies_the_runtime_files_the_bundle_lists():
    listed = subprocess.run(["make", "-s", "-C", str(ROOT), "--eval", "print-ort:\n\t@echo $(ORT_FILES)", "print-ort"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert tuple(listed) == RUNTIME_FILES and len(RUNTIME_FILES) == 6
    lock = json.loads((ROOT / "package-lock.json").read_text())
    pinned = json.loads((ROOT / "package.json").read_text())["dependencies"]["onnxruntime-web"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned) and lock["packages"]["node_modules/onnxruntime-web"]["version"] == pinned


def test_y4m_clip_has_the_frames_chromium_reads(tmp_path: Path):
    photo = tmp_path / "red.jpg"
    Image.new("RGB", (50, 30), (255, 0, 0)).save(photo)
    clip = write_y4m([photo, photo], tmp_path / "clip.y4m", width=8, height=6, frames_per_photo=3)
    data = clip.read_bytes()
    header, _, body = data.partition(b"\n")
    assert header == b"YUV4MPEG2 W8 H6 F10:1 Ip A1:1 C420"
    frames = body.split(b"FRAME\n")[1:]
    assert len(frames) == 6 and all(len(f) == 8 * 6 * 3 // 2 for f in frames)
    y, cb, cr = frames[0][0], frames[0][48], frames[0][48 + 12]
    assert (y, cb, cr) == pytest.approx((81, 90, 240), abs=2)  # BT.601 limited range of pure red


@pytest.mark.slow
def test_prototypes_on_landmarks_mini(landmarks_data: Path, tmp_path: Path):
    """Recognition of landmarks-mini's test queries from 8 prototypes per landmark against every reference photo
    (baseline-knn: ImageNet Lite0 features, no training)."""
    run = Path(os.environ.get("LANDMARKS_LIVE_RUN", "")) if os.environ.get("LANDMARKS_LIVE_RUN") else \
        train(load_config("baseline-knn"), landmarks_data, tmp_path / "run")
    recognizer = Recognizer.load(run, backend="torch")
    test = read_catalog(landmarks_data, "test").frame
    truth = test["landmark_id"].to_numpy()
    embeddings, logits, _, _ = embed_paths(recognizer.embedder, test["path"].tolist(), 32, 2)
    results = {}
    for name, r in (("full", recognizer), ("prototypes", with_prototypes(recognizer, *recognizer_prototypes(recognizer)))):
        predictions = r.score(embeddings, logits)
        predicted = np.array([p.landmark_id for p in predictions])
        confidence = np.array([p.confidence for p in predictions])
        results[name] = (accuracy(predicted, truth), global_average_precision(predicted, confidence, truth), len(r.index))
    print(f"landmarks-mini test: full {results['full']}, prototypes {results['prototypes']} (accuracy, GAP, references)")
    assert results["prototypes"][2] <= 8 * 41
    assert results["prototypes"][0] >= results["full"][0] - 0.06


def test_cli_export_web_writes_the_bundle(tiny_run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    assert main(["export", str(run), "--web", str(tmp_path / "web"), "--prototypes", "3"]) == 0
    manifest = json.loads((tmp_path / "web" / "manifest.json").read_text())
    assert manifest["prototypes"]["per_landmark"] == 3 and manifest["model"]["source"] == "model.onnx"
    assert "size_mb (no wasm)" in capsys.readouterr().out
    assert main(["export", str(run), "--web", str(tmp_path / "web2"), "--prototypes", "0"]) == 2
    assert "prototypes" in capsys.readouterr().err


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_page_geo_rule_and_smoothing_match_python(tmp_path: Path):
    """scoring.js: the distance and the geo factor of landmarks.recognize.geo, and the smoothing over frames."""
    places = [(28.5245, 77.1855, 27.1751, 78.0421), (48.8566, 2.3522, 51.5074, -0.1278), (-33.86, 151.21, 40.69, -74.04)]
    script = tmp_path / "geo.mjs"
    script.write_text(f"""
        import {{ haversineKm, geoFactor, Smoother }} from "{(page_dir() / 'scoring.js').as_uri()}";
        const places = {json.dumps(places)};
        const smoother = new Smoother(3);
        for (const scores of [[[1, 0.9], [2, 0.1]], [[2, 0.8]], [[2, 0.7], [1, 0.3]], [[2, 0.6]]]) {{
          smoother.push({{ candidates: scores.map(([landmark_id, score]) => ({{ landmark_id, score }})) }});
        }}
        console.log(JSON.stringify({{
          km: places.map((p) => haversineKm(...p)),
          factors: [10, 50, 100, 550].map((d) => geoFactor(d, 50)).concat([geoFactor(5000, 0)]),
          smoothed: smoother.current(0.5), empty: new Smoother(3).current(0.5),
        }}));
    """)
    out = json.loads(subprocess.run([NODE, str(script)], capture_output=True, text=True, check=True).stdout)
    assert out["km"] == pytest.approx([haversine_km(Location(a, b), Location(c, d)) for a, b, c, d in places], abs=1e-6)
    assert out["factors"] == pytest.approx([geo_factor(d, 50) for d in (10, 50, 100, 550)] + [1.0])
    assert out["smoothed"]["landmark_id"] == 2 and out["smoothed"]["confidence"] == pytest.approx((0.8 + 0.7 + 0.6) / 3)
    assert out["smoothed"]["known"] and not out["empty"]["known"]
