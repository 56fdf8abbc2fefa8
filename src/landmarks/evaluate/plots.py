"""Plots a person would rather look at than read: curves, augmentations, prediction collages, confidences."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

GREEN, RED = "#1a7f37", "#cf222e"


def _save(figure: plt.Figure, out_path: Path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(out_path, dpi=120)
    plt.close(figure)
    return out_path


def plot_curves(history: pd.DataFrame, out_path: Path) -> Path:
    """Training and validation accuracy and loss per epoch, the best validation epoch marked."""
    figure, (acc_axis, loss_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    epochs = history["epoch"] if "epoch" in history else np.arange(1, len(history) + 1)
    for axis, metric, title in ((acc_axis, "accuracy", "Accuracy"), (loss_axis, "loss", "Loss")):
        if f"train_{metric}" in history:
            axis.plot(epochs, history[f"train_{metric}"], "o-", label="training", color="#0969da", markersize=3)
        if f"val_{metric}" in history and history[f"val_{metric}"].notna().any():
            axis.plot(epochs, history[f"val_{metric}"], "s-", label="validation", color="#bf8700", markersize=3)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
    if "val_loss" in history and history["val_loss"].notna().any():
        best = int(np.nanargmin(history["val_loss"].to_numpy()))
        for axis in (acc_axis, loss_axis):
            axis.axvline(epochs.iloc[best] if hasattr(epochs, "iloc") else epochs[best], ls="--", color="grey",
                         label=f"best validation loss (epoch {best + 1})")
    acc_axis.set_ylim(0, 1.02)
    for axis in (acc_axis, loss_axis):
        if axis.lines:
            axis.legend(loc="best", fontsize=8)
    return _save(figure, out_path)


def plot_augmentations(raw: Sequence[np.ndarray], augmented: Sequence[Sequence[np.ndarray]], out_path: Path,
                       titles: Sequence[str] | None = None) -> Path:
    """One row per photo: the original beside its augmented versions."""
    rows = len(raw)
    columns = 1 + max((len(a) for a in augmented), default=0)
    figure, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 1.9 * rows + 0.3), squeeze=False)
    for row in range(rows):
        images = [raw[row], *augmented[row]]
        for column in range(columns):
            axis = axes[row][column]
            axis.axis("off")
            if column < len(images):
                axis.imshow(images[column])
            if column == 0:
                axis.set_title("original" + (f"\n{titles[row]}" if titles else ""), fontsize=8)
            elif row == 0:
                axis.set_title(f"augmented {column}", fontsize=8)
    figure.suptitle("Training augmentation", fontsize=11)
    return _save(figure, out_path)


def plot_predictions(images: Sequence[np.ndarray], true_names: Sequence[str], predicted_names: Sequence[str],
                     confidences: Sequence[float], out_path: Path, columns: int = 4) -> Path:
    """A collage of photos titled with the prediction and its confidence; right in green, wrong in red."""
    count = len(images)
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 3.3 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for i in range(count):
        axis = axes.flat[i]
        correct = predicted_names[i] == true_names[i]
        colour = GREEN if correct else RED
        axis.imshow(images[i])
        axis.axis("on")
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(4)
        axis.set_title(f"{'✓' if correct else '✗'} {predicted_names[i]} {confidences[i]:.2f}", color=colour, fontsize=9)
        axis.set_xlabel(f"true: {true_names[i]}", fontsize=8)
    right = sum(p == t for p, t in zip(predicted_names, true_names))
    figure.suptitle(f"Predictions: {right} of {count} right", fontsize=11)
    return _save(figure, out_path)


def plot_confidence_histogram(confidences_landmark: Sequence[float], confidences_non_landmark: Sequence[float],
                              out_path: Path) -> Path:
    """Top-1 confidence of queries with and without a known landmark: how well non-landmarks are pushed down."""
    figure, axis = plt.subplots(figsize=(6.5, 4))
    bins = np.linspace(0, 1, 26)
    axis.hist(confidences_landmark, bins=bins, alpha=0.6, label=f"known landmark ({len(confidences_landmark)})", color=GREEN)
    axis.hist(confidences_non_landmark, bins=bins, alpha=0.6, label=f"no known landmark ({len(confidences_non_landmark)})",
              color=RED)
    axis.set_xlabel("confidence of the top prediction")
    axis.set_ylabel("queries")
    axis.set_title("Confidence: landmark vs non-landmark queries")
    axis.grid(alpha=0.3)
    axis.legend()
    return _save(figure, out_path)
