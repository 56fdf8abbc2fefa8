"""The Trainer: epochs, validation, early stopping, precise BatchNorm, atomic checkpoints and resume."""

from __future__ import annotations

import contextlib
import logging
import itertools
import math
import time
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from landmarks.config import Config, TrainConfig
from landmarks.errors import ConfigError
from landmarks.data.augment import CachedImageDataset, build_train_transform, class_balanced_sampler, class_weights
from landmarks.data.prepared import PreparedData
from landmarks.data.shards import ShardStream, decoded_on_gpu, resume_roles
from landmarks.models.landmark_model import LandmarkModel
from landmarks.models.meta import model_meta
from landmarks.models.registry import build_model
from landmarks.train import distributed
from landmarks.train.features import PHOTO_AND_MIRROR, SplitViews, backbone_runner, backbone_views, flips_only
from landmarks.run_folder import RunFolder
from landmarks.utils import progress

log = logging.getLogger(__name__)


def make_optimizer(train: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """``train.optimizer`` over parameter groups (each a dict with ``params`` and its ``lr``)."""
    groups = [g for g in groups if g["params"]]
    # fused kernels when every parameter is on a GPU (one launch per step instead of one per tensor)
    fused = {"fused": True} if groups and all(p.is_cuda for g in groups for p in g["params"]) else {}
    if train.optimizer == "adam":
        return torch.optim.Adam(groups, lr=train.lr, eps=1e-7, weight_decay=train.weight_decay, **fused)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=train.lr, weight_decay=train.weight_decay, **fused)
    return torch.optim.SGD(groups, lr=train.lr, momentum=0.9, weight_decay=train.weight_decay, nesterov=True)


