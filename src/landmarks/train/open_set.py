"""The calibration answers of a run: how it answers photos its weights never learned from, after training.

A run's confidence map (``landmarks.recognize.confidence``) is fitted on answers about:

- **held-out photos** (the validation split) searched against the training photos only: right or wrong answers;
- **hidden landmarks**, photos of landmarks the answering model was never trained on (every answer is wrong), in
  one of two ways (``recognize.hidden_landmarks``):
  ``model`` (ArcFace heads): ``CALIBRATION_MODELS`` calibration models, fresh necks and ArcFace heads each trained
  (``landmarks.train.loop.train_head``, the run's optimiser and schedule) on the run's pooled backbone features of a
  random three quarters of the landmarks, answer about the validation photos of those and about photos of the
  quarter they never saw, as ``benchmarks/bench_open_set.py`` hides landmarks; seconds of training, since the
  features were captured while finishing the run embedded its photos (``landmarks.train.pooled``).
  ``leave-out`` (other heads, or asked for): the held-out photos asked again with their own landmark left out of
  the candidates (its reference photos dropped from the kNN, its classifier column removed). Exact for weights
  that never saw the photos (``baseline-knn``), optimistic for trained ones (on the proxy, with the bank, glr's
  known answers were right 73 % of the time at a threshold chosen for 95 %; 92 % with the calibration models);
- **taught landmarks** (``model`` only): half of each calibration model's hidden landmarks are taught to it as the
  service teaches them, from ``TAUGHT_PHOTOS`` (3, 5 or 10) of their photos each (reference photos plus class centres
  imprinted from them, ``landmarks.recognize.centres``); their other photos are asked: right or wrong answers, so that
  a confidence means the same for a taught landmark as for a trained one. How often those answers are right and
  known, per number of teaching photos, is kept in ``scoring.json`` (``Calibration.measured["taught"]``), with the
  fewest photos at which a taught landmark is named as often as a trained one (``min_photos``);
- **non-landmark photos** from a bank (``data.non_landmarks=DIR``), the part of it that is not in the index
  (``split_non_landmark_bank``): every answer is wrong.

"Probability" is relative to that mix (about one hidden-landmark photo per held-out photo, plus the bank).
``calibrate_after_training`` gathers the answers, fits the map and the threshold (``landmarks.train.fit_confidence``)
and writes the calibration plots; ``landmarks.train.finish`` stores the result in ``scoring.json``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from landmarks.config import Config
from landmarks.data.catalog import NO_LANDMARK, non_landmark_id, non_landmark_photos
from landmarks.data.prepared import PreparedData
from landmarks.evaluate import metrics, plots
from landmarks.models.heads import GLRNeck, SubCenterArcFace, WhitenedDescriptor, dynamic_margins
from landmarks.recognize.confidence import FEATURES, Calibration, prediction_features
from landmarks.recognize.embed import Embedder, embed_paths
from landmarks.recognize.index import EmbeddingIndex
from landmarks.recognize.prediction import Prediction
from landmarks.recognize.recognizer import Recognizer
from landmarks.run_folder import RunFolder
from landmarks.train.loop import fit_pass, head_batches, make_optimizer, make_scheduler
from landmarks.train.fit_confidence import choose_threshold, fit_calibration
from landmarks.train.pooled import PooledArcFace, capture_pooled, own_descriptor_features, pooled_views, split_pooled

log = logging.getLogger(__name__)

HELD_OUT, HIDDEN, NON_LANDMARK_PHOTO = "held-out photo", "hidden landmark", "non-landmark photo"
TAUGHT = "taught landmark"

TAUGHT_PHOTOS = (3, 5, 10)  # photos a calibration model's taught landmarks are taught from, as users teach them
TAUGHT_SHARE = 0.5  # share of a calibration model's hidden landmarks it is taught (the others stay unknown)
MIN_TAUGHT_ANSWERS = 50  # answers naming a taught landmark needed for a map of their own

HIDDEN_FRACTION = 0.25  # landmarks a calibration model never sees, as bench_open_set.py hides them

CALIBRATION_MODELS = 6  # calibration models, each hiding another random quarter (one alone: a threshold that varies a
# lot with the quarter drawn; on the proxy, 6 together brought glr's known answers from 83 % to 92 % right)

_NOTHING_HIDDEN = np.iinfo(np.int64).min
NON_LANDMARK_REFERENCE_FRACTION = 0.5  # share of a non-landmark bank that becomes references (-1), the rest negatives


class LeaveOutRecognizer(Recognizer):
    """A Recognizer that, per query, can leave one landmark out of the candidates (its reference photos and its
    classifier column) and one reference photo out of the search (the query itself)."""

    hidden: np.ndarray | None = None  # per query: the landmark id to hide, or _NOTHING_HIDDEN
    excluded: np.ndarray | None = None  # per query: the index position to skip, or -1

    def search(self, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if (self.hidden is None and self.excluded is None) or self.index is None or not len(self.index):
            return super().search(embeddings, k)
        extra = 1 if self.excluded is not None else 0
        if self.hidden is not None:
            hidden = [int(h) for h in np.unique(self.hidden) if h != _NOTHING_HIDDEN]
            extra += max([self.index.count_of(h) for h in hidden], default=0)
        similarities, positions, labels = super().search(embeddings, min(len(self.index), k + extra))
        drop = positions < 0
        if self.hidden is not None:
            drop |= labels == self.hidden[:, None]
        if self.excluded is not None:
            drop |= positions == self.excluded[:, None]
        order = np.argsort(drop, axis=1, kind="stable")[:, :k]
        dropped = np.take_along_axis(drop, order, axis=1)
        similarities = np.where(dropped, -np.inf, np.take_along_axis(similarities, order, axis=1)).astype(np.float32)
        positions = np.where(dropped, -1, np.take_along_axis(positions, order, axis=1))
        labels = np.where(dropped, NO_LANDMARK, np.take_along_axis(labels, order, axis=1))
        return similarities, positions, labels

    def classifier_scores(self, logits: np.ndarray) -> np.ndarray:
        if self.hidden is not None and logits.size:
            logits = np.array(logits, dtype=np.float32, copy=True)
            for row, landmark_id in enumerate(self.hidden):
                column = self.class_of.get(int(landmark_id))
                if column is not None:
                    logits[row, column] = -1e9  # softmax: renormalised over the others; cosine: clipped to 0
        return super().classifier_scores(logits)

    def ask(self, embeddings: np.ndarray, logits: np.ndarray, hidden: np.ndarray | None = None,
            excluded: np.ndarray | None = None) -> list[Prediction]:
        """``score`` with ``hidden`` landmarks and ``excluded`` reference positions, one per query."""
        self.hidden = None if hidden is None else np.asarray(hidden, dtype=np.int64)
        self.excluded = None if excluded is None else np.asarray(excluded, dtype=np.int64)
        try:
            return self.score(embeddings, logits)
        finally:
            self.hidden = self.excluded = None

@dataclass
class CalibrationSamples:
    """One row per answer on calibration photos: the fused-score features, whether the answer was right, whether
    the photo shows a known landmark, and where the photo came from (``HELD_OUT``, ``HIDDEN``, ``NON_LANDMARK_PHOTO``)."""

    features: np.ndarray
    correct: np.ndarray
    is_landmark: np.ndarray
    source: np.ndarray
    taught_photos: np.ndarray | None = None  # per answer: the photos its landmark was taught from (``TAUGHT``), else 0
    answer_taught: np.ndarray | None = None  # per answer: it names a taught landmark (the calibration's taught map)

    def __post_init__(self) -> None:
        if self.taught_photos is None:
            self.taught_photos = np.zeros(len(self.correct), np.int64)
        if self.answer_taught is None:
            self.answer_taught = np.zeros(len(self.correct), bool)

    def __len__(self) -> int:
        return len(self.correct)

    def counts(self) -> dict[str, int]:
        counts = {str(s): int((self.source == s).sum()) for s in (HELD_OUT, HIDDEN, NON_LANDMARK_PHOTO)}
        taught = int((self.source == TAUGHT).sum())
        return {**counts, TAUGHT: taught} if taught else counts

    def only(self, sources: Sequence[str]) -> "CalibrationSamples":
        keep = np.isin(self.source, list(sources))
        return CalibrationSamples(self.features[keep], self.correct[keep], self.is_landmark[keep], self.source[keep],
                                  self.taught_photos[keep], self.answer_taught[keep])

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.features, columns=list(FEATURES))
        return frame.assign(correct=self.correct.astype(int), is_landmark=self.is_landmark.astype(int),
                            source=self.source, taught_photos=self.taught_photos,
                            answer_taught=self.answer_taught.astype(int))

def probe_recognizer(recognizer: Recognizer, embeddings: np.ndarray, image_ids: Sequence[str],
                     landmark_ids: Sequence[int] | np.ndarray) -> LeaveOutRecognizer:
    """A LeaveOutRecognizer with ``recognizer``'s model and settings over these references only, uncalibrated."""
    index = EmbeddingIndex.build(np.asarray(embeddings, np.float32), list(image_ids), np.asarray(landmark_ids), "flat")
    return LeaveOutRecognizer(recognizer.embedder, recognizer.class_landmark_ids, recognizer.names, index,
                              copy.deepcopy(recognizer.config), logit_scale=recognizer.logit_scale)

