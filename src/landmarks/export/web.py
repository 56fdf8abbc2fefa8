"""The device bundle: a self-contained static folder that recognises landmarks in the browser, camera in hand.

``landmarks export RUN --web DIR`` writes it; ``landmarks serve RUN`` serves the same files at ``/live``
(``landmarks.serve.live``), with the prototypes recomputed from the running service's references.

What the folder holds (``manifest.json`` lists it):

- the device model: ``model.int8.onnx`` when the run has one (``landmarks export RUN --quantize int8``), else
  ``model.onnx`` (uint8 NHWC ``images`` in, ``embedding`` + ``logits`` out, preprocessing inside the graph);
- ``prototypes.bin``: the references compacted for the device, float16, row-major ``count x dim``: per landmark
  ``PROTOTYPES_PER_LANDMARK`` centres of a spherical k-means of its reference embeddings (landmarks-mini,
  baseline-knn, test queries: 8 centres per landmark keep accuracy 0.838 / GAP 0.723 against 0.869 / 0.780 for
  all 1,427 references; medoids, the photo nearest each centre, did worse: 0.727 / 0.615). Landmarks enrolled or
  approved in the service are included: the prototypes are taken from the Recognizer, which reads the store.
  Known non-landmark references (-1) are compacted the same way, with ``NON_LANDMARK_PROTOTYPES`` clusters;
- ``landmarks.json``: id, name and, when the run knows them, latitude, longitude, url, description;
- the scoring rule of ``Recognizer.score`` (kNN weight, k, classifier score, non-landmark penalty, the taught
  landmarks' imprinted class centres), the calibration
  map when the run is calibrated (``scoring.json``), and the threshold of "no known landmark";
- the page (``index.html``, ``live.js``, ``worker.js``, ``scoring.js``, ``sw.js``, ``live.css``) and the ONNX
  Runtime Web files under ``ort/`` (npm's ``onnxruntime-web``, installed by ``make web``; never a CDN).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from landmarks.data.catalog import NO_LANDMARK
from landmarks.errors import ConfigError, DataError
from landmarks.recognize.centres import spherical_kmeans
from landmarks.recognize.confidence import FEATURES
from landmarks.recognize.recognizer import Recognizer
from landmarks.run_folder import RunFolder
from landmarks.utils import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

PROTOTYPES_PER_LANDMARK = 8
NON_LANDMARK_PROTOTYPES = 16
MANIFEST_VERSION = 1
PAGE_FILES = ("index.html", "live.js", "worker.js", "scoring.js", "sw.js", "live.css")
# ONNX Runtime Web (the version pinned in package.json): the files listed in web/runtime-files.txt, which the Makefile
# copies too; the page loads the WebGPU build only where the browser has an adapter.
RUNTIME_FILES = tuple(line.strip() for line in (resources.files("landmarks") / "web" / "runtime-files.txt")
                      .read_text().splitlines() if line.strip() and not line.startswith("#"))
# The largest device model the live page is meant for: what a phone on a 4G connection (10-20 Mbit/s) downloads in
# 20-30 s on its first visit (the service worker keeps it after that), and what ONNX Runtime Web's wasm heap holds
# with room to spare on a phone. ViT-S/14 int8 (~23 MB) and EfficientNet-Lite int8 (4-6 MB) fit; fp32 ViT-S (88 MB)
# and ViT-B int8 (~88 MB) do not. A larger model is still bundled, with one sentence saying so.
DEVICE_MODEL_LIMIT_BYTES = 40_000_000
RUNTIME_MISSING = ("The live page needs ONNX Runtime Web: install Node.js and npm, then run `make web` "
                   "(npm ci) in the landmarks checkout.")


# -- prototypes ---------------------------------------------------------------------------------------
def compact_references(embeddings: np.ndarray, landmark_ids: np.ndarray, per_landmark: int = PROTOTYPES_PER_LANDMARK,
                       non_landmark: int = NON_LANDMARK_PROTOTYPES, mode: str = "centroid",
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(prototypes, their landmark ids): per landmark, ``per_landmark`` clusters of its reference embeddings.

    ``mode`` medoid: the reference nearest each cluster's mean (a real photo's embedding); centroid: the normalised
    mean itself. Landmark -1 (photos known to show no landmark) gets ``non_landmark`` clusters. Rows keep the order
    of the landmark ids, sorted.
    """
    if mode not in ("medoid", "centroid"):
        raise ValueError(f"mode must be medoid or centroid, not {mode!r}")
    embeddings = np.asarray(embeddings, dtype=np.float32)
    landmark_ids = np.asarray(landmark_ids, dtype=np.int64)
    prototypes, labels = [], []
    for landmark_id in np.unique(landmark_ids):
        members = embeddings[landmark_ids == landmark_id]
        wanted = non_landmark if landmark_id == NO_LANDMARK else per_landmark
        assignment = spherical_kmeans(members, wanted, seed=seed)
        for cluster in np.unique(assignment):
            group = members[assignment == cluster]
            mean = group.sum(axis=0)
            mean /= max(float(np.linalg.norm(mean)), 1e-12)
            prototypes.append(group[int(np.argmax(group @ mean))] if mode == "medoid" else mean)
            labels.append(int(landmark_id))
    if not prototypes:
        dim = embeddings.shape[1] if embeddings.ndim == 2 else 0
        return np.zeros((0, dim), np.float32), np.zeros(0, np.int64)
    return np.stack(prototypes).astype(np.float32), np.asarray(labels, dtype=np.int64)