def make_scheduler(train: TrainConfig, optimizer: torch.optim.Optimizer,
                   epochs: int | None = None) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``train.scheduler``, stepped once per epoch over ``epochs`` (default ``train.epochs``)."""
    if train.scheduler != "cosine":
        return None
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs or train.epochs))


def model_parameter_groups(train: TrainConfig, model: LandmarkModel) -> list[dict]:
    """The trainable backbone (at ``lr * backbone_lr_scale``) and head parameters of a model."""
    return [
        {"params": [p for p in model.backbone_parameters() if p.requires_grad], "lr": train.lr * train.backbone_lr_scale},
        {"params": [p for p in model.head_parameters() if p.requires_grad], "lr": train.lr},
    ]


def head_batches(inputs: torch.Tensor, labels: torch.Tensor, train: TrainConfig, shuffle: bool,
                 seed: int) -> DataLoader:
    """Batches of features already computed (cached feature maps, pooled features): shuffled with ``seed`` when
    ``shuffle``, a last batch of one photo dropped (BatchNorm cannot train on it)."""
    return dataset_batches(TensorDataset(inputs, labels), train, shuffle, seed)


def dataset_batches(dataset: Dataset, train: TrainConfig, shuffle: bool, seed: int) -> DataLoader:
    """``head_batches`` over a dataset of (features, label) pairs."""
    return DataLoader(dataset, batch_size=train.batch_size, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed),
                      drop_last=shuffle and _last_batch_of_one(len(dataset), train.batch_size))


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Stepper:
    """How a pass runs its batches: autocast in ``train.precision`` (a gradient scaler for fp16), photos in
    channels_last, and, in training, the optimiser step every ``train.accumulate`` batches with a linear warmup over
    its first ``train.warmup_steps`` steps and an update of the weights' EMA after each step.

    The warmup scales the lr of a step only (the schedulers' own lr is put back after it), so it composes with any
    per-epoch schedule. ``steps`` counts this optimiser's steps (a checkpoint keeps it, with the scaler's state).
    """

    def __init__(self, optimizer: torch.optim.Optimizer | None, device: torch.device | str = "cpu",
                 train: TrainConfig | None = None, ema: torch.optim.swa_utils.AveragedModel | None = None,
                 model: torch.nn.Module | None = None):
        train = train or TrainConfig()
        self.optimizer, self.device, self.ema, self.model = optimizer, torch.device(device), ema, model
        self.dtype = PRECISIONS[train.precision]
        self.channels_last = train.channels_last
        self.accumulate, self.warmup_steps = train.accumulate, train.warmup_steps
        self.scaler = torch.amp.GradScaler(self.device.type) if train.precision == "fp16" else None
        self.steps, self.pending = 0, 0

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        inputs = inputs.to(self.device, non_blocking=True)
        if inputs.dim() == 4 and self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs

    def no_sync(self) -> contextlib.AbstractContextManager:
        """DDP: no gradient all-reduce on the batches before the one that steps."""
        if self.pending + 1 < self.accumulate and hasattr(self.model, "no_sync"):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss = loss / self.accumulate
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        self.pending += 1
        if self.pending >= self.accumulate:
            self.step()

    def step(self) -> None:
        """The optimiser step over the gradients accumulated so far (none pending: nothing)."""
        if not self.pending or self.optimizer is None:
            return
        factor = min(1.0, (self.steps + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        scheduled = [group["lr"] for group in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["lr"] *= factor
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        for group, lr in zip(self.optimizer.param_groups, scheduled):
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        self.pending = 0
        self.steps += 1
        if self.ema is not None and self.model is not None:
            self.ema.update_parameters(getattr(self.model, "module", self.model))

    def state_dict(self) -> dict:
        return {"steps": self.steps, "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state.get("steps", 0))
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def fit_pass(forward: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]], batches: Iterable,
             loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer | None,
             predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
             device: torch.device | None = None, *, stepper: Stepper | None = None,
             totals: tuple[float, int, int] = (0.0, 0, 0),
             after_batch: Callable[[tuple[float, int, int]], None] | None = None) -> tuple[float, int, int]:
    """One pass over batches of (inputs, targets): ``forward(inputs, targets) -> (embedding, logits)``, its loss,
    and an optimiser step per batch when ``optimizer`` is given (no gradients otherwise). The one training step of
    the project: the Trainer's epochs and the calibration models both run it. Returns (summed loss, right answers
    by ``predict(embedding, logits)`` (default: argmax of the logits), photos).

    ``stepper`` says how (precision, accumulation, warmup, EMA; default: fp32, a step per batch); ``totals`` are
    the sums a resumed pass starts from, and ``after_batch(totals)`` is called after each batch (checkpoints)."""
    if stepper is None:
        stepper = Stepper(optimizer, device or "cpu")
    total_loss, correct, count = totals
    training = optimizer is not None
    if training and not stepper.pending:
        optimizer.zero_grad(set_to_none=True)
    for inputs, targets in batches:
        inputs, targets = stepper.inputs(inputs), targets.to(stepper.device)
        with torch.set_grad_enabled(training), (stepper.no_sync() if training else contextlib.nullcontext()):
            with stepper.autocast():
                embedding, logits = forward(inputs, targets)
                loss = loss_of(logits, targets)
            if training:
                stepper.backward(loss)
        with torch.no_grad():
            predicted = predict(embedding, logits) if predict is not None else logits.argmax(1)
        total_loss += float(loss.detach()) * len(targets)
        correct += int((predicted == targets).sum())
        count += len(targets)
        if hasattr(batches, "set_postfix"):
            batches.set_postfix(loss=f"{total_loss / count:.3f}", acc=f"{correct / count:.3f}")
        if after_batch is not None:
            after_batch((total_loss, correct, count))
    if training:
        stepper.step()  # what the last, incomplete accumulation gathered
    return total_loss, correct, count


class _Sized:
    """An iterable with a known length (a progress bar's total)."""

    def __init__(self, iterable: Iterable, length: int):
        self.iterable, self.length = iterable, length

    def __iter__(self):
        return iter(self.iterable)

    def __len__(self) -> int:
        return self.length


def set_backbone_trainable(model: LandmarkModel, trainable: bool) -> None:
    for parameter in model.backbone_parameters():
        parameter.requires_grad_(trainable)


def _last_batch_of_one(count: int, batch_size: int) -> bool:
    """True when an epoch would end on a batch of one photo, which BatchNorm cannot train on (it is dropped)."""
    return count > batch_size and count % batch_size == 1


class Trainer:
    """Runs epochs over a prepared dataset and keeps the run folder up to date."""

    def __init__(self, config: Config, data: PreparedData, run: RunFolder):
        self.config = config
        self.data = data
        self.run = run
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if data.streamed and config.train.oversample:
            raise ConfigError("train.oversample draws photos at random, which tar shards streamed in order cannot "
                              "give: set train.oversample=false or extract the shards.")
        train_labels = data.frame["class_index"].to_numpy()[data.indices("train")]
        self.class_counts = np.bincount(train_labels, minlength=data.num_classes)
        self.model = build_model(config.model, data.num_classes, config.data.image_size_px, self.class_counts)
        self.model = self.model.to(self.device, memory_format=(
            torch.channels_last if config.train.channels_last else torch.contiguous_format))  # faster convolutions
        self.loss_weights = (
            class_weights(train_labels, data.num_classes).float().to(self.device) if config.train.class_weighting else None
        )
        self.history: list[dict] = []
        self.start_epoch = 1
        self.best_value = math.inf
        self.best_epoch = 0
        self.epochs_without_improvement = 0
        self.frozen = config.train.freeze_backbone_epochs != 0
        self.feature_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.views: dict[str, SplitViews] = {}  # the one pass over photo and mirror image (see frozen_views)
        set_backbone_trainable(self.model, not self.frozen)
        self.ema = (torch.optim.swa_utils.AveragedModel(
            self.model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.train.ema_decay), use_buffers=True)
            if config.train.ema_decay else None)
        self.resume_point: dict | None = None  # a mid-epoch checkpoint's place: batches done, their sums
        self._last_saved = time.monotonic()
        self._new_optimizer()

    def _new_optimizer(self, scheduled_epochs: int | None = None) -> None:
        """Optimiser, scheduler and stepper for the parameters that train now, and the (DDP, compiled) model."""
        cfg = self.config.train
        self.optimizer = make_optimizer(cfg, model_parameter_groups(cfg, self.model))
        self.scheduler = make_scheduler(cfg, self.optimizer, scheduled_epochs)
        self.ddp_model = distributed.wrap(self.model)
        self.train_model = torch.compile(self.ddp_model) if cfg.compile else self.ddp_model
        self.stepper = Stepper(self.optimizer, self.device, cfg, self.ema, self.ddp_model)

    @property
    def evaluated(self) -> LandmarkModel:
        """The weights validated and kept: the EMA's when ``train.ema_decay`` is set, else the model's."""
        return self.ema.module if self.ema is not None else self.model

    # -- data --------------------------------------------------------------------------------
    def loader(self, split: str, train: bool, skip: int = 0) -> DataLoader:
        """The photos of a split in batches (training: shuffled, augmented), the first ``skip`` batches left out
        (a resumed epoch)."""
        cfg = self.config
        indices = self.data.indices(split)
        labels = self.data.frame["class_index"].to_numpy()[indices]
        transform = build_train_transform(cfg.augment, cfg.data.image_size_px) if train else None
        if train and self.data.streamed:
            return self._stream(indices, labels, transform, skip)
        dataset = CachedImageDataset(self.data.cache, indices, labels, transform)
        sampler: torch.utils.data.Sampler
        if train and cfg.train.oversample:
            sampler = class_balanced_sampler(labels, seed=cfg.train.seed)
        else:  # one permutation per epoch, whatever the number of processes: rank r of N takes every N-th photo of it
            sampler = torch.utils.data.distributed.DistributedSampler(
                dataset, num_replicas=distributed.world_size(), rank=distributed.rank(), shuffle=train, seed=cfg.train.seed)
            sampler.set_epoch(len(self.history))
        batches = list(torch.utils.data.BatchSampler(
            sampler, cfg.train.batch_size, drop_last=train and _last_batch_of_one(len(sampler), cfg.train.batch_size)))
        return DataLoader(
            dataset,
            batch_sampler=batches[skip:],
            num_workers=cfg.train.workers,
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg.train.seed + len(self.history)),  # augmentation's randomness
        )

    def _stream(self, indices: np.ndarray, labels: np.ndarray, transform: Callable | None, skip: int) -> Iterable:
        """The training photos streamed from their tar shards (each rank and worker its own), ``skip`` batches on.
        Under DDP every rank stops at the number of batches the rank with the fewest has (the shards differ)."""
        cfg = self.config
        ids = self.data.frame["id"].astype(str).to_numpy()[indices]
        workers = max(1, cfg.train.workers)

        on_gpu = cfg.data.gpu_decode and self.device.type == "cuda"

        def stream(rank: int) -> ShardStream:
            return ShardStream(self.data.shards, dict(zip(ids, labels.tolist())), cfg.data.image_size_px,
                               cfg.train.batch_size, len(self.history), cfg.train.seed, workers, rank,
                               distributed.world_size(), cfg.data.shuffle_buffer, None if on_gpu else transform,
                               raw=on_gpu)

        mine = stream(distributed.rank())
        per_worker = mine.batches_per_worker()
        batches = min(sum(stream(r).batches_per_worker()) for r in range(distributed.world_size()))
        mine.roles, mine.skips = resume_roles(per_worker, skip)
        loader = DataLoader(mine, batch_size=None, num_workers=len(mine.roles) if cfg.train.workers else 0,
                            pin_memory=self.device.type == "cuda")
        epoch: Iterable = itertools.islice(loader, max(0, batches - skip))
        if on_gpu:
            epoch = decoded_on_gpu(epoch, cfg.data.image_size_px, self.device, transform)
        return _Sized(epoch, max(0, batches - skip))

    def _one_pass(self) -> bool:
        """Whether the frozen backbone's features come from one pass over every photo and its mirror image
        (``landmarks.train.features``): the augmentation is at most a horizontal flip, one process."""
        cfg = self.config
        return (self.frozen and cfg.train.cache_features and distributed.world_size() == 1
                and flips_only(cfg.augment))

    def frozen_views(self) -> dict[str, SplitViews] | None:
        """Each split's photos and mirror images through the frozen backbone, computed on first use in one pass
        (the held-out split too when the backbone stays frozen for good, for finishing the run); None when the
        features do not come from one pass, or the backbone was trained."""
        if not self._one_pass():
            return None
        if not self.views:
            splits = ("train", "val", "test") if self.config.train.freeze_backbone_epochs < 0 else ("train", "val")
            classes = self.data.frame["class_index"].to_numpy()
            started = time.monotonic()
            runner = backbone_runner(self.model, self.config.data.image_size_px,
                                     self.config.train.frozen_backbone_runtime, self.device)
            for split in splits:
                positions = self.data.indices(split)
                self.views[split] = backbone_views(self.model, self.data.cache, positions, classes[positions],
                                                   PHOTO_AND_MIRROR, desc=f"backbone {split}", runner=runner)
            log.info("backbone pass over %d photos and their mirror images: %.1fs",
                     sum(len(v.labels) for v in self.views.values()), time.monotonic() - started)
        return self.views if self.config.train.freeze_backbone_epochs < 0 else None

    def _features_of(self, split: str, train: bool) -> Dataset:
        """Backbone feature maps of a split (frozen backbone) as (feature map, class index) pairs: from the one
        pass over photo and mirror image (a view drawn per photo and epoch when training flips photos), or else
        computed once per augmented view."""
        if self._one_pass():
            self.frozen_views()
            flip = train and self.config.augment.enabled and self.config.augment.horizontal_flip
            return self.views[split].epoch(self.config.train.seed + len(self.history) if flip else None)
        key = f"{split}:{len(self.history) % max(1, self.config.train.feature_views) if train else 0}"
        if key not in self.feature_cache:
            features, labels = [], []
            self.model.eval()
            with torch.inference_mode(), self.stepper.autocast():
                for images, targets in progress(self.loader(split, train), desc=f"features {key}"):
                    features.append(self.model.features(self.stepper.inputs(images)).half().cpu())
                    labels.append(targets)
            self.feature_cache[key] = (torch.cat(features), torch.cat(labels))
        return TensorDataset(*self.feature_cache[key])

    # -- epochs ------------------------------------------------------------------------------
    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = self.loss_weights
        arcface = getattr(self.model.head, "arcface", None)
        if arcface is not None and arcface.sampled is not None:  # Partial FC: logits of the step's classes only
            weight = weight[arcface.sampled] if weight is not None else None
            targets = arcface.targets_of(targets)
        loss = F.cross_entropy(logits.float(), targets, weight=weight, label_smoothing=self.config.train.label_smoothing)
        return loss + self.model.regularization_loss()

    def run_epoch(self, split: str, train: bool) -> dict[str, float]:
        """One pass over a split; returns mean loss and accuracy (logits without margin). A training pass resumed
        from a mid-epoch checkpoint starts at the batch after the last one it had done."""
        use_cached = self.frozen and self.config.train.cache_features and distributed.world_size() == 1
        model = self.train_model if train else self.evaluated
        resume = self.resume_point if train else None
        self.resume_point = None
        skip = resume["batches"] if resume else 0
        if use_cached:
            loader: Iterable = dataset_batches(self._features_of(split, train), self.config.train, train,
                                               self.config.train.seed + len(self.history))
            loader = itertools.islice(loader, skip, None)  # feature batches cost nothing to skip
            head = model if not train else self.model
            forward = lambda inputs, targets: head.head_from_features(inputs.float(), targets)  # noqa: E731
        else:
            loader = self.loader(split, train, skip)
            forward = model
        self.model.train(train)
        self.evaluated.train(train)
        if self.frozen:
            self.model.backbone.eval()  # frozen BatchNorm statistics stay ImageNet's
        started = time.monotonic() - (resume["seconds"] if resume else 0.0)
        evaluated = self.model if train else self.evaluated
        # logits of ArcFace heads carry the training margin: accuracy from plain ones
        predict = ((lambda embedding, _logits: evaluated.plain_logits(embedding).argmax(1))
                   if self.model.logit_scale is not None else None)
        done = [skip]

        def after_batch(totals: tuple[float, int, int]) -> None:
            done[0] += 1
            if train:
                self._checkpoint_if_due(done[0], totals, time.monotonic() - started)

        total_loss, correct, count = fit_pass(
            forward, progress(loader, desc=f"epoch {len(self.history) + 1} {split}"), self._loss,
            self.optimizer if train else None, predict, self.device, stepper=self.stepper,
            totals=tuple(resume["totals"]) if resume else (0.0, 0, 0), after_batch=after_batch)
        total_loss, correct, count = distributed.sum_scalars(total_loss, correct, count)
        return {"loss": total_loss / max(1, count), "accuracy": correct / max(1, count), "images": count,
                "seconds": time.monotonic() - started}

    def _checkpoint_if_due(self, batches: int, totals: tuple[float, int, int], seconds: float) -> None:
        """Every ``train.checkpoint_minutes``: last.pt with the place in the epoch, after an optimiser step."""
        minutes = self.config.train.checkpoint_minutes
        if not minutes:
            return
        due = self.stepper.pending == 0 and time.monotonic() - self._last_saved >= minutes * 60
        if not distributed.any_rank(due):
            return
        if distributed.is_main():
            point = {"epoch": len(self.history) + 1, "batches": batches, "totals": list(totals), "seconds": seconds}
            self.run.save_checkpoint({**self.checkpoint(), "resume_point": point}, "last")
            log.debug("checkpoint in epoch %d after %d batches", point["epoch"], batches)
        self._last_saved = time.monotonic()

    @torch.no_grad()
    def recompute_batchnorm(self) -> None:
        """Precise BatchNorm: running statistics recomputed for the current weights from clean training photos.

        With few steps per epoch (e.g. 1,000 photos in batches of 256) the moving averages lag far behind the
        weights, and inference normalises with statistics of a network that no longer exists.
        """
        norms = [m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not norms or self.frozen:
            return
        momenta = [m.momentum for m in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average over the batches below
        self.model.train()
        for dropout in (m for m in self.model.modules() if isinstance(m, torch.nn.Dropout)):
            dropout.eval()
        indices = self.data.indices("train")
        rng = np.random.default_rng(self.config.train.seed + len(self.history))
        chosen = rng.permutation(indices)[: self.config.train.precise_bn_batches * self.config.train.batch_size]
        dataset = CachedImageDataset(self.data.cache, np.sort(chosen), np.zeros(len(chosen), dtype=np.int64))
        for images, _ in DataLoader(dataset, batch_size=self.config.train.batch_size, num_workers=0):
            self.model(images.to(self.device).contiguous(memory_format=torch.channels_last))
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        self.model.eval()

    def checkpoint(self) -> dict:
        return {
            "meta": model_meta(self.model, self.config.model),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "history": self.history,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "epochs_without_improvement": self.epochs_without_improvement,
            "frozen": self.frozen,
            "torch_rng": torch.get_rng_state(),
            "stepper": self.stepper.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "resume_point": None,  # at the end of an epoch
        }

    def restore(self, state: dict) -> None:
        self.frozen = state["frozen"]
        set_backbone_trainable(self.model, not self.frozen)
        self._new_optimizer()
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.stepper.load_state_dict(state.get("stepper") or {})
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        self.history = state["history"]
        self.best_value = state["best_value"]
        self.best_epoch = state["best_epoch"]
        self.epochs_without_improvement = state["epochs_without_improvement"]
        torch.set_rng_state(state["torch_rng"])
        self.resume_point = state.get("resume_point")
        self.start_epoch = self.resume_point["epoch"] if self.resume_point else len(self.history) + 1

    def _unfreeze_if_due(self, epoch: int) -> None:
        freeze = self.config.train.freeze_backbone_epochs
        if self.frozen and freeze > 0 and epoch > freeze:
            log.info("epoch %d: unfreezing the backbone", epoch)
            self.frozen = False
            self.feature_cache.clear()
            self.views.clear()
            set_backbone_trainable(self.model, True)
            self._new_optimizer(self.config.train.epochs - freeze)

    def fit(self) -> None:
        """Train until the epoch budget, early stopping or the time budget ends it."""
        cfg = self.config.train
        has_val = len(self.data.indices("val")) > 0
        started = time.monotonic() - sum(row["seconds"] for row in self.history) - (
            self.resume_point["seconds"] if self.resume_point else 0.0)
        self._last_saved = time.monotonic()
        for epoch in range(self.start_epoch, cfg.epochs + 1):
            self._unfreeze_if_due(epoch)
            tick = time.monotonic() - (self.resume_point["seconds"] if self.resume_point else 0.0)
            train_stats = self.run_epoch("train", train=True)
            if cfg.precise_bn_batches:
                self.recompute_batchnorm()
            val_stats = self.run_epoch("val", train=False) if has_val else {"loss": math.nan, "accuracy": math.nan}
            if self.scheduler:
                self.scheduler.step()
            seconds = time.monotonic() - tick
            row = {
                "epoch": epoch,
                "train_loss": train_stats["loss"],
                "train_accuracy": train_stats["accuracy"],
                "val_loss": val_stats["loss"],
                "val_accuracy": val_stats["accuracy"],
                "lr": self.optimizer.param_groups[-1]["lr"],
                "seconds": seconds,
                "train_seconds": train_stats["seconds"],
                "images_per_second": train_stats["images"] / train_stats["seconds"],
                "backbone_frozen": self.frozen,
            }
            self.history.append(row)
            monitored = self._monitored(row, has_val)
            margin = cfg.early_stopping_min_delta * abs(self.best_value) if math.isfinite(self.best_value) else 0.0
            improved = monitored < self.best_value - margin
            if improved:
                self.best_value, self.best_epoch, self.epochs_without_improvement = monitored, epoch, 0
            else:
                self.epochs_without_improvement += 1
            if distributed.is_main():
                if improved:
                    self.run.save_checkpoint({"meta": model_meta(self.model, self.config.model),
                                              "model": self.evaluated.state_dict()}, "best")
                self.run.save_checkpoint(self.checkpoint(), "last")
                self.run.write_table(RunFolder.HISTORY, pd.DataFrame(self.history))
            log.info(
                "epoch %d/%d  loss %.4f  acc %.3f  val_loss %.4f  val_acc %.3f  %.1fs (%.0f img/s)%s",
                epoch, cfg.epochs, row["train_loss"], row["train_accuracy"], row["val_loss"], row["val_accuracy"],
                seconds, row["images_per_second"], "  *" if improved else "",
            )
            if cfg.early_stopping_patience and self.epochs_without_improvement >= cfg.early_stopping_patience:
                log.info("early stopping: no improvement for %d epochs", cfg.early_stopping_patience)
                break
            out_of_time = bool(cfg.max_minutes) and (time.monotonic() - started) / 60 >= cfg.max_minutes
            if distributed.any_rank(out_of_time):
                log.info("time budget of %.1f minutes reached", cfg.max_minutes)
                break
        if not self.history and distributed.is_main():  # nothing to train (epochs 0): an empty history
            self.run.write_table(RunFolder.HISTORY, pd.DataFrame(columns=[
                "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds", "train_seconds",
                "images_per_second", "backbone_frozen"]))
        best = self.run.checkpoint("best")
        if best.exists():
            self.model.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["model"])

    def _monitored(self, row: dict, has_val: bool) -> float:
        if not has_val:
            return row["train_loss"]
        if self.config.train.monitor == "val_accuracy":
            return -row["val_accuracy"]
        return row["val_loss"]
