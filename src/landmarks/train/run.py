"""The training pipeline: prepare the data -> fit -> save the model -> finish the run folder."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from landmarks.config import Config, dump_config, load_run_config
from landmarks.data.prepared import prepare_data, write_labels
from landmarks.errors import LandmarksError
from landmarks.evaluate.report import finish_run, plot_augmentation_grid
from landmarks.models.registry import save_model
from landmarks.models.seed_cnn import keras_parameter_count
from landmarks.train import distributed
from landmarks.train.loop import Trainer
from landmarks.utils import atomic_path, seed_everything

log = logging.getLogger(__name__)


def train(config: Config, data_dir: Path, run_dir: Path, resume: bool = False) -> Path:
    """Train a model and write the complete run folder; returns the run folder."""
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / "checkpoints" / "last.pt").exists():
            raise LandmarksError(f"Nothing to resume in {run_dir}: checkpoints/last.pt is missing.")
        config = load_run_config(run_dir)
    elif (run_dir / "model.json").exists() or (run_dir / "checkpoints" / "last.pt").exists():
        raise LandmarksError(f"Run folder {run_dir} already holds a run; pass --resume to continue it or choose another --out.")
    seed_everything(config.train.seed)
    distributed.setup()
    with distributed.main_first():
        data = prepare_data(config, Path(data_dir))
    trainer = Trainer(config, data, run_dir)  # first: a model the config cannot build leaves no run folder behind
    if distributed.is_main():
        (run_dir / "plots").mkdir(parents=True, exist_ok=True)
        dump_config(config, run_dir / "config.yaml")
        write_labels(data, run_dir)
        with atomic_path(run_dir / "split.csv") as tmp:
            data.frame[["id", "path", "landmark_id", "split"]].assign(valid=data.cache.valid).to_csv(tmp, index=False)
    parameters = f"{sum(p.numel() for p in trainer.model.parameters()):,} parameters"
    if config.model.architecture == "seed_cnn":
        parameters += f" ({keras_parameter_count(trainer.model):,} as Keras counts them, BatchNorm statistics included)"
    log.info(
        "%s: %d classes, %d/%d/%d train/val/test photos, %s",
        config.model.architecture, data.num_classes, len(data.indices("train")), len(data.indices("val")),
        len(data.indices("test")), parameters,
    )
    if resume:
        trainer.restore(torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False))
        log.info("resuming %s at epoch %d", run_dir, trainer.start_epoch)
    if distributed.is_main() and not resume:
        plot_augmentation_grid(config, data, run_dir / "plots" / "augmentations.png")
    trainer.fit()
    if distributed.is_main():
        save_model(trainer.model, run_dir, config.model)
        finish_run(run_dir, config, data, trainer.model)
    distributed.cleanup()
    return run_dir