def gather_samples(
    probe: LeaveOutRecognizer,
    queries: tuple[np.ndarray, np.ndarray, np.ndarray],
    negatives: tuple[np.ndarray, np.ndarray] | None = None,
    queries_are_references: bool = False,
) -> CalibrationSamples:
    """Answers of ``probe`` on held-out photos ``queries`` = (embeddings, logits, true landmark ids), on the same
    photos with their landmark hidden, and on non-landmark photos ``negatives`` = (embeddings, logits).

    ``queries_are_references``: query i is reference i of the probe's index (a run without a validation split
    whose weights never saw the photos: each photo is asked with itself left out)."""
    embeddings, logits, true = queries
    true = np.asarray(true, dtype=np.int64)
    excluded = np.arange(len(true)) if queries_are_references else None
    features, correct, is_landmark, source = [], [], [], []
    if len(true):
        answers = probe.ask(embeddings, logits, excluded=excluded)
        features.append(prediction_features(answers))
        correct.append(np.array([a.landmark_id for a in answers]) == true)
        is_landmark.append(np.ones(len(true), bool))
        source += [HELD_OUT] * len(true)
        hidden_answers = probe.ask(embeddings, logits, hidden=true, excluded=excluded)
        features.append(prediction_features(hidden_answers))
        correct.append(np.zeros(len(true), bool))
        is_landmark.append(np.zeros(len(true), bool))
        source += [HIDDEN] * len(true)
    if negatives is not None and len(negatives[0]):
        answers = probe.ask(*negatives)
        features.append(prediction_features(answers))
        correct.append(np.zeros(len(answers), bool))
        is_landmark.append(np.zeros(len(answers), bool))
        source += [NON_LANDMARK_PHOTO] * len(answers)
    if not features:
        nothing = np.zeros(0, bool)
        return CalibrationSamples(np.zeros((0, len(FEATURES))), nothing, nothing, np.array([], dtype=object))
    return CalibrationSamples(np.concatenate(features), np.concatenate(correct), np.concatenate(is_landmark),
                              np.asarray(source, dtype=object))

