"""The Recognizer: the one object that turns photos into landmark predictions.

predict, submit, evaluate and the web service all go through it; none re-implements scoring.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from landmarks.config import RecognizeConfig
from landmarks.data.catalog import NO_LANDMARK, NO_LANDMARK_NAME, info_from_table
from landmarks.recognize.centres import centre_scores, imprint_centres, reference_fingerprint
from landmarks.recognize.confidence import Calibration, is_known
from landmarks.recognize.embed import Embedder, embed_paths, load_embedder
from landmarks.recognize.geo import Location, rescore
from landmarks.recognize.index import EmbeddingIndex
from landmarks.recognize.prediction import Candidate, Neighbour, Prediction
from landmarks.run_folder import RunFolder
from landmarks.store import ReferenceChanges, TaughtCentres, read_reference_changes

log = logging.getLogger(__name__)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class Recognizer:
    """Embeds photos, looks up their nearest reference photos and fuses kNN with the classifier."""

    def __init__(
        self,
        embedder: Embedder,
        class_landmark_ids: np.ndarray,
        names: dict[int, str],
        index: EmbeddingIndex | None,
        config: RecognizeConfig,
        run_dir: Path | None = None,
        logit_scale: float | None = None,
    ):
        self.embedder = embedder
        self.class_landmark_ids = np.asarray(class_landmark_ids, dtype=np.int64)
        self.class_of = {int(l): i for i, l in enumerate(self.class_landmark_ids)}
        self.names = dict(names)
        self.index = index
        self.config = config
        self.run_dir = run_dir
        self.logit_scale = logit_scale  # ArcFace heads: logits are scale * cosine to the class centres
        self.calibration: Calibration | None = None  # fused score -> P(right), from the run's calibration.json
        self.info: dict[int, dict[str, float | str]] = {}  # latitude, longitude, url, description (labels.csv)
        # taught landmarks' imprinted class centres (landmarks.recognize.centres), (k, neck_dims) each; only for
        # cosine heads, whose classifier reads the first ``neck_dims`` values of the embedding
        self.centres: dict[int, np.ndarray] = {}
        self.neck_dims: int | None = None
        self.subcenters = 1

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, run_dir: str | Path, backend: str = "auto", tta_flip: bool | None = None,
             trained_only: bool = False) -> "Recognizer":
        """Load a run folder; ``backend`` is auto (ONNX Runtime when model.onnx exists), onnx or torch.

        The references are the trained ones plus what the web service approved since (``RUN/store.sqlite``: enrolled
        landmarks, added photos, removed and moved ones); ``trained_only`` leaves the store out."""
        run = RunFolder(run_dir)
        run.require(RunFolder.MODEL, RunFolder.LABELS)
        scoring = run.read_scoring()
        config = scoring.recognize
        if tta_flip is not None:
            config.tta_flip = tta_flip
        logit_scale = run.read_model_meta()["head"]["logit_scale"]
        embedder = load_embedder(run, backend, config.tta_flip)
        labels = run.read_labels()
        names = {int(l): str(n) for l, n in zip(labels["landmark_id"], labels["name"])}
        recognizer = cls(embedder, labels["landmark_id"].to_numpy(), names, run.load_index(), config, run.path,
                         logit_scale)
        recognizer.calibration = scoring.calibration
        recognizer.info = info_from_table(labels)
        recognizer.set_head_shape(run.read_model_meta())
        if not trained_only:
            changes = read_reference_changes(run_dir)
            recognizer.apply_changes(changes)
            recognizer.restore_centres(changes.centres)
            if changes:
                log.info("references from the store: %d landmarks enrolled, %d deleted, %d photos removed, %d added, "
                         "%d with class centres", len(changes.enrolled), len(changes.deleted), len(changes.removed),
                         len(changes.added), len(recognizer.centres))
        return recognizer

    def set_head_shape(self, meta: dict) -> None:
        """What imprinting needs from model.json: the classifier's part of the embedding and its sub-centres (a head
        that is not a cosine classifier, or a run without an index dimension, imprints nothing)."""
        model = meta.get("config", {})
        if not self.logit_scale or not meta.get("embedding_dim"):
            self.neck_dims = None
            return
        self.neck_dims = int(model.get("embedding_dim") or meta["embedding_dim"]) if model.get("descriptor_dims") else int(
            meta["embedding_dim"])
        self.subcenters = int(model.get("arcface_subcenters") or 1)

    @property
    def imprints(self) -> bool:
        """Whether taught landmarks get class centres (a cosine classifier head)."""
        return self.neck_dims is not None

    def is_taught(self, landmark_id: int) -> bool:
        """A landmark the classifier was not trained on (enrolled after training)."""
        return int(landmark_id) not in self.class_of and int(landmark_id) in self.names

    def is_taught_answer(self, landmark_id: int) -> bool:
        """Whether an answer names a landmark the classifier does not know (the calibration's ``taught`` map); a run
        without a classifier has none."""
        return bool(self.class_of) and int(landmark_id) not in self.class_of and int(landmark_id) >= 0

    def reference_ids_of(self, landmark_id: int) -> list[str]:
        if self.index is None:
            return []
        return [self.index.image_ids[p] for p in np.flatnonzero(self.index.landmark_ids == int(landmark_id))]

    def imprint(self, landmark_id: int) -> TaughtCentres | None:
        """(Re)imprint a taught landmark's centres from its reference photos now in the index (none left: it has
        none); returns them as the store keeps them, or None when nothing is imprinted."""
        landmark_id = int(landmark_id)
        if not self.imprints or not self.is_taught(landmark_id) or self.index is None:
            self.centres.pop(landmark_id, None)
            return None
        positions = np.flatnonzero(self.index.landmark_ids == landmark_id)
        if not len(positions):
            self.centres.pop(landmark_id, None)
            return None
        centres = imprint_centres(self.index.vectors(positions), self.neck_dims, self.subcenters)
        self.centres[landmark_id] = centres
        ids = [self.index.image_ids[p] for p in positions]
        return TaughtCentres(landmark_id, centres, len(ids), reference_fingerprint(ids))

    @property
    def input_size_px(self) -> int:
        return self.embedder.input_size_px

    def name_of(self, landmark_id: int) -> str:
        return self.names.get(int(landmark_id), str(landmark_id))

    def info_of(self, landmark_id: int) -> dict[str, float | str]:
        """What the run knows of a landmark beyond its name (latitude, longitude, url, description; may be empty)."""
        return dict(self.info.get(int(landmark_id), {}))

    def add_references(self, embeddings: np.ndarray, image_ids: Sequence[str], landmark_id: int, name: str | None = None) -> None:
        """Make photos of a landmark (new or known) searchable at once; no retraining."""
        if name is not None:
            self.names[int(landmark_id)] = name
        if self.index is None:
            self.index = EmbeddingIndex.build(embeddings, list(image_ids), np.full(len(image_ids), landmark_id), "flat")
            if not self.config.knn_weight:
                self.config.knn_weight = 0.5
        else:
            self.index.add(embeddings, list(image_ids), [int(landmark_id)] * len(image_ids))

    def remove_references(self, pairs: Sequence[tuple[str, int]]) -> int:
        """Remove the references given as (image id, landmark id); returns how many were found and removed."""
        if self.index is None:
            return 0
        return self.index.remove(self.index.positions_of(pairs))

    def apply_changes(self, changes: ReferenceChanges) -> None:
        """The store's changes on the references: landmarks enrolled and deleted, photos removed, then added. The one
        way they are applied: when a run loads its store, and by the running service after each stored change."""
        for landmark_id, name in changes.enrolled.items():
            self.names[landmark_id] = name
        for landmark_id in changes.deleted:
            self.names.pop(landmark_id, None)
        self.remove_references(list(changes.removed))
        dim = self.index.dim if self.index is not None else None
        added = [a for a in changes.added if dim is None or len(a[2]) == dim]
        if len(added) < len(changes.added):
            log.warning("skipped %d stored references whose embedding size does not match the model",
                        len(changes.added) - len(added))
        by_landmark: dict[int, list[tuple[str, np.ndarray]]] = {}
        for image_id, landmark_id, embedding in added:
            by_landmark.setdefault(landmark_id, []).append((image_id, embedding))
        for landmark_id, rows in by_landmark.items():
            self.add_references(np.stack([e for _, e in rows]), [i for i, _ in rows], landmark_id)

    def restore_centres(self, stored: dict[int, TaughtCentres]) -> list[TaughtCentres]:
        """The stored centres of the taught landmarks, where they were imprinted from the photos they have now (same
        references, same size); the others are imprinted again. Returns those imprinted again (to store)."""
        fresh = []
        if not self.imprints:
            return fresh
        for landmark_id in [i for i in self.names if self.is_taught(i)]:
            kept = stored.get(landmark_id)
            ids = self.reference_ids_of(landmark_id)
            if (kept is not None and kept.fingerprint == reference_fingerprint(ids) and kept.centres.ndim == 2
                    and kept.centres.shape[1] == self.neck_dims):
                self.centres[landmark_id] = kept.centres
                continue
            imprinted = self.imprint(landmark_id)
            if imprinted is not None:
                fresh.append(imprinted)
        if fresh:
            log.info("imprinted the class centres of %d taught landmarks again (their photos changed since)", len(fresh))
        return fresh

    def next_landmark_id(self) -> int:
        """An id no landmark uses yet (for enrolling a new one)."""
        known = [*self.names.keys(), *self.class_landmark_ids.tolist(), -1]
        if self.index is not None and len(self.index):
            known.append(int(self.index.landmark_ids.max()))
        return int(max(known)) + 1

    # -- prediction --------------------------------------------------------------------------
    def embed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 NHWC photos at ``input_size_px`` -> (embeddings, logits)."""
        return self.embedder(images)

    def predict(self, images: np.ndarray, locations: Sequence[Location | None] | None = None) -> list[Prediction]:
        """Predictions for uint8 NHWC photos already decoded at ``input_size_px`` (taken where ``locations`` say)."""
        return self.score(*self.embed(images), locations=locations)

    def predict_paths(
        self, paths: Sequence[str | Path], batch_size: int = 64, workers: int = 2
    ) -> tuple[list[Prediction | None], list[tuple[str, str]]]:
        """Predictions for photo files (None where a file is unreadable) and the failures as (path, reason)."""
        embeddings, logits, valid, failures = embed_paths(self.embedder, paths, batch_size, workers)
        scored = iter(self.score(embeddings, logits)) if valid.any() else iter(())
        return [next(scored) if ok else None for ok in valid], failures

    def search(self, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(similarities, positions, landmark ids) of the k nearest reference photos, -1 padded."""
        if self.index is None or len(self.index) == 0:
            empty = np.zeros((len(embeddings), 0))
            return empty.astype(np.float32), empty.astype(np.int64), empty.astype(np.int64)
        similarities, positions = self.index.search(embeddings, k)
        return similarities, positions, self.index.landmark_ids_at(positions)

    def classifier_scores(self, logits: np.ndarray) -> np.ndarray:
        """Per-class scores in [0, 1]: the cosine to the class centre for ArcFace heads (it drops for photos unlike
        any training photo, which a softmax hides), the softmax probability otherwise."""
        if not logits.size:
            return np.zeros((len(logits), 0), np.float32)
        mode = self.config.classifier_score
        if mode == "cosine" or (mode == "auto" and self.logit_scale):
            return np.clip(logits / (self.logit_scale or 1.0), 0.0, 1.0)
        return softmax(logits)

    def taught_scores(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(taught landmark ids, (N, T) cosine of each query to their nearest imprinted centre, in [0, 1])."""
        centres = {i: c for i, c in self.centres.items() if i in self.names and len(c)}
        if not centres or self.neck_dims is None or embeddings.ndim != 2 or embeddings.shape[1] < self.neck_dims:
            return np.zeros(0, np.int64), np.zeros((len(embeddings), 0), np.float32)
        return centre_scores(embeddings, centres, self.neck_dims)

    def score(self, embeddings: np.ndarray, logits: np.ndarray,
              locations: Sequence[Location | None] | None = None) -> list[Prediction]:
        """Fuse kNN similarities and classifier probabilities into one prediction per photo.

        For each candidate landmark: knn = highest cosine similarity among the k nearest reference photos of
        that landmark (0 if none), classifier = ``classifier_scores`` (for landmarks taught after training, which
        the classifier does not know, the cosine to their imprinted centres, ``landmarks.recognize.centres``; where
        the head is not a cosine classifier, the knn score stands in). fused = w * knn + (1 - w) * classifier.
        Reference photos known to show no landmark (landmark id -1) pull the confidence down by how much
        closer they are than the best landmark's photo. A calibrated run (``calibration.json``) then turns the
        fused scores into the probability that the answer is right; ``known`` is confidence >= min_confidence.
        """
        cfg = self.config
        probabilities = self.classifier_scores(logits)
        weight = cfg.knn_weight if self.index is not None and len(self.index) else 0.0
        similarities, positions, neighbour_labels = self.search(embeddings, max(cfg.knn_k, cfg.show_neighbours))
        results: list[Prediction] = []
        top_classes = np.argsort(-probabilities, axis=1)[:, : cfg.top_k] if probabilities.size else None
        taught_ids, taught_scores = self.taught_scores(embeddings)
        taught_column_of = {int(l): c for c, l in enumerate(taught_ids)}
        for row in range(len(embeddings)):
            knn: dict[int, float] = {}
            non_landmark_similarity = -1.0
            for similarity, landmark_id in zip(similarities[row, : cfg.knn_k], neighbour_labels[row, : cfg.knn_k]):
                landmark_id = int(landmark_id)
                if landmark_id == NO_LANDMARK:
                    non_landmark_similarity = max(non_landmark_similarity, float(similarity))
                    continue
                knn[landmark_id] = max(knn.get(landmark_id, -1.0), float(similarity))
            candidate_ids = set(knn)
            if top_classes is not None:
                candidate_ids.update(int(self.class_landmark_ids[c]) for c in top_classes[row])
            if len(taught_ids):
                candidate_ids.update(int(taught_ids[c]) for c in np.argsort(-taught_scores[row])[: cfg.top_k])
            scores = []
            for landmark_id in candidate_ids:
                knn_score = max(0.0, knn.get(landmark_id, 0.0))
                column = self.class_of.get(landmark_id)
                taught_column = taught_column_of.get(landmark_id)
                classifier_score = (float(probabilities[row, column]) if column is not None else
                                    float(taught_scores[row, taught_column]) if taught_column is not None else knn_score)
                fused = weight * knn_score + (1 - weight) * classifier_score
                if non_landmark_similarity > 0:
                    fused -= cfg.non_landmark_penalty * max(0.0, non_landmark_similarity - knn.get(landmark_id, 0.0))
                scores.append((min(1.0, max(0.0, fused)), landmark_id))
            scores.sort(key=lambda item: (-item[0], item[1]))
            candidates = [Candidate(l, self.name_of(l), round(s, 6)) for s, l in scores[: cfg.top_k]]
            neighbours = [
                Neighbour(self.index.image_ids[p], int(l), round(float(s), 6))
                for s, p, l in zip(similarities[row, : cfg.show_neighbours], positions[row], neighbour_labels[row])
                if p >= 0
            ]
            best = candidates[0] if candidates else Candidate(NO_LANDMARK, NO_LANDMARK_NAME, 0.0)
            results.append(
                Prediction(
                    best.landmark_id, best.name, best.score, candidates, neighbours, is_known(best.score, cfg.min_confidence)
                )
            )
        if self.calibration is not None:
            self.calibration.apply(results, cfg.min_confidence, self.is_taught_answer)
        if locations is not None:
            self.apply_geo(results, locations)
        return results

    @property
    def coordinates(self) -> dict[int, Location]:
        """The landmarks whose coordinates the run knows."""
        return {i: Location(float(v["latitude"]), float(v["longitude"])) for i, v in self.info.items()
                if "latitude" in v and "longitude" in v}

    def apply_geo(self, predictions: Sequence[Prediction], locations: Sequence[Location | None]) -> None:
        """The geo prior (``landmarks.recognize.geo``, ``recognize.geo_radius_km``) on predictions of photos taken at
        ``locations`` (None: unknown), in place: far candidates lose confidence, the best is chosen again."""
        radius = self.config.geo_radius_km
        coordinates = self.coordinates if radius > 0 else {}
        for prediction, location in zip(predictions, locations):
            if location is None or not coordinates or not prediction.candidates:
                continue
            prediction.candidates = rescore(prediction.candidates, location, coordinates, radius)
            best = prediction.candidates[0]
            prediction.landmark_id, prediction.name, prediction.confidence = best.landmark_id, best.name, best.score
            prediction.known = is_known(best.score, self.config.min_confidence)
