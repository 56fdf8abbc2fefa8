"""The run folder: the one place that knows its files, their names and their formats.

Everything else asks a ``RunFolder`` for a file or an object rather than joining paths::

    config.yaml        what the user asked for (the resolved config, git commit, seed): written once, never rewritten
    scoring.json       what training learned for scoring: the recognize settings the run answers with (kNN k and
                       weight, classifier mode, threshold, geo radius, mirror averaging) and the confidence map
    labels.csv         class index -> landmark id, name (+ latitude, longitude, url, description)
    split.csv          every photo, its split and whether it could be read
    model.safetensors  the weights; model.json their self-description (``landmarks.models.meta``)
    history.csv        one row per epoch; metrics.json the held-out figures
    checkpoints/       best.pt, last.pt
    index/             the FAISS index of the reference photos
    plots/, evaluation/<name>/
    model.onnx, model.int8.onnx   after ``landmarks export``
    store.sqlite       the service's store (``landmarks.store`` owns it)

A run folder predicts from these files alone, without the training data or config.yaml. Folders written before
scoring.json existed (the learned values were written back into config.yaml, the map into calibration.json) are
migrated once, when first read.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from landmarks.config import Config, RecognizeConfig, dump_config, load_config
from landmarks.errors import DataError, LandmarksError
from landmarks.models.landmark_model import LandmarkModel
from landmarks.models.meta import model_config_from_meta, model_meta, upgrade_model_meta
from landmarks.models.registry import build_model
from landmarks.models.spec import ModelConfig
from landmarks.recognize.confidence import Calibration
from landmarks.recognize.index import EmbeddingIndex
from landmarks.store import STORE_FILE
from landmarks.utils import atomic_path, atomic_write_text, write_json

log = logging.getLogger(__name__)

SCORING_FORMAT_VERSION = 1
LEGACY_CALIBRATION_FILE = "calibration.json"  # before scoring.json: the confidence map alone


@dataclass
class Scoring:
    """What training learned for scoring: the recognize settings the run answers with and its confidence map."""

    recognize: RecognizeConfig
    calibration: Calibration | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": SCORING_FORMAT_VERSION, "recognize": self.recognize.model_dump(mode="json"),
                "calibration": self.calibration.to_dict() if self.calibration is not None else None}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Scoring":
        """KeyError, TypeError or ValueError when ``raw`` is not a scoring file's content."""
        calibration = raw.get("calibration")
        return cls(RecognizeConfig.model_validate(raw["recognize"]),
                   Calibration.from_dict(calibration) if calibration is not None else None)