def concatenate_samples(parts: Sequence[CalibrationSamples]) -> CalibrationSamples:
    return CalibrationSamples(*(np.concatenate([getattr(p, name) for p in parts]) for name in
                                ("features", "correct", "is_landmark", "source", "taught_photos", "answer_taught")))


def teaching_count(wanted: int, photos: int) -> int | None:
    """How many of a landmark's ``photos`` teach it: ``wanted``, or the largest of ``TAUGHT_PHOTOS`` below it that
    leaves a photo to ask about (None when not even the fewest does), so that the figures per number of teaching
    photos stay at 3, 5 and 10."""
    fitting = [n for n in TAUGHT_PHOTOS if n <= wanted and n < photos]
    return max(fitting) if fitting else None


def taught_leave_out_samples(probe: LeaveOutRecognizer, queries: tuple[np.ndarray, np.ndarray, np.ndarray],
                             seed: int) -> CalibrationSamples:
    """Teaching replayed on a run whose weights never saw its reference photos (query i is reference i): each
    landmark in turn keeps only ``TAUGHT_PHOTOS`` (3, 5 or 10, in turn) of its reference photos and is asked about
    the others, as if taught from those (``TAUGHT`` answers; those naming it are ``answer_taught``)."""
    embeddings, logits, true = queries
    true = np.asarray(true, dtype=np.int64)
    rng = np.random.default_rng(seed)
    vectors, image_ids, labels = probe.index.vectors(), probe.index.image_ids, probe.index.landmark_ids
    parts = []
    for number, landmark_id in enumerate(np.unique(true[true >= 0])):
        photos = rng.permutation(np.flatnonzero(true == landmark_id))
        count = teaching_count(TAUGHT_PHOTOS[number % len(TAUGHT_PHOTOS)], len(photos))
        if count is None:
            continue
        asked = photos[count:]
        keep = np.ones(len(vectors), bool)
        keep[asked] = False
        taught = LeaveOutRecognizer(probe.embedder, probe.class_landmark_ids, probe.names,
                                    EmbeddingIndex.build(vectors[keep], [image_ids[i] for i in np.flatnonzero(keep)],
                                                         labels[keep], "flat"),
                                    copy.deepcopy(probe.config), logit_scale=probe.logit_scale)
        answers = taught.ask(embeddings[asked], logits[asked])
        named = np.array([a.landmark_id for a in answers]) == landmark_id
        parts.append(CalibrationSamples(prediction_features(answers), named, np.ones(len(asked), bool),
                                        np.full(len(asked), TAUGHT, dtype=object), np.full(len(asked), count),
                                        named.copy()))
    if not parts:
        nothing = np.zeros(0, bool)
        return CalibrationSamples(np.zeros((0, len(FEATURES))), nothing, nothing, np.array([], dtype=object))
    return concatenate_samples(parts)