def recognizer_prototypes(recognizer: Recognizer, per_landmark: int = PROTOTYPES_PER_LANDMARK,
                          mode: str = "centroid") -> tuple[np.ndarray, np.ndarray]:
    """The Recognizer's references (trained + approved in the service) compacted by ``compact_references``."""
    index = recognizer.index
    if index is None or len(index) == 0:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return compact_references(index.vectors(), index.landmark_ids, per_landmark, mode=mode)


# -- the bundle ---------------------------------------------------------------------------------------
def device_model(run_dir: Path) -> tuple[Path, str]:
    """The run's model for the device: (path, "int8" or "fp32")."""
    run = RunFolder(run_dir)
    for path, variant in ((run.onnx_int8, "int8"), (run.onnx, "fp32")):
        if path.is_file():
            return path, variant
    raise DataError(f"{run_dir} has no {RunFolder.ONNX}; run `landmarks export {run_dir} --quantize int8` first.")


def device_model_note(size_bytes: int, variant: str, limit_bytes: int | None = None) -> str | None:
    """One sentence when the device model is larger than ``limit_bytes`` (default ``DEVICE_MODEL_LIMIT_BYTES``), what
    the live page is meant for; None when it fits."""
    limit_bytes = DEVICE_MODEL_LIMIT_BYTES if limit_bytes is None else limit_bytes
    if size_bytes <= limit_bytes:
        return None
    advice = ("export with --quantize int8 (about 4x smaller) or train a smaller backbone" if variant == "fp32"
              else "train a smaller backbone (a ViT-S/14 is about 23 MB in int8)")
    return (f"The device model ({variant}) is {size_bytes / 1e6:.1f} MB, more than the {limit_bytes / 1e6:.0f} MB a phone "
            f"should download for the live page: {advice}.")


def page_dir() -> Path:
    """The page's JavaScript, HTML and CSS inside the package."""
    return Path(str(resources.files("landmarks") / "web"))


def runtime_dir() -> Path | None:
    """Where the ONNX Runtime Web files are: the package's ``web/ort`` (filled by ``make web``), else a checkout's
    ``node_modules``; None when neither has them all."""
    packaged = page_dir() / "ort"
    checkout = page_dir().parents[2] / "node_modules" / "onnxruntime-web" / "dist"
    for folder in (packaged, checkout):
        if all((folder / name).is_file() for name in RUNTIME_FILES):
            return folder
    return None


def landmark_records(recognizer: Recognizer) -> list[dict[str, object]]:
    """Every landmark the Recognizer knows (trained and enrolled) with its info, by name."""
    return [{"landmark_id": int(landmark_id), "name": name, **recognizer.info_of(landmark_id)}
            for landmark_id, name in sorted(recognizer.names.items(), key=lambda item: item[1].lower())]