class RunFolder:
    """A run folder on disk (it need not exist yet: ``train`` creates it)."""

    CONFIG = "config.yaml"
    SCORING = "scoring.json"
    LABELS = "labels.csv"
    SPLIT = "split.csv"
    WEIGHTS = "model.safetensors"
    MODEL = "model.json"
    HISTORY = "history.csv"
    METRICS = "metrics.json"
    INDEX = "index"
    CHECKPOINTS = "checkpoints"
    PLOTS = "plots"
    EVALUATION = "evaluation"
    ONNX = "model.onnx"
    ONNX_INT8 = "model.int8.onnx"
    STORE = STORE_FILE

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # -- paths ---------------------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        """The path of one of the run folder's own files (one of the names above)."""
        return self.path / name

    def plot(self, name: str) -> Path:
        """plots/<name>, its folder created."""
        (self.path / self.PLOTS).mkdir(parents=True, exist_ok=True)
        return self.path / self.PLOTS / name

    def evaluation(self, name: str) -> Path:
        """evaluation/<name>/: a report folder (not created)."""
        return self.path / self.EVALUATION / name

    def checkpoint(self, name: str) -> Path:
        """checkpoints/<name>.pt (``best`` or ``last``)."""
        return self.path / self.CHECKPOINTS / f"{name}.pt"

    @property
    def onnx(self) -> Path:
        return self.path / self.ONNX

    @property
    def onnx_int8(self) -> Path:
        return self.path / self.ONNX_INT8

    @property
    def index_dir(self) -> Path:
        return self.path / self.INDEX

    # -- what is there -------------------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        return (self.path / name).exists()

    @property
    def holds_a_run(self) -> bool:
        """Whether training has written here (a model or a checkpoint)."""
        return self.has(self.MODEL) or self.checkpoint("last").exists()

    def require(self, *names: str) -> None:
        """One sentence naming the first missing file, when the folder lacks any of ``names``."""
        if not self.path.is_dir():
            raise DataError(f"Run folder {self.path} does not exist.")
        for name in names:
            if not self.has(name):
                raise DataError(f"{self.path} is not a run folder: {name} is missing.")

    # -- config.yaml: the user's request --------------------------------------------------------------------
    def write_config(self, config: Config) -> None:
        """config.yaml, when training starts; a folder that holds a run keeps the config it was trained with."""
        path = self.file(self.CONFIG)
        if path.exists() and self.holds_a_run:
            raise LandmarksError(f"{path} exists: a run's config is written once, when training starts.")
        path.parent.mkdir(parents=True, exist_ok=True)
        dump_config(config, path)

    def read_config(self) -> Config:
        """The config training was asked for (needed to resume, not to predict)."""
        self.require(self.CONFIG)
        return load_config(str(self.file(self.CONFIG)))

    # -- scoring.json: what training learned ----------------------------------------------------------------
    def write_scoring(self, scoring: Scoring) -> None:
        write_json(self.file(self.SCORING), scoring.to_dict())

    def read_scoring(self) -> Scoring:
        """scoring.json; a folder from before it is migrated once (from config.yaml and calibration.json)."""
        path = self.file(self.SCORING)
        if not path.exists():
            return self._migrate_scoring()
        try:
            return Scoring.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(f"{path} is not a scoring file ({type(error).__name__}: {error}); "
                            "copy it again from the original run folder.") from None

    def _migrate_scoring(self) -> Scoring:
        if not self.has(self.CONFIG):
            raise DataError(f"{self.path} is not a complete run folder: {self.SCORING} is missing "
                            "(it holds what training learned for scoring; copy it with the run).")
        scoring = Scoring(self.read_config().recognize, self._legacy_calibration())
        try:
            self.write_scoring(scoring)
            log.info("%s: migrated the scoring settings of config.yaml and %s into %s", self.path,
                     LEGACY_CALIBRATION_FILE, self.SCORING)
        except OSError as error:  # a read-only copy still answers, from the migrated values in memory
            log.warning("%s: could not write %s (%s); using the migrated values", self.path, self.SCORING, error)
        return scoring

    def _legacy_calibration(self) -> Calibration | None:
        path = self.file(LEGACY_CALIBRATION_FILE)
        if not path.exists():
            return None
        try:
            return Calibration.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(f"{path} is not a calibration file ({error}); delete it or train the run again.") from None

    # -- the model ------------------------------------------------------------------------------------------
    def save_model(self, model: LandmarkModel, cfg: ModelConfig) -> None:
        """model.safetensors (the state dict, margins included) and model.json, each atomically: enough to
        rebuild the model anywhere without the config, the data or a network."""
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        with atomic_path(self.file(self.WEIGHTS)) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        atomic_write_text(self.file(self.MODEL), json.dumps(model_meta(model, cfg), indent=2) + "\n")

    def read_model_meta(self) -> dict[str, Any]:
        """The parsed model.json, upgraded to the current format."""
        path = self.file(self.MODEL)
        if not path.is_file():
            raise DataError(f"{self.path} is not a run folder: {self.MODEL} is missing.")
        try:
            return upgrade_model_meta(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise DataError(f"{path} is not a valid model description ({type(error).__name__}: {error}).") from None

    def load_model(self) -> LandmarkModel:
        """The model rebuilt from model.json alone (no pretrained weights, no network), its weights loaded, in eval
        mode."""
        meta = self.read_model_meta()
        weights = self.file(self.WEIGHTS)
        if not weights.is_file():
            raise DataError(f"{self.path} is not a complete run folder: {self.WEIGHTS} is missing.")
        model = build_model(model_config_from_meta(meta), int(meta["num_classes"]), int(meta["input_size_px"]))
        try:
            model.load_state_dict(load_file(str(weights)))
        except Exception as error:  # noqa: BLE001 (safetensors header errors, key and shape mismatches)
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DataError(f"{weights} does not match {self.file(self.MODEL)}: {first}") from None
        return model.eval()

    def save_checkpoint(self, state: dict[str, Any], name: str) -> None:
        path = self.checkpoint(name)
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def read_checkpoint(self, name: str) -> dict[str, Any]:
        path = self.checkpoint(name)
        if not path.exists():
            raise LandmarksError(f"Nothing to resume in {self.path}: {path.relative_to(self.path)} is missing.")
        return torch.load(path, map_location="cpu", weights_only=False)

    # -- tables ---------------------------------------------------------------------------------------------
    def write_table(self, name: str, frame: pd.DataFrame) -> None:
        """labels.csv, split.csv or history.csv, atomically."""
        with atomic_path(self.file(name)) as tmp:
            frame.to_csv(tmp, index=False)

    def read_labels(self) -> pd.DataFrame:
        self.require(self.LABELS)
        return pd.read_csv(self.file(self.LABELS), keep_default_na=False)

    def read_split(self) -> pd.DataFrame:
        self.require(self.SPLIT)
        return pd.read_csv(self.file(self.SPLIT), dtype={"id": str})

    def read_history(self) -> pd.DataFrame:
        return pd.read_csv(self.file(self.HISTORY)) if self.has(self.HISTORY) else pd.DataFrame()

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.file(self.METRICS), metrics)

    def read_metrics(self) -> dict[str, Any] | None:
        return json.loads(self.file(self.METRICS).read_text()) if self.has(self.METRICS) else None

    # -- the index ------------------------------------------------------------------------------------------
    def has_index(self) -> bool:
        return (self.index_dir / "index.faiss").exists()

    def load_index(self) -> EmbeddingIndex | None:
        return EmbeddingIndex.load(self.index_dir) if self.has_index() else None

    def save_index(self, index: EmbeddingIndex) -> None:
        index.save(self.index_dir)

    # -- exported models -------------------------------------------------------------------------------------
    @contextmanager
    def staged(self, path: Path) -> Iterator[Path]:
        """A temporary name beside ``path`` to write and check a file under; renamed to ``path`` only when the block
        succeeds (a failed check leaves nothing, and no earlier file is replaced)."""
        with atomic_path(path) as tmp:
            yield tmp