def calibrate(samples: CalibrationSamples, method: str, target_precision: float | None,
              default_threshold: float = 0.3, certainty: float = 0.5) -> Calibration:
    """Fit ``method`` on the samples and choose the threshold for ``target_precision`` with ``certainty`` (None:
    ``default_threshold`` on the calibrated scale); what it was fitted on and what it measures there are recorded
    in the result. Answers that name a taught landmark (``answer_taught``), when there are ``MIN_TAUGHT_ANSWERS``
    of them, right and wrong, get a map of their own (``Calibration.taught``), the others the main one; the one
    threshold is chosen over all answers."""
    taught = samples.answer_taught
    trained = ~taught if taught.any() else np.ones(len(samples), bool)
    calibration = fit_calibration(samples.features[trained], samples.correct[trained], method)
    if taught.sum() >= MIN_TAUGHT_ANSWERS and len(np.unique(samples.correct[taught])) == 2:
        own = fit_calibration(samples.features[taught], samples.correct[taught], method)
        calibration.taught = {"method": own.method, "parameters": own.parameters}
    confidences = calibration(samples.features, taught)
    if target_precision is None or calibration.method == "none" and method != "none":
        threshold, reached = default_threshold, None
    else:
        threshold, reached = choose_threshold(confidences, samples.correct, target_precision, certainty)
        if not reached:
            log.warning("no threshold reaches a precision of %.2f on the calibration photos; using %.3f, the most "
                        "precise", target_precision, threshold)
    calibration.threshold = float(threshold)
    calibration.target_precision = target_precision
    calibration.fitted_on = samples.counts()
    calibration.measured = {
        "target_reached": reached,
        **metrics.known_answers(samples.correct, confidences >= threshold, samples.is_landmark),
        "expected_calibration_error": metrics.expected_calibration_error(confidences, samples.correct),
        "log_loss": metrics.log_loss(confidences, samples.correct),
    }
    return calibration


def write_calibration_answers(run: RunFolder, calibration: Calibration, samples: CalibrationSamples) -> None:
    """evaluation/calibration/samples.csv (the answers with their confidence) and the two calibration plots."""
    out = run.evaluation("calibration")
    out.mkdir(parents=True, exist_ok=True)
    confidences = calibration(samples.features, samples.answer_taught)
    samples.to_frame().assign(confidence=confidences).to_csv(out / "samples.csv", index=False)
    plural = {HELD_OUT: "held-out photos", HIDDEN: "photos of hidden landmarks", NON_LANDMARK_PHOTO: "non-landmark photos",
              TAUGHT: "photos of taught landmarks"}
    what = ", ".join(f"{n} {plural.get(k, k)}" for k, n in calibration.fitted_on.items() if isinstance(n, int) and n)
    groups = ({"photos of trained landmarks": samples.source == HELD_OUT, "photos of taught landmarks":
               samples.source == TAUGHT} if (samples.source == TAUGHT).any() else None)
    plots.plot_reliability(confidences, samples.correct, run.plot("reliability.png"),
                           raw_scores=samples.features[:, 0], what=what, groups=groups)
    plots.plot_precision_coverage(confidences, samples.correct, samples.is_landmark, calibration.threshold,
                                  run.plot("precision_coverage.png"), calibration.target_precision, what=what)

