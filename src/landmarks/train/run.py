"""The training pipeline: prepare the data -> fit -> save the model -> finish the run folder."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from landmarks.config import Config
from landmarks.data.augment import build_train_transform
from landmarks.data.prepared import PreparedData, labels_table, prepare_data, split_table
from landmarks.errors import LandmarksError
from landmarks.evaluate import plots
from landmarks.models.seed_cnn import keras_parameter_count
from landmarks.run_folder import RunFolder
from landmarks.train import distributed
from landmarks.train.finish import finish_run
from landmarks.train.loop import Trainer
from landmarks.train.pooled import has_arcface_neck
from landmarks.utils import seed_everything

log = logging.getLogger(__name__)


def train(config: Config, data_dir: Path, run_dir: Path, resume: bool = False) -> Path:
    """Train a model and write the complete run folder; returns the run folder."""
    run = RunFolder(run_dir)
    if resume:
        if not run.checkpoint("last").exists():
            raise LandmarksError(f"Nothing to resume in {run.path}: checkpoints/last.pt is missing.")
        config = run.read_config()
    elif run.holds_a_run:
        raise LandmarksError(f"Run folder {run.path} already holds a run; pass --resume to continue it or choose "
                             "another --out.")
    seed_everything(config.train.seed)
    distributed.setup()
    with distributed.main_first():
        data = prepare_data(config, Path(data_dir))
    trainer = Trainer(config, data, run)  # first: a model the config cannot build leaves no run folder behind
    if distributed.is_main() and not resume:
        run.write_config(config)
        run.write_table(RunFolder.LABELS, labels_table(data))
        run.write_table(RunFolder.SPLIT, split_table(data))
    parameters = f"{sum(p.numel() for p in trainer.model.parameters()):,} parameters"
    if config.model.architecture == "seed_cnn":
        parameters += f" ({keras_parameter_count(trainer.model):,} as Keras counts them, BatchNorm statistics included)"
    log.info(
        "%s: %d classes, %d/%d/%d train/val/test photos, %s",
        config.model.architecture, data.num_classes, len(data.indices("train")), len(data.indices("val")),
        len(data.indices("test")), parameters,
    )
    if resume:
        trainer.restore(run.read_checkpoint("last"))
        log.info("resuming %s at epoch %d", run.path, trainer.start_epoch)
    if distributed.is_main() and not resume:
        plot_augmentation_grid(config, data, run.plot("augmentations.png"))
    trainer.fit()
    if distributed.is_main():
        run.save_model(trainer.model, config.model)
        views = trainer.frozen_views() if has_arcface_neck(trainer.model) else None  # no second backbone pass
        finish_run(run, config, data, trainer.model, views)
    distributed.cleanup()
    return run.path


def plot_augmentation_grid(config: Config, data: PreparedData, out: Path, photos: int = 6, views: int = 5) -> None:
    """plots/augmentations.png: raw training photos beside augmented versions of them."""
    rng = np.random.default_rng(config.train.seed)
    indices = data.indices("train")
    chosen = rng.choice(indices, size=min(photos, len(indices)), replace=False)
    transform = build_train_transform(config.augment, config.data.image_size_px)
    raw, augmented, titles = [], [], []
    for index in chosen:
        image = np.asarray(data.cache.images[index])
        tensor = torch.from_numpy(image.copy()).permute(2, 0, 1)
        raw.append(image)
        augmented.append([transform(tensor).permute(1, 2, 0).numpy() for _ in range(views)])
        titles.append(data.names[int(data.frame["landmark_id"].iat[index])])
    plots.plot_augmentations(raw, augmented, out, titles)