def threshold_of(recognizer: Recognizer) -> tuple[float, str]:
    """The "no known landmark" threshold the Recognizer applies (``recognize.min_confidence``, which training sets
    to the calibrated threshold when the run is calibrated) and where it comes from."""
    calibrated = recognizer.calibration is not None
    return float(recognizer.config.min_confidence), "scoring.json (calibrated)" if calibrated else "scoring.json"


def scoring_rule(recognizer: Recognizer) -> dict[str, object]:
    """What ``scoring.js`` needs to score like ``Recognizer.score``."""
    cfg = recognizer.config
    mode = cfg.classifier_score
    classifier = "cosine" if mode == "cosine" or (mode == "auto" and recognizer.logit_scale) else "softmax"
    threshold, source = threshold_of(recognizer)
    calibration = recognizer.calibration
    return {
        "knn_k": int(cfg.knn_k), "knn_weight": float(cfg.knn_weight), "top_k": int(cfg.top_k),
        "show_neighbours": int(cfg.show_neighbours),
        "non_landmark_penalty": float(cfg.non_landmark_penalty), "classifier": classifier,
        "logit_scale": float(recognizer.logit_scale or 1.0),
        "class_landmark_ids": [int(i) for i in recognizer.class_landmark_ids],
        "taught_centres": taught_centres(recognizer),
        "threshold": threshold, "threshold_source": source,
        "calibration": None if calibration is None else {"method": calibration.method, "features": list(FEATURES),
                                                          "parameters": calibration.parameters,
                                                          "taught": calibration.taught},
    }


def taught_centres(recognizer: Recognizer) -> dict[str, object] | None:
    """The taught landmarks' imprinted class centres (``landmarks.recognize.centres``), for ``scoring.js`` to score
    them as ``Recognizer.score`` does: the cosine of the first ``neck_dims`` values of the embedding to each centre
    (``rows`` of ``neck_dims`` values, one row per centre, ``landmark_ids`` one per row); None when none."""
    centres = {i: c for i, c in recognizer.centres.items() if i in recognizer.names and len(c)}
    if not centres or recognizer.neck_dims is None:
        return None
    ids = sorted(centres)
    return {"neck_dims": int(recognizer.neck_dims),
            "landmark_ids": [int(i) for i in ids for _ in range(len(centres[i]))],
            "rows": [[round(float(v), 6) for v in row] for i in ids for row in centres[i]]}


@dataclass
class WebBundle:
    """The bundle's files by relative name (bytes, or a file to copy) and its manifest."""

    files: dict[str, bytes | Path] = field(default_factory=dict)
    manifest: dict[str, object] = field(default_factory=dict)

    def size_bytes(self, include_runtime_wasm: bool = True) -> int:
        total = 0
        for name, content in self.files.items():
            if not include_runtime_wasm and name.startswith("ort/") and name.endswith(".wasm"):
                continue
            total += len(content) if isinstance(content, bytes) else content.stat().st_size
        return total


