"""The Trainer: unfreezing, early stopping, precise BatchNorm, the time budget, checkpoints that rebuild the model."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from tests_helpers import build_tiny_gldv2
from landmarks.config import load_config
from landmarks.run_folder import RunFolder
from landmarks.data.prepared import prepare_data
from landmarks.models.registry import build_model
from landmarks.models.meta import model_config_from_meta
from landmarks.train.loop import Trainer, _last_batch_of_one
from landmarks.train.run import train
from landmarks.utils import seed_everything

# 4 landmarks x 12 photos -> 36 training, 8 validation and 4 held-out photos at 32 px
TINY = ["data.image_size_px=32", "train.workers=0", "train.early_stopping_patience=0", "train.precise_bn_batches=0",
        "train.batch_size=16", "train.lr=0.003"]
BACKBONE = ["model.architecture=classifier", "model.backbone=test_efficientnet", "model.head=arcface",
            "model.embedding_dim=16", "model.pretrained=none"]


def make_trainer(data_dir: Path, folder: Path, overrides: list[str]) -> Trainer:
    """A Trainer over the tiny dataset with a fresh run folder in ``folder``."""
    config = load_config("seed-cnn", [*TINY, f"data.cache_dir={folder / 'cache'}", *overrides])
    seed_everything(config.train.seed)
    data = prepare_data(config, data_dir)
    run_dir = folder / "run"
    run_dir.mkdir(parents=True)
    return Trainer(config, data, RunFolder(run_dir))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("count, batch, expected", [(65, 64, True), (64, 64, False), (129, 64, True), (1, 64, False), (66, 64, False)])
def test_last_batch_of_one(count: int, batch: int, expected: bool) -> None:
    """An epoch ends on a batch of one photo exactly when count = k * batch + 1 with k >= 1."""
    assert _last_batch_of_one(count, batch) is expected


def test_an_epoch_that_would_end_on_one_photo_trains(tiny_gldv2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """48 training photos in batches of 47: the last batch of one would break BatchNorm; it is dropped."""
    monkeypatch.setenv("LANDMARKS_CACHE", str(tmp_path / "cache"))
    config = load_config("seed-cnn", ["data.image_size_px=32", "data.val_fraction=0", "data.test_fraction=0",
                                      "train.epochs=1", "train.batch_size=47", "train.workers=0",
                                      "train.precise_bn_batches=0"])
    run = train(config, tiny_gldv2, tmp_path / "run")
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 1 and history["train_loss"].notna().all()
    assert history["images_per_second"].iloc[0] * history["train_seconds"].iloc[0] == pytest.approx(47)


# -- freezing the backbone ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def unfrozen_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A classifier (tiny timm backbone, ArcFace head) trained 2 epochs with the backbone frozen for the first,
    with the model's state recorded at the start of each epoch."""
    folder = tmp_path_factory.mktemp("unfreeze")
    trainer = make_trainer(build_tiny_gldv2(folder / "gld"), folder, [*BACKBONE, "train.freeze_backbone_epochs=1",
                                                                     "train.epochs=2"])
    record: dict[str, Any] = {"initial_backbone": snapshot(trainer.model.backbone),
                              "initial_head": snapshot(trainer.model.head), "epochs": []}
    original = trainer._unfreeze_if_due

    def spy(epoch: int) -> None:
        state = {"backbone": snapshot(trainer.model.backbone), "head": snapshot(trainer.model.head)}
        original(epoch)
        state["trainable"] = [p.requires_grad for p in trainer.model.backbone_parameters()]
        state["groups"] = len(trainer.optimizer.param_groups)
        record["epochs"].append(state)

    trainer._unfreeze_if_due = spy  # type: ignore[method-assign]
    trainer.fit()
    record["trainer"] = trainer
    record["last"] = torch.load(trainer.run.path / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    record["best"] = torch.load(trainer.run.path / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    return record


def test_backbone_is_frozen_for_freeze_backbone_epochs_then_trains(unfrozen_run: dict[str, Any]) -> None:
    """Epoch 1 moves the head only (BatchNorm statistics included); from epoch 2 the backbone trains too."""
    first, second = unfrozen_run["epochs"]
    assert not any(first["trainable"]) and first["groups"] == 1  # the optimizer holds the head alone
    end_of_first = second["backbone"]
    assert same(end_of_first, unfrozen_run["initial_backbone"])
    assert not same(second["head"], unfrozen_run["initial_head"])
    assert all(second["trainable"]) and second["groups"] == 2  # backbone and head groups after unfreezing
    end_of_second = {k[len("backbone."):]: v for k, v in unfrozen_run["last"]["model"].items()
                     if k.startswith("backbone.")}
    changed = [k for k in end_of_second if not torch.equal(end_of_second[k], end_of_first[k])]
    assert any(k.endswith("conv_stem.weight") for k in changed) and any(k.endswith("running_mean") for k in changed)
    history = pd.read_csv(unfrozen_run["trainer"].run.path / "history.csv")
    assert history["backbone_frozen"].tolist() == [True, False]
    assert unfrozen_run["last"]["frozen"] is False


def test_checkpoints_carry_meta_that_rebuilds_the_model(unfrozen_run: dict[str, Any]) -> None:
    """best.pt and last.pt name architecture, head and input size; the model rebuilt from meta loads their weights."""
    trainer: Trainer = unfrozen_run["trainer"]
    images = torch.rand(3, 3, 32, 32)
    for name in ("best", "last"):
        checkpoint = unfrozen_run[name]
        meta = checkpoint["meta"]
        assert meta["architecture"] == "classifier" and meta["config"]["backbone"] == "test_efficientnet"
        assert meta["head"] == {"kind": "arcface", "logit_scale": 30.0}
        assert meta["num_classes"] == 4 and meta["input_size_px"] == 32 and meta["embedding_dim"] == 16
        rebuilt = build_model(model_config_from_meta(meta), meta["num_classes"], meta["input_size_px"])
        rebuilt.load_state_dict(checkpoint["model"])  # strict: every key and shape fits
        assert rebuilt.mean.flatten().tolist() == pytest.approx(meta["mean"])
    best = build_model(model_config_from_meta(unfrozen_run["best"]["meta"]), 4, 32)
    best.load_state_dict(unfrozen_run["best"]["model"])
    with torch.no_grad():
        for a, b in zip(best.eval()(images), trainer.model.eval()(images)):
            assert torch.allclose(a, b, atol=1e-5)  # fit() ends on the best checkpoint's weights


@pytest.mark.parametrize("cache_features", [True, False])
def test_backbone_frozen_throughout_never_changes(tiny_gldv2: Path, tmp_path: Path, cache_features: bool) -> None:
    """freeze_backbone_epochs=-1: backbone weights and BatchNorm statistics stay as built, feature cache or not."""
    trainer = make_trainer(tiny_gldv2, tmp_path, [*BACKBONE, "train.freeze_backbone_epochs=-1", "train.epochs=2",
                                                  f"train.cache_features={str(cache_features).lower()}"])
    backbone, head = snapshot(trainer.model.backbone), snapshot(trainer.model.head)
    trainer.fit()
    last = torch.load(trainer.run.path / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"]
    assert same({k[len("backbone."):]: v for k, v in last.items() if k.startswith("backbone.")}, backbone)
    assert not same({k[len("head."):]: v for k, v in last.items() if k.startswith("head.")}, head)
    assert pd.read_csv(trainer.run.path / "history.csv")["backbone_frozen"].tolist() == [True, True]


# -- early stopping and the time budget ------------------------------------------------------------------
@pytest.mark.parametrize("patience, epochs_run", [(1, 2), (2, 3), (0, 4)])
def test_early_stopping_after_patience_epochs_without_improvement(
    tiny_gldv2: Path, tmp_path: Path, patience: int, epochs_run: int, caplog: pytest.LogCaptureFixture,
) -> None:
    """With lr 0 and frozen BatchNorm statistics the validation loss cannot improve after epoch 1: training stops
    after 1 + patience epochs (all 4 when patience is 0, i.e. off)."""
    trainer = make_trainer(tiny_gldv2, tmp_path, ["train.lr=0", "model.batchnorm_momentum=1.0", "train.epochs=4",
                                                  f"train.early_stopping_patience={patience}"])
    with caplog.at_level(logging.INFO, logger="landmarks.train.loop"):
        trainer.fit()
    history = pd.read_csv(trainer.run.path / "history.csv")
    assert history["epoch"].tolist() == list(range(1, epochs_run + 1))
    assert history["val_loss"].nunique() == 1  # nothing could improve
    assert trainer.best_epoch == 1 and trainer.epochs_without_improvement == epochs_run - 1
    stopped = f"early stopping: no improvement for {patience} epochs"
    assert (stopped in caplog.text) is (patience > 0)


@pytest.mark.parametrize("max_minutes, epochs_run", [(1e-6, 1), (None, 3)])
def test_time_budget_stops_after_the_epoch_that_spends_it(tiny_gldv2: Path, tmp_path: Path, max_minutes: float | None,
                                                          epochs_run: int, caplog: pytest.LogCaptureFixture) -> None:
    """train.max_minutes: a budget any epoch exceeds ends training after epoch 1; no budget runs every epoch."""
    trainer = make_trainer(tiny_gldv2, tmp_path, ["train.epochs=3", f"train.max_minutes={max_minutes}"])
    with caplog.at_level(logging.INFO, logger="landmarks.train.loop"):
        trainer.fit()
    assert len(pd.read_csv(trainer.run.path / "history.csv")) == epochs_run
    assert ("time budget of" in caplog.text) is (max_minutes is not None)
    assert (trainer.run.path / "checkpoints" / "best.pt").is_file()


# -- precise BatchNorm ---------------------------------------------------------------------------------
def batchnorm_input_statistics(model: nn.Module, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(mean, unbiased variance) per channel of each BatchNorm layer's input in a training-mode pass, dropout off."""
    probe = copy.deepcopy(model).train()
    for dropout in (m for m in probe.modules() if isinstance(m, nn.Dropout)):
        dropout.eval()
    seen: list[torch.Tensor] = []
    norms = [m for m in probe.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    hooks = [n.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach())) for n in norms]
    with torch.no_grad():
        probe(images)
    for hook in hooks:
        hook.remove()
    dims = lambda x: [0, 2, 3] if x.dim() == 4 else [0]  # noqa: E731
    return [(x.mean(dims(x)), x.var(dims(x), unbiased=True)) for x in seen]


def clean_training_images(trainer: Trainer) -> torch.Tensor:
    """Every training photo of the cache, unaugmented, as float NCHW in [0, 1]."""
    pixels = np.asarray(trainer.data.cache.images[np.sort(trainer.data.indices("train"))])
    return torch.from_numpy(pixels.copy()).permute(0, 3, 1, 2).float() / 255


def test_precise_batchnorm_statistics_are_those_of_the_clean_training_photos(tiny_gldv2: Path, tmp_path: Path) -> None:
    """recompute_batchnorm sets each BatchNorm's running mean/variance to the statistics of the unaugmented training
    batch (one batch of 64 holds all 36 photos), restores the momenta and leaves the model in eval mode."""
    trainer = make_trainer(tiny_gldv2, tmp_path, ["train.precise_bn_batches=1", "train.batch_size=64"])
    norms = [m for m in trainer.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 6  # five convolution blocks and the dense layer
    expected = batchnorm_input_statistics(trainer.model, clean_training_images(trainer))
    trainer.recompute_batchnorm()
    for norm, (mean, variance) in zip(norms, expected):
        assert torch.allclose(norm.running_mean, mean, rtol=1e-4, atol=1e-5)
        assert torch.allclose(norm.running_var, variance, rtol=1e-4, atol=1e-5)
        assert norm.momentum == pytest.approx(0.01)  # Keras' 0.99
    assert not trainer.model.training


@pytest.mark.parametrize("precise_bn_batches", [1, 0])
def test_fit_recomputes_batchnorm_after_each_epoch(tiny_gldv2: Path, tmp_path: Path, precise_bn_batches: int) -> None:
    """With train.precise_bn_batches the trained model's statistics match its own weights on the clean photos;
    without, they are the lagging moving averages and do not."""
    trainer = make_trainer(tiny_gldv2, tmp_path, [f"train.precise_bn_batches={precise_bn_batches}",
                                                  "train.batch_size=64", "train.epochs=1"])
    trainer.fit()
    expected = batchnorm_input_statistics(trainer.model, clean_training_images(trainer))
    norms = [m for m in trainer.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    matches = all(torch.allclose(n.running_mean, mean, rtol=1e-4, atol=1e-5) for n, (mean, _) in zip(norms, expected))
    assert matches is bool(precise_bn_batches)


def test_early_stopping_min_delta_counts_only_gains_above_its_share(tiny_gldv2: Path, tmp_path: Path) -> None:
    """train.early_stopping_min_delta=0.9: no epoch lowers the validation loss by 90 %, so training stops after
    1 + patience epochs although the loss falls."""
    trainer = make_trainer(tiny_gldv2, tmp_path, ["train.epochs=5", "train.early_stopping_patience=1",
                                                  "train.early_stopping_min_delta=0.9"])
    trainer.fit()
    history = pd.read_csv(trainer.run.path / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert trainer.best_epoch == 1


# -- precision, accumulation, warmup, EMA, mid-epoch resume ----------------------------------------------------
def _linear_pass(stepper_overrides: list[str], batches: list[tuple[torch.Tensor, torch.Tensor]],
                 lr: float = 0.1) -> nn.Linear:
    """A linear classifier after one fit_pass with plain SGD under the given train.* settings."""
    from landmarks.train.loop import Stepper, fit_pass

    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    train_cfg = load_config("seed-cnn", stepper_overrides).train
    stepper = Stepper(optimizer, "cpu", train_cfg, model=model)
    fit_pass(lambda x, _y: (x, model(x)), batches, nn.functional.cross_entropy, optimizer, stepper=stepper)
    return model


def test_accumulating_two_batches_is_one_step_over_both() -> None:
    torch.manual_seed(1)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    accumulated = _linear_pass(["train.accumulate=2"], [(x[:4], y[:4]), (x[4:], y[4:])])
    whole = _linear_pass([], [(x, y)])
    per_batch = _linear_pass([], [(x[:4], y[:4]), (x[4:], y[4:])])
    assert torch.allclose(accumulated.weight, whole.weight, atol=1e-6)
    assert not torch.allclose(per_batch.weight, whole.weight, atol=1e-4)


def test_warmup_scales_the_first_steps_lr_and_leaves_the_schedulers_lr() -> None:
    from landmarks.train.loop import Stepper, fit_pass

    weight = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    stepper = Stepper(optimizer, "cpu", load_config("seed-cnn", ["train.warmup_steps=4"]).train)
    moves = []
    for _ in range(6):  # loss = weight: the gradient is 1, a step moves the weight by -lr
        before = float(weight.detach())
        fit_pass(lambda x, _y: (x, weight * x), [(torch.ones(1, 1), torch.zeros(1))], lambda out, _y: out.sum(),
                 optimizer, stepper=stepper)
        moves.append(before - float(weight.detach()))
    assert moves == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert optimizer.param_groups[0]["lr"] == 1.0 and stepper.steps == 6


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_steps_train_in_fp32_weights(precision: str) -> None:
    torch.manual_seed(1)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    trained = _linear_pass([f"train.precision={precision}"], [(x, y)])
    fp32 = _linear_pass([], [(x, y)])
    assert trained.weight.dtype == torch.float32 and torch.isfinite(trained.weight).all()
    assert not torch.equal(trained.weight, nn.Linear(4, 3).weight)
    assert torch.allclose(trained.weight, fp32.weight, atol=2e-2)  # the same step, rounded


def test_a_bf16_partial_fc_epoch_trains_the_unfrozen_backbone(tiny_gldv2: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tiny_gldv2, tmp_path, [*BACKBONE, "train.epochs=1", "train.precision=bf16",
                                                  "model.arcface_sample_rate=0.5", "train.freeze_backbone_epochs=0"])
    before = snapshot(trainer.model.backbone)
    trainer.fit()
    history = pd.read_csv(trainer.run.path / "history.csv")
    assert np.isfinite(history["train_loss"]).all() and np.isfinite(history["val_loss"]).all()
    assert not same(before, snapshot(trainer.model.backbone))
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_ema_weights_are_the_ones_validated_and_kept(tiny_gldv2: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tiny_gldv2, tmp_path, [*BACKBONE, "train.epochs=1", "train.ema_decay=0.5"])
    trainer.fit()
    last = torch.load(trainer.run.path / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    best = torch.load(trainer.run.path / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    assert same(best["model"], snapshot(trainer.ema.module)) and same(snapshot(trainer.model), best["model"])
    assert not same(best["model"], last["model"])  # the raw weights moved on; the average lags behind them
    assert last["ema"] is not None and last["stepper"]["steps"] == 3  # 36 photos in batches of 16


class _Interrupted(Exception):
    pass


def _recorded_batches(trainer: Trainer) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (photos, labels) of every training forward of ``trainer.model``, as they come."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    trainer.model.register_forward_pre_hook(
        lambda module, args: seen.append((args[0].detach().clone(), args[1].clone())) if module.training else None)
    return seen


def test_a_mid_epoch_checkpoint_resumes_with_the_same_next_batch(tiny_gldv2: Path, tmp_path: Path) -> None:
    """An epoch interrupted after its 2nd batch (a checkpoint after every batch) continues with the 3rd: the same
    photos, labels and augmentation as without the interruption, and ends on the same weights."""
    overrides = [*BACKBONE, "train.epochs=1", "train.batch_size=8", "train.checkpoint_minutes=1e-9",
                 "augment.horizontal_flip=true", "augment.crop_scale_min=0.5", "train.freeze_backbone_epochs=0"]
    whole = make_trainer(tiny_gldv2, tmp_path / "whole", overrides)
    expected = _recorded_batches(whole)
    whole.fit()
    assert len(expected) == 5  # 36 photos in batches of 8

    cut = make_trainer(tiny_gldv2, tmp_path / "cut", overrides)
    original = cut._checkpoint_if_due

    def interrupt(batches: int, totals: tuple[float, int, int], seconds: float) -> None:
        original(batches, totals, seconds)
        if batches == 2:
            raise _Interrupted

    cut._checkpoint_if_due = interrupt  # type: ignore[method-assign]
    with pytest.raises(_Interrupted):
        cut.fit()
    state = cut.run.read_checkpoint("last")
    assert state["resume_point"]["batches"] == 2 and state["resume_point"]["epoch"] == 1

    resumed = make_trainer(tiny_gldv2, tmp_path / "resumed", overrides)
    resumed.run = cut.run
    resumed.restore(state)
    seen = _recorded_batches(resumed)
    resumed.fit()
    assert len(seen) == 3
    for (photos, labels), (want_photos, want_labels) in zip(seen, expected[2:]):
        assert torch.equal(labels, want_labels) and torch.equal(photos, want_photos)
    assert same(snapshot(resumed.model), snapshot(whole.model))
    history = pd.read_csv(cut.run.path / "history.csv")
    assert history["train_loss"].iloc[0] == pytest.approx(pd.read_csv(whole.run.path / "history.csv")["train_loss"].iloc[0])