def taught_figures(samples: CalibrationSamples, confidences: np.ndarray, threshold: float) -> dict | None:
    """What teaching is worth on the calibration photos: per number of teaching photos, how many of a taught
    landmark's other photos are answered right and known (``coverage``) and how often its known answers are right
    (``precision``); ``trained_coverage``: the same for the trained landmarks' held-out photos; ``min_photos``: the
    fewest teaching photos whose coverage reaches the trained one (the most measured when none does). None when no
    landmark was taught."""
    taught = samples.source == TAUGHT
    if not taught.any():
        return None
    known = np.asarray(confidences) >= threshold
    right = known & samples.correct

    def figures(members: np.ndarray) -> dict[str, float | int | None]:
        return {"answers": int(members.sum()), "coverage": float(right[members].mean()),
                "precision": float(right[members].sum() / known[members].sum()) if known[members].any() else None}

    held_out = samples.source == HELD_OUT
    trained = float(right[held_out].mean()) if held_out.any() else None
    by_photos = {int(n): figures(taught & (samples.taught_photos == n)) for n in np.unique(samples.taught_photos[taught])}
    enough = [n for n, f in by_photos.items() if trained is not None and f["coverage"] >= trained]
    return {"trained_coverage": trained, "by_photos": by_photos, "all": figures(taught),
            "min_photos": min(enough) if enough else max(by_photos)}


