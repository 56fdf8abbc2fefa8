"""The calibration answers of a run: leave-out probes, calibration models, the non-landmark bank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from landmarks.config import RecognizeConfig
from landmarks.train.open_set import split_non_landmark_bank
from landmarks.train.open_set import CalibrationSamples, HELD_OUT, HIDDEN, NON_LANDMARK_PHOTO, calibrate, gather_samples, probe_recognizer
from landmarks.recognize.confidence import FEATURES
from landmarks.recognize.index import EmbeddingIndex
from landmarks.recognize.recognizer import Recognizer
from landmarks.run_folder import RunFolder
from tests_helpers import FixedEmbedder, unit


REFERENCES = np.stack([unit(1, 0, 0), unit(0.9, 0.1, 0), unit(0, 1, 0), unit(0.1, 0.9, 0), unit(0, 0, 1)])
IDS = ["a1", "a2", "b1", "b2", "none1"]
LABELS = np.array([10, 10, 20, 20, -1])


def recognizer() -> Recognizer:
    config = RecognizeConfig(knn_k=3, knn_weight=0.5, top_k=3, show_neighbours=3, classifier_score="softmax")
    index = EmbeddingIndex.build(REFERENCES, IDS, LABELS, "flat")
    return Recognizer(FixedEmbedder(), np.array([10, 20]), {10: "tower", 20: "bridge"}, index, config)


def test_hidden_landmark_leaves_its_photos_and_classifier_column_out():
    probe = probe_recognizer(recognizer(), REFERENCES, IDS, LABELS)
    query = unit(1, 0.05, 0)[None]
    logits = np.log(np.array([[0.9, 0.1]], dtype=np.float32))
    [seen] = probe.ask(query, logits)
    assert seen.landmark_id == 10
    [hidden] = probe.ask(query, logits, hidden=np.array([10]))
    assert hidden.landmark_id == 20
    assert all(n.landmark_id != 10 for n in hidden.neighbours)
    # by hand: kNN of the bridge = its nearest photo b2; the classifier renormalised without the tower = 1.0
    assert hidden.confidence == pytest.approx(0.5 * float(query[0] @ unit(0.1, 0.9, 0)) + 0.5 * 1.0, abs=1e-5)
    assert probe.hidden is None  # nothing stays hidden for the next question
    [again] = probe.ask(query, logits)
    assert again.landmark_id == 10


def test_a_reference_photo_asked_about_itself_is_left_out_of_its_search():
    probe = probe_recognizer(recognizer(), REFERENCES, IDS, LABELS)
    [answer] = probe.ask(REFERENCES[:1], np.zeros((1, 2), np.float32), excluded=np.array([0]))
    assert [n.image_id for n in answer.neighbours][:1] == ["a2"]
    assert "a1" not in [n.image_id for n in answer.neighbours]


def test_gather_samples_by_hand():
    probe = probe_recognizer(recognizer(), REFERENCES, IDS, LABELS)
    queries = (np.stack([unit(1, 0.05, 0), unit(0.05, 1, 0), unit(1, 0.2, 0)]),
               np.log(np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]], dtype=np.float32)), np.array([10, 20, 20]))
    negatives = (np.stack([unit(0.1, 0, 1)]), np.zeros((1, 2), np.float32))
    samples = gather_samples(probe, queries, negatives)
    assert samples.counts() == {HELD_OUT: 3, HIDDEN: 3, NON_LANDMARK_PHOTO: 1}
    assert samples.correct.tolist() == [True, True, False, False, False, False, False]
    assert samples.is_landmark.tolist() == [True] * 3 + [False] * 4
    assert samples.features.shape == (7, len(FEATURES))
    # the non-landmark photo's nearest reference is the non-landmark photo: feature 3 is their similarity
    assert samples.features[6, 3] == pytest.approx(float(unit(0.1, 0, 1) @ unit(0, 0, 1)), abs=1e-5)


def test_calibrate_chooses_the_threshold_and_records_what_it_saw():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    correct = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    features = np.zeros((8, len(FEATURES)))
    features[:, 0] = scores
    source = np.array([HELD_OUT] * 5 + [HIDDEN] * 2 + [NON_LANDMARK_PHOTO], dtype=object)
    samples = CalibrationSamples(features, correct, source == HELD_OUT, source)
    calibration = calibrate(samples, "platt", target_precision=1.0)
    # precision 1.0 holds down to score 0.6 (4 right of 4): the threshold is that score's calibrated value
    assert calibration.threshold == pytest.approx(float(calibration.map_scores([0.6])[0]))
    assert calibration.fitted_on == {HELD_OUT: 5, HIDDEN: 2, NON_LANDMARK_PHOTO: 1}
    assert calibration.measured["precision_of_known_answers"] == 1.0
    assert calibration.measured["coverage"] == pytest.approx(4 / 5)
    assert calibration.measured["non_landmark_named"] == 0.0
    as_before = calibrate(samples, "none", None, 0.3)
    assert as_before.threshold == 0.3 and as_before.method == "none"


def test_a_trained_run_is_calibrated_and_its_recognizer_uses_it(tiny_run_dir):
    from landmarks.run_folder import RunFolder

    calibration = RunFolder(tiny_run_dir).read_scoring().calibration
    assert calibration is not None and calibration.method in ("platt", "none")
    assert calibration.fitted_on[HELD_OUT] == calibration.fitted_on[HIDDEN] > 0
    assert RunFolder(tiny_run_dir).read_scoring().recognize.min_confidence == pytest.approx(calibration.threshold, abs=1e-6)
    for plot in ("reliability.png", "precision_coverage.png"):
        assert (tiny_run_dir / "plots" / plot).stat().st_size > 10_000
    loaded = Recognizer.load(tiny_run_dir, backend="torch")
    assert loaded.calibration == calibration


def test_training_with_a_non_landmark_bank_splits_it_into_references_and_negatives(tmp_path):
    from tests_helpers import build_tiny_gldv2, make_photo

    from landmarks.config import load_config
    from landmarks.train.open_set import split_non_landmark_bank
    from landmarks.train.run import train

    data = build_tiny_gldv2(tmp_path / "gld")
    bank = tmp_path / "bank"
    for i in range(10):
        make_photo(bank / "kitchen" / f"{i}.jpg", (90 + 10 * i, 128, 128 - 5 * i), seed=300 + i)
    overrides = ["data.image_size_px=32", "train.epochs=1", "train.batch_size=16", "train.workers=0",
                 f"data.cache_dir={tmp_path / 'cache'}", f"data.non_landmarks={bank}"]
    run = train(load_config("seed-cnn", overrides), data, tmp_path / "run")
    references, negatives = split_non_landmark_bank(sorted(bank.rglob("*.jpg")), seed=42)
    assert references and negatives
    loaded = Recognizer.load(run, backend="torch")
    in_index = {i for i, l in zip(loaded.index.image_ids, loaded.index.landmark_ids_at(range(len(loaded.index))))
                if l == -1}
    assert in_index == {f"non-landmark:kitchen/{p.name}" for p in references}  # the path inside the bank
    assert RunFolder(run).read_scoring().calibration.fitted_on[NON_LANDMARK_PHOTO] == len(negatives)


def test_an_arcface_run_is_calibrated_by_a_model_that_never_saw_some_landmarks(tmp_path):
    from tests_helpers import build_tiny_gldv2, make_photo

    from landmarks.config import load_config
    from landmarks.train.run import train

    data = build_tiny_gldv2(tmp_path / "gld")
    bank = tmp_path / "bank"
    for i in range(8):
        make_photo(bank / f"{i}.jpg", (90 + 10 * i, 128, 128 - 5 * i), seed=500 + i)
    overrides = ["model.backbone=test_efficientnet", "model.pretrained=none", "model.embedding_dim=16",
                 "data.image_size_px=32", "train.epochs=2", "train.batch_size=8", "train.workers=0",
                 "train.max_minutes=none", "data.val_fraction=0.25", f"data.cache_dir={tmp_path / 'cache'}",
                 f"data.non_landmarks={bank}"]
    run = train(load_config("glr", overrides), data, tmp_path / "run")
    calibration = RunFolder(run).read_scoring().calibration
    assert "calibration model" in calibration.fitted_on["queries"]
    # 4 landmarks, one hidden from each of the 6 calibration models: each answers about the 9 validation photos
    # of the 3 landmarks it knows, as many photos of the hidden one, and the bank's negatives
    assert calibration.fitted_on[HELD_OUT] == calibration.fitted_on[HIDDEN] == 6 * 9
    assert calibration.fitted_on[NON_LANDMARK_PHOTO] > 0
    assert (run / "plots" / "reliability.png").exists() and (run / "plots" / "precision_coverage.png").exists()
    predictions, _ = Recognizer.load(run, backend="torch").predict_paths(sorted((data / "test").rglob("*.jpg")))
    assert all(0.0 <= p.confidence <= 1.0 for p in predictions)


def test_a_calibration_model_whitens_its_descriptor_on_the_photos_it_learns_from_only():
    import torch

    from landmarks.config import load_config
    from landmarks.train.open_set import train_calibration_model

    config = load_config("glr", ["model.embedding_dim=8", "model.descriptor_dims=4", "train.epochs=1",
                                 "train.batch_size=4"])
    rng = np.random.default_rng(0)
    pooled = rng.random((12, 2, 16)).astype(np.float32) + 0.1  # 12 photos, 2 views, 16 features
    model = train_calibration_model(pooled, np.repeat([0, 1, 2], 4), 3, config, seed=1)
    expected = torch.nn.functional.normalize(torch.from_numpy(pooled.reshape(-1, 16)), dim=1).mean(0)
    assert model.descriptor is not None and torch.allclose(model.descriptor.center, expected, atol=1e-6)
    embeddings, logits = model(pooled)
    assert embeddings.shape == (12, 8 + 4) and logits.shape == (12, 3)
    assert np.abs(embeddings[:, 8:]).sum() > 0
    config.model.descriptor_dims = 0
    assert train_calibration_model(pooled, np.repeat([0, 1, 2], 4), 3, config, seed=1).descriptor is None


def test_a_calibration_model_whitens_the_descriptors_own_features_when_it_has_a_stage():
    import torch

    from landmarks.config import load_config
    from landmarks.train.open_set import train_calibration_model

    config = load_config("glr", ["model.embedding_dim=8", "model.descriptor_dims=3", "model.descriptor_stage=2",
                                 "train.epochs=1", "train.batch_size=4"])
    rng = np.random.default_rng(0)
    pooled = rng.random((12, 2, 16 + 5)).astype(np.float32) + 0.1  # 16 neck features, then 5 of the descriptor's
    model = train_calibration_model(pooled, np.repeat([0, 1, 2], 4), 3, config, seed=1, descriptor_features=5)
    expected = torch.nn.functional.normalize(torch.from_numpy(pooled[:, :, 16:].reshape(-1, 5)), dim=1).mean(0)
    assert model.neck.layers[0].in_features == 16 and torch.allclose(model.descriptor.center, expected, atol=1e-6)
    embeddings, _ = model(pooled)
    assert embeddings.shape == (12, 8 + 3) and np.abs(embeddings[:, 8:]).sum() > 0


def test_bank_split_is_disjoint_deterministic_and_by_content(tmp_path: Path):
    bank = tmp_path / "bank"
    bank.mkdir()
    for i in range(200):
        (bank / f"{i:03d}.jpg").write_bytes(f"photo {i}".encode())
    paths = sorted(bank.iterdir())
    references, negatives = split_non_landmark_bank(paths, 0.5, seed=1)
    assert set(references).isdisjoint(negatives) and set(references) | set(negatives) == set(paths)
    assert 70 < len(references) < 130
    assert split_non_landmark_bank(list(reversed(paths)), 0.5, seed=1) == (references, negatives)
    assert split_non_landmark_bank(paths, 0.5, seed=2) != (references, negatives)
    # renaming a photo or adding others does not move it
    renamed = bank / "zzz.jpg"
    references[0].rename(renamed)
    (bank / "new.jpg").write_bytes(b"another photo")
    moved_references, _ = split_non_landmark_bank(sorted(bank.iterdir()), 0.5, seed=1)
    assert renamed in moved_references and set(references[1:]) <= set(moved_references)


@pytest.mark.parametrize("optimizer, scheduler", [("sgd", "none"), ("adam", "cosine"), ("adamw", "cosine")])
def test_a_calibration_model_trains_with_the_runs_optimiser_and_schedule(monkeypatch, optimizer, scheduler):
    """The calibration models run the Trainer's own step (train.loop.fit_pass) with train.optimizer and
    train.scheduler, one schedule step per epoch."""
    import torch

    from landmarks.config import load_config
    from landmarks.train import open_set

    made: list[torch.optim.Optimizer] = []
    passes: list[int] = []
    original_optimizer, original_pass = open_set.make_optimizer, open_set.fit_pass
    monkeypatch.setattr(open_set, "make_optimizer", lambda *a: made.append(original_optimizer(*a)) or made[-1])
    monkeypatch.setattr(open_set, "fit_pass", lambda *a, **k: passes.append(1) or original_pass(*a, **k))
    config = load_config("glr", ["model.embedding_dim=8", "model.descriptor_dims=0", "train.epochs=3",
                                 "train.batch_size=4", f"train.optimizer={optimizer}", f"train.scheduler={scheduler}"])
    pooled = np.random.default_rng(0).random((12, 1, 16)).astype(np.float32)
    open_set.train_calibration_model(pooled, np.repeat([0, 1, 2], 4), 3, config, seed=1)
    expected = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optimizer]
    assert len(made) == 1 and type(made[0]) is expected and len(passes) == 3
    lr = made[0].param_groups[0]["lr"]
    assert lr == pytest.approx(config.train.lr) if scheduler == "none" else lr < config.train.lr


def test_a_calibration_model_is_taught_half_its_hidden_landmarks_and_asked_about_their_other_photos():
    from landmarks.config import load_config
    from landmarks.train.open_set import TAUGHT, TAUGHT_PHOTOS, _calibration_model_samples, taught_figures

    rng = np.random.default_rng(0)
    landmarks, dim = 8, 24
    directions = rng.normal(size=(landmarks, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)

    def photos(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(landmarks) + 100, count)
        features = np.abs(directions[labels - 100] + 0.15 * rng.normal(size=(len(labels), dim)))
        return features[:, None, :].astype(np.float32), labels

    train, val = photos(14), photos(3)
    config = load_config("glr", ["model.embedding_dim=16", "model.descriptor_dims=0", "train.epochs=4",
                                 "train.batch_size=16", "train.max_minutes=none", "recognize.tta_flip=false"])
    names = {100 + i: f"place {i}" for i in range(landmarks)}
    recognizer = Recognizer(FixedEmbedder(), np.arange(landmarks) + 100, names, None, config.recognize.model_copy(),
                            logit_scale=config.model.arcface_scale)
    samples = _calibration_model_samples(recognizer, config, train, val, None, None, hidden_fraction=0.5, seed=3)
    taught = samples.source == TAUGHT
    # 4 landmarks hidden, 2 of them taught: their 17 photos each, less the teaching ones, are asked
    assert 2 * 17 - 2 * max(TAUGHT_PHOTOS) <= taught.sum() <= 2 * 17 - 2 * min(TAUGHT_PHOTOS)
    assert set(samples.taught_photos[taught]) <= set(TAUGHT_PHOTOS) and set(samples.taught_photos[~taught]) == {0}
    assert samples.is_landmark[taught].all() and samples.correct[taught].mean() > 0.8  # well apart: mostly right
    assert (samples.source == HELD_OUT).sum() == 4 * 3 and (samples.source == HIDDEN).sum() == 4 * 3
    assert not samples.correct[samples.source == HIDDEN].any()
    assert samples.answer_taught[taught & samples.correct].all()  # a right answer about a taught photo names it
    assert not samples.answer_taught[(samples.source == HELD_OUT) & samples.correct].any()
    figures = taught_figures(samples, samples.features[:, 0], threshold=0.0)  # everything known
    assert set(figures["by_photos"]) == set(samples.taught_photos[taught].tolist())
    assert figures["all"]["coverage"] == pytest.approx(samples.correct[taught].mean())
    assert figures["trained_coverage"] == pytest.approx(samples.correct[samples.source == HELD_OUT].mean())


def test_teaching_is_replayed_on_a_run_whose_weights_never_saw_its_photos():
    from landmarks.train.open_set import TAUGHT, taught_leave_out_samples

    rng = np.random.default_rng(1)
    tower = np.stack([unit(1, 0, 0) + 0.05 * rng.normal(size=3) for _ in range(4)])
    bridge = np.stack([unit(0, 1, 0) + 0.05 * rng.normal(size=3) for _ in range(4)])
    vectors = (np.concatenate([tower, bridge]) / np.linalg.norm(np.concatenate([tower, bridge]), axis=1,
                                                                keepdims=True)).astype(np.float32)
    labels = np.array([10] * 4 + [20] * 4)
    config = RecognizeConfig(knn_k=3, knn_weight=1.0, top_k=2, show_neighbours=3)
    probe = probe_recognizer(Recognizer(FixedEmbedder(), np.array([10, 20]), {10: "tower", 20: "bridge"}, None, config),
                             vectors, [f"r{i}" for i in range(8)], labels)
    samples = taught_leave_out_samples(probe, (vectors, np.zeros((8, 2), np.float32), labels), seed=0)
    # tower taught from 3 of its 4 photos, bridge from min(5, 4 - 1) = 3: one photo of each asked, named right
    assert samples.source.tolist() == [TAUGHT, TAUGHT] and samples.taught_photos.tolist() == [3, 3]
    assert samples.correct.all() and samples.answer_taught.all() and samples.is_landmark.all()
    assert samples.features[:, 0] == pytest.approx([1.0, 1.0], abs=0.02)  # its nearest kept photo is close


def test_teaching_counts_stay_at_3_5_and_10_and_leave_a_photo_to_ask() -> None:
    from landmarks.train.open_set import teaching_count

    assert teaching_count(10, 30) == 10 and teaching_count(10, 10) == 5 and teaching_count(5, 6) == 5
    assert teaching_count(5, 5) == 3 and teaching_count(3, 4) == 3 and teaching_count(3, 3) is None