def build_bundle(recognizer: Recognizer, run_dir: Path, per_landmark: int = PROTOTYPES_PER_LANDMARK,
                 predict_url: str | None = None) -> WebBundle:
    """Everything the page needs, from a loaded Recognizer (its references include the service's approvals)."""
    if per_landmark < 1:
        raise ConfigError(f"--prototypes must be at least 1 per landmark, not {per_landmark}.")
    run_dir = Path(run_dir)
    model_path, variant = device_model(run_dir)
    prototypes, prototype_ids = recognizer_prototypes(recognizer, per_landmark)
    prototype_bytes = prototypes.astype("<f2").tobytes()
    landmarks_bytes = json.dumps(landmark_records(recognizer), ensure_ascii=False).encode()
    bundle = WebBundle()
    bundle.files["model.onnx"] = model_path
    bundle.files["prototypes.bin"] = prototype_bytes
    bundle.files["landmarks.json"] = landmarks_bytes
    for name in PAGE_FILES:
        bundle.files[name] = page_dir() / name
    runtime = runtime_dir()
    if runtime is not None:
        for name in RUNTIME_FILES:
            bundle.files[f"ort/{name}"] = runtime / name
    else:
        log.warning(RUNTIME_MISSING)
    too_large = device_model_note(model_path.stat().st_size, variant)
    if too_large:
        log.warning(too_large)
    digest = hashlib.sha1(prototype_bytes + landmarks_bytes)
    for name in PAGE_FILES:
        digest.update((page_dir() / name).read_bytes())
    digest.update(f"{model_path.stat().st_size}:{model_path.stat().st_mtime_ns}".encode())
    bundle.manifest = {
        "version": MANIFEST_VERSION,
        "run": run_dir.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "content_hash": digest.hexdigest()[:16],
        "model": {"file": "model.onnx", "source": model_path.name, "variant": variant,
                  "size_bytes": model_path.stat().st_size, "input_size_px": int(recognizer.input_size_px),
                  "input": "images", "layout": "NHWC uint8 RGB", "outputs": ["embedding", "logits"],
                  "limit_bytes": DEVICE_MODEL_LIMIT_BYTES, "too_large": too_large},
        "prototypes": {"file": "prototypes.bin", "dtype": "float16", "count": int(len(prototypes)),
                       "dim": int(prototypes.shape[1]) if len(prototypes) else 0, "per_landmark": per_landmark,
                       "mode": "centroid", "landmark_ids": [int(i) for i in prototype_ids]},
        "landmarks": "landmarks.json",
        "scoring": scoring_rule(recognizer),
        "geo": {"radius_km": float(recognizer.config.geo_radius_km)},
        "predict_url": predict_url,
        "runtime": {"package": "onnxruntime-web", "files": [f"ort/{n}" for n in RUNTIME_FILES] if runtime else [],
                    "missing": None if runtime else RUNTIME_MISSING},
        "files": sorted([*bundle.files, "manifest.json"]),
    }
    return bundle


def write_bundle(bundle: WebBundle, out_dir: Path) -> dict[str, object]:
    """Write the bundle into ``out_dir`` (created; files replaced atomically); returns a short report."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir} is a file, not a folder for the web bundle.")
    for name, content in bundle.files.items():
        target = out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            atomic_write_bytes(target, content)
        else:
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(content, tmp)
            tmp.replace(target)
    atomic_write_text(out_dir / "manifest.json", json.dumps(bundle.manifest, indent=1, ensure_ascii=False))
    model = bundle.manifest["model"]
    prototypes = bundle.manifest["prototypes"]
    report: dict[str, object] = {
        "web bundle": str(out_dir),
        "model": f"{model['source']} ({model['variant']}, {model['size_bytes'] / 1e6:.2f} MB, {model['input_size_px']} px)",
        "prototypes": f"{prototypes['count']} x {prototypes['dim']} float16 ({prototypes['per_landmark']} per landmark)",
        "threshold": f"{bundle.manifest['scoring']['threshold']:.4f} ({bundle.manifest['scoring']['threshold_source']})",
        "size_mb (no wasm)": round(bundle.size_bytes(include_runtime_wasm=False) / 1e6, 2),
        "size_mb (with wasm)": round(bundle.size_bytes() / 1e6, 2),
    }
    if model.get("too_large"):
        report["device model"] = model["too_large"]
    if bundle.manifest["runtime"]["missing"]:
        report["live page"] = bundle.manifest["runtime"]["missing"]
    return report


def export_web(run_dir: Path, out_dir: Path, per_landmark: int = PROTOTYPES_PER_LANDMARK,
               backend: str = "auto") -> dict[str, object]:
    """``landmarks export RUN --web DIR``: the run's Recognizer (with the service's approved changes) as a bundle."""
    recognizer = Recognizer.load(run_dir, backend=backend)
    return write_bundle(build_bundle(recognizer, Path(run_dir), per_landmark), Path(out_dir))


# -- a fake camera for tests and benchmarks -------------------------------------------------------------