def split_non_landmark_bank(
    paths: Sequence[str | Path], reference_fraction: float = NON_LANDMARK_REFERENCE_FRACTION, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """Split a bank of non-landmark photos into (references, calibration negatives), never both.

    Each photo goes by the SHA-1 of the seed and its bytes, so the split does not depend on the photos' names,
    order or number: adding photos never moves the others."""
    references, negatives = [], []
    for path in sorted(Path(p) for p in paths):
        digest = hashlib.sha1(f"{seed}:".encode() + path.read_bytes()).digest()
        (references if int.from_bytes(digest[:8], "big") / 2**64 < reference_fraction else negatives).append(path)
    return references, negatives


def embed_bank(embedder: Embedder, folder: str | Path, seed: int) -> tuple[tuple, tuple]:
    """A bank split (``split_non_landmark_bank``) and embedded: ((embeddings, image ids) of the references,
    (embeddings, logits) of the calibration negatives)."""
    references, negatives = split_non_landmark_bank(non_landmark_photos(folder), seed=seed)
    ref_embeddings, _, valid, _ = embed_paths(embedder, references, desc="non-landmark references")
    ref_ids = [non_landmark_id(folder, p) for p, ok in zip(references, valid) if ok]
    neg_embeddings, neg_logits, _, _ = embed_paths(embedder, negatives, desc="non-landmark negatives")
    return (ref_embeddings, ref_ids), (neg_embeddings, neg_logits)


def calibrate_after_training(run: RunFolder, config: Config, data: PreparedData, recognizer: Recognizer,
                             splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                             pooled_calls: list[np.ndarray] | None = None) -> Calibration | None:
    """finish_run's calibration step; sets ``recognizer.calibration`` and ``recognizer.config.min_confidence`` (what
    scoring.json will hold) and returns the calibration.

    The non-landmark bank (``data.non_landmarks``) is split into references, added to ``recognizer``'s index as
    landmark -1, and calibration negatives. The hidden-landmark answers come from calibration models that never
    saw a quarter of the landmarks each (``recognize.hidden_landmarks=model``; ArcFace heads, whose pooled backbone
    features finish_run captured in ``pooled_calls`` while embedding the train, val and test splits) or else from
    leaving each validation photo's own landmark out. The threshold is chosen for ``recognize.target_precision``. A run without a validation split is calibrated on its training photos (each
    left out of its own search) when its weights never trained on them (``train.epochs=0``), otherwise not at all."""
    ids, landmark_ids = data.frame["id"].to_numpy(), data.frame["landmark_id"].to_numpy()
    train_positions, train_embeddings, train_logits = splits["train"]
    val_positions, val_embeddings, val_logits = splits["val"]
    references = [train_embeddings], ids[train_positions].tolist(), [landmark_ids[train_positions]]
    use_model = bool(pooled_calls) and config.recognize.hidden_landmarks == "model" and len(val_positions) > 0
    model = getattr(recognizer.embedder, "model", None)
    negatives, bank_pooled = None, [None, None]
    if config.data.non_landmarks:
        with capture_pooled(model) if use_model else contextlib.nullcontext() as bank_calls:
            (bank_embeddings, bank_ids), negatives = embed_bank(recognizer.embedder, config.data.non_landmarks,
                                                                config.train.seed)
        if use_model:
            bank_pooled = pooled_views(bank_calls, [len(bank_ids), len(negatives[0])], config.recognize.tta_flip)
        if len(bank_ids):
            recognizer.index.add(bank_embeddings, bank_ids, [NO_LANDMARK] * len(bank_ids))
            references[0].append(bank_embeddings)
            references[1].extend(bank_ids)
            references[2].append(np.full(len(bank_ids), NO_LANDMARK))
        log.info("non-landmark bank %s: %d references, %d calibration negatives", config.data.non_landmarks,
                 len(bank_ids), len(negatives[0]))
    if use_model:
        counts = [len(splits[s][0]) for s in ("train", "val", "test")]
        train_pooled, val_pooled, _ = pooled_views(pooled_calls, counts, config.recognize.tta_flip)
        samples = calibration_model_samples(recognizer, config, (train_pooled, landmark_ids[train_positions]),
                                            (val_pooled, landmark_ids[val_positions]), *bank_pooled,
                                            epochs=len(run.read_history()) or None)
        queries = (f"validation split, asked of {CALIBRATION_MODELS} calibration models each trained without a "
                   "random quarter of the landmarks (their photos are the hidden-landmark answers)")
    elif len(val_positions) or (config.train.epochs == 0 and len(train_positions)):
        queries_are_references = not len(val_positions)
        queries = (train_embeddings, train_logits, landmark_ids[train_positions]) if queries_are_references else (
            val_embeddings, val_logits, landmark_ids[val_positions])
        probe = probe_recognizer(recognizer, np.concatenate(references[0]), references[1],
                                 np.concatenate(references[2]))
        samples = gather_samples(probe, queries, negatives, queries_are_references)
        if queries_are_references:  # weights that never saw the photos: teaching them can be replayed exactly
            samples = concatenate_samples([samples, taught_leave_out_samples(probe, queries, config.train.seed)])
        queries = ("training photos, each left out of its own search (untrained weights)" if queries_are_references
                   else "validation split, searched against the training photos"
                   ) + "; hidden landmarks: each photo asked again with its own landmark left out"
    else:
        log.warning("no calibration: the run has no validation split and its weights saw every training photo; "
                    "recognize.min_confidence stays %.2f", config.recognize.min_confidence)
        return None
    recognize = config.recognize
    calibration = calibrate(samples, recognize.calibration, recognize.target_precision, recognize.min_confidence,
                            recognize.precision_certainty)
    calibration.fitted_on["queries"] = queries
    taught = taught_figures(samples, calibration(samples.features, samples.answer_taught), calibration.threshold)
    if taught is not None:
        calibration.measured["taught"] = taught
        log.info("taught landmarks (calibration models): right and known %s of their other photos from %s teaching "
                 "photos, trained landmarks %s; more photos help below %d", ", ".join(
                     f"{_share(f['coverage'])}" for f in taught["by_photos"].values()),
                 "/".join(str(n) for n in taught["by_photos"]), _share(taught["trained_coverage"]), taught["min_photos"])
    write_calibration_answers(run, calibration, samples)
    recognizer.calibration = calibration
    recognizer.config.min_confidence = round(calibration.threshold, 6)
    measured = calibration.measured
    log.info("calibrated (%s) on %s: known answers from confidence %.3f: %s right, %s of landmark photos answered "
             "right, %s of the others named a landmark", calibration.method, calibration.fitted_on,
             calibration.threshold, _share(measured["precision_of_known_answers"]), _share(measured["coverage"]),
             _share(measured["non_landmark_named"]))
    return calibration


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def train_calibration_model(pooled: np.ndarray, class_index: np.ndarray, num_classes: int,
                            config: Config, seed: int, descriptor_features: int = 0,
                            epochs: int | None = None) -> PooledArcFace:
    """A neck + sub-center ArcFace head on (photos, views, features) with the run's model and optimiser settings,
    and, when the run has one (``model.descriptor_dims``), a descriptor whitened on these photos only: whitened on
    every training photo, it would know the hidden landmarks' look (on the open-set proxy that made the threshold
    too low: known answers 86 % right where 95 % was asked). ``descriptor_features``: how many of the last
    features are the descriptor's own input (``capture_pooled``); 0: it shares the neck's. ``epochs``: as many as
    the run trained before it stopped early (None: ``train.epochs``), on the run's schedule."""
    model_cfg, train_cfg = config.model, config.train
    descriptor = None
    neck_input, descriptor_input = split_pooled(pooled, descriptor_features if model_cfg.descriptor_dims else 0)
    if model_cfg.descriptor_dims:
        descriptor = WhitenedDescriptor(descriptor_input.shape[-1], model_cfg.descriptor_dims,
                                        model_cfg.descriptor_weight)
        descriptor.fit(descriptor_input.reshape(-1, descriptor_input.shape[-1]))
    pooled = neck_input
    torch.manual_seed(seed)
    counts = np.bincount(class_index, minlength=num_classes)
    neck = GLRNeck(pooled.shape[-1], model_cfg.embedding_dim)
    margins = dynamic_margins(counts, model_cfg.arcface_margin_min, model_cfg.arcface_margin_range)
    arcface = SubCenterArcFace(model_cfg.embedding_dim, num_classes, model_cfg.arcface_subcenters,
                               model_cfg.arcface_scale, margins)
    x = torch.from_numpy(np.ascontiguousarray(pooled.reshape(-1, pooled.shape[-1]), dtype=np.float32))
    y = torch.from_numpy(np.repeat(np.asarray(class_index, np.int64), pooled.shape[1]))
    optimizer = make_optimizer(train_cfg, [{"params": [*neck.parameters(), *arcface.parameters()], "lr": train_cfg.lr}])
    schedule = make_scheduler(train_cfg, optimizer)

    def forward(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = neck(inputs)
        return embedding, arcface(embedding, targets)

    def loss_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, targets, label_smoothing=train_cfg.label_smoothing)

    neck.train()
    arcface.train()
    for epoch in range(max(1, epochs or train_cfg.epochs)):  # as the run's frozen epochs: the same step, optimiser and schedule
        fit_pass(forward, head_batches(x, y, train_cfg, shuffle=True, seed=seed + epoch), loss_of, optimizer)
        if schedule is not None:
            schedule.step()
    return PooledArcFace(neck, arcface, descriptor, descriptor_features)


def calibration_model_samples(
    recognizer: Recognizer,
    config: Config,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    bank_references: np.ndarray | None = None,
    bank_negatives: np.ndarray | None = None,
    hidden_fraction: float = HIDDEN_FRACTION,
    models: int = CALIBRATION_MODELS,
    epochs: int | None = None,
) -> CalibrationSamples:
    """Calibration answers of ``models`` calibration models, each of which never saw a quarter of the landmarks
    (drawn with ``train.seed`` + its number); the answers of all of them together.

    ``train`` / ``val``: (pooled features (photos, views, features), landmark ids) of the training and validation
    photos; ``bank_*``: pooled features of the non-landmark references and negatives. The calibration model's
    index holds the training photos of the landmarks it knows (and the non-landmark references); it is asked about
    the validation photos of those landmarks (right or wrong answers), about as many photos of the hidden landmarks
    (every answer wrong: a landmark it was never trained on) and about the non-landmark negatives."""
    draws = [_calibration_model_samples(recognizer, config, train, val, bank_references, bank_negatives,
                                        hidden_fraction, config.train.seed + draw, epochs) for draw in range(models)]
    return CalibrationSamples(*(np.concatenate([getattr(d, name) for d in draws])
                                for name in ("features", "correct", "is_landmark", "source", "taught_photos",
                                             "answer_taught")))


def _calibration_model_samples(recognizer: Recognizer, config: Config, train: tuple[np.ndarray, np.ndarray],
                               val: tuple[np.ndarray, np.ndarray], bank_references: np.ndarray | None,
                               bank_negatives: np.ndarray | None, hidden_fraction: float,
                               seed: int, epochs: int | None = None) -> CalibrationSamples:
    """One calibration model's answers (see ``calibration_model_samples``)."""
    train_pooled, train_landmarks = train
    val_pooled, val_landmarks = val
    rng = np.random.default_rng(seed)
    landmarks = np.unique(train_landmarks)
    hidden = rng.choice(landmarks, size=max(1, int(round(hidden_fraction * len(landmarks)))), replace=False)
    known_ids = np.setdiff1d(landmarks, hidden)
    kept = np.isin(train_landmarks, known_ids)
    model = train_calibration_model(train_pooled[kept], np.searchsorted(known_ids, train_landmarks[kept]),
                                    len(known_ids), config, seed,
                                    own_descriptor_features(getattr(recognizer.embedder, "model", None)), epochs)
    references, _ = model(train_pooled[kept])
    ids = [f"train:{i}" for i in range(int(kept.sum()))]
    labels = train_landmarks[kept]
    if bank_references is not None and len(bank_references):
        bank_embeddings, _ = model(bank_references)
        references = np.concatenate([references, bank_embeddings])
        ids += [f"non-landmark:{i}" for i in range(len(bank_embeddings))]
        labels = np.concatenate([labels, np.full(len(bank_embeddings), NO_LANDMARK)])
    probe = LeaveOutRecognizer(recognizer.embedder, known_ids, recognizer.names,
                               EmbeddingIndex.build(references, ids, labels, "flat"), copy.deepcopy(recognizer.config),
                               logit_scale=recognizer.logit_scale)
    known_queries = ~np.isin(val_landmarks, hidden)
    hidden_pool = np.concatenate([train_pooled[~kept], val_pooled[~known_queries]])
    hidden_labels = np.concatenate([train_landmarks[~kept], val_landmarks[~known_queries]])
    taught = hidden[: int(TAUGHT_SHARE * len(hidden))]  # ``hidden`` is in random order; one hidden landmark stays so
    probe.set_head_shape({"embedding_dim": references.shape[1], "config": config.model.model_dump()})
    taught_parts = teach_hidden(probe, model, hidden_pool, hidden_labels, taught, rng) if probe.imprints else []
    unknown = ~np.isin(hidden_labels, taught)
    take = rng.choice(np.flatnonzero(unknown), size=min(int(unknown.sum()), int(known_queries.sum())), replace=False)
    parts = [(val_pooled[known_queries], val_landmarks[known_queries], HELD_OUT, 0),
             (hidden_pool[np.sort(take)], None, HIDDEN, 0), *taught_parts]
    if bank_negatives is not None and len(bank_negatives):
        parts.append((bank_negatives, None, NON_LANDMARK_PHOTO, 0))
    features, correct, is_landmark, source, taught_photos, answer_taught = [], [], [], [], [], []
    for pooled, true, kind, photos in parts:
        if not len(pooled):
            continue
        answers = probe.ask(*model(pooled))
        answer_taught.append(np.array([probe.is_taught_answer(a.landmark_id) for a in answers], bool))
        features.append(prediction_features(answers))
        correct.append(np.array([a.landmark_id for a in answers]) == true if true is not None
                       else np.zeros(len(answers), bool))
        is_landmark.append(np.full(len(answers), kind in (HELD_OUT, TAUGHT)))
        source += [kind] * len(answers)
        taught_photos.append(np.full(len(answers), photos, np.int64))
    log.info("calibration model: %d landmarks known, %d hidden (%s), %d of them taught", len(known_ids), len(hidden),
             ", ".join(str(int(h)) for h in np.sort(hidden)), len(taught_parts))
    return CalibrationSamples(np.concatenate(features), np.concatenate(correct), np.concatenate(is_landmark),
                              np.asarray(source, dtype=object), np.concatenate(taught_photos),
                              np.concatenate(answer_taught))


def teach_hidden(probe: Recognizer, model: PooledArcFace, pooled: np.ndarray, labels: np.ndarray,
                 taught: np.ndarray, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, str, int]]:
    """Teach ``probe`` the landmarks ``taught`` as the service does (``Recognizer.add_references`` and
    ``Recognizer.imprint``), each from ``TAUGHT_PHOTOS`` photos (drawn in turn) of its ``pooled`` features; returns,
    per landmark, (its other photos' pooled features, their landmark id, ``TAUGHT``, the teaching photos) to ask."""
    parts = []
    for number, landmark_id in enumerate(taught):
        photos = rng.permutation(np.flatnonzero(labels == landmark_id))
        count = teaching_count(TAUGHT_PHOTOS[(number + int(rng.integers(len(TAUGHT_PHOTOS)))) % len(TAUGHT_PHOTOS)],
                               len(photos))
        if count is None:
            continue
        embeddings, _ = model(pooled[photos[:count]])
        probe.add_references(embeddings, [f"taught:{landmark_id}:{i}" for i in range(count)], int(landmark_id))
        probe.imprint(int(landmark_id))
        queries = photos[count:]
        parts.append((pooled[queries], np.full(len(queries), int(landmark_id)), TAUGHT, count))
    return parts
