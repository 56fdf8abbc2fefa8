"""Plots a person would rather look at than read: curves, augmentations, prediction collages, confidences.

Every function draws one figure with matplotlib's Agg backend (no display needed), writes it as a PNG
(parent folders created), closes it and returns the path.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from landmarks.data.catalog import NO_LANDMARK_NAME  # noqa: E402

DPI = 120
GREEN, RED = "#1a7f37", "#cf222e"
TRAIN_COLOUR, VAL_COLOUR, BEST_COLOUR = "#0969da", "#bf5700", "#57606a"


def _save(figure: plt.Figure, out_path: Path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        figure.tight_layout()
        figure.savefig(out_path, dpi=DPI)
    finally:
        plt.close(figure)
    return out_path


def _short(text: str, width: int) -> str:
    """``text`` on at most two lines of ``width`` characters, cut with an ellipsis past that."""
    text = str(text)
    lines = textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False) or [""]
    if len(lines) > 2:
        lines = [lines[0], lines[1][: width - 1] + "…"]
    return "\n".join(lines)


def _displayable(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """An HWC/HW array imshow shows as a photo: uint8 kept, floats clipped to [0, 1], greys in grey."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        if array.size and np.nanmax(array) > 1.0:  # 0..255 in a float or wider int array
            array = array / 255.0
        array = np.clip(array, 0.0, 1.0)
    return array, ("gray" if array.ndim == 2 else None)


def _show(axis: plt.Axes, image: np.ndarray) -> None:
    array, cmap = _displayable(image)
    if cmap is None:
        axis.imshow(array)
    else:
        axis.imshow(array, cmap=cmap, vmin=0, vmax=255 if array.dtype == np.uint8 else 1)


def _best_validation_epoch(history: pd.DataFrame, epochs: np.ndarray) -> tuple[float, str] | None:
    """The epoch with the lowest validation loss (else the highest validation accuracy), and what made it best."""
    for column, pick, label in (("val_loss", np.nanargmin, "lowest validation loss"),
                                ("val_accuracy", np.nanargmax, "highest validation accuracy")):
        if column in history and history[column].notna().any():
            row = int(pick(history[column].to_numpy(dtype=np.float64)))
            return float(epochs[row]), label
    return None


def plot_curves(history: pd.DataFrame, out_path: Path) -> Path:
    """Accuracy and loss per epoch, training vs validation side by side, the best validation epoch dashed.

    ``history`` has one row per epoch with columns epoch, train_loss, train_accuracy and optionally
    val_loss, val_accuracy (missing or NaN validation values are simply not drawn).
    """
    epochs = (history["epoch"] if "epoch" in history else pd.Series(np.arange(1, len(history) + 1))).to_numpy()
    figure, (accuracy_axis, loss_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    best = _best_validation_epoch(history, epochs)
    for axis, metric, title in ((accuracy_axis, "accuracy", "Accuracy"), (loss_axis, "loss", "Loss")):
        for split, label, colour, marker in (("train", "training", TRAIN_COLOUR, "o"),
                                             ("val", "validation", VAL_COLOUR, "s")):
            column = f"{split}_{metric}"
            if column in history and history[column].notna().any():
                axis.plot(epochs, history[column].to_numpy(dtype=np.float64), marker=marker, markersize=3.5,
                          linewidth=1.6, color=colour, label=label)
        if best is not None:
            epoch, why = best
            axis.axvline(epoch, linestyle="--", linewidth=1.2, color=BEST_COLOUR,
                         label=f"best epoch {epoch:g} ({why})")
        axis.set_title(f"{title} per epoch")
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc="best", fontsize=8)
    accuracies = [history[c].to_numpy(dtype=np.float64) for c in ("train_accuracy", "val_accuracy") if c in history]
    top = max([1.0, *(float(np.nanmax(a)) for a in accuracies if np.isfinite(a).any())])
    accuracy_axis.set_ylim(0, top * 1.02)
    loss_axis.set_ylim(bottom=0)
    return _save(figure, out_path)


def plot_augmentations(
    raw: Sequence[np.ndarray],
    augmented: Sequence[Sequence[np.ndarray]],
    out_path: Path,
    titles: Sequence[str] | None = None,
) -> Path:
    """One row per photo: the raw photo (titled "original" and its name) beside its augmented versions (HWC)."""
    if len(raw) != len(augmented):
        raise ValueError(f"Expected one list of augmented views per photo, got {len(raw)} photos and {len(augmented)}.")
    if titles is not None and len(titles) != len(raw):
        raise ValueError(f"Expected one title per photo, got {len(raw)} photos and {len(titles)} titles.")
    rows = max(1, len(raw))
    columns = 1 + max((len(views) for views in augmented), default=0)
    figure, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 1.9 * rows + 0.5), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for row, photo in enumerate(raw):
        for column, image in enumerate([photo, *augmented[row]]):
            _show(axes[row][column], image)
        title = "original" + (f"\n{_short(titles[row], 22)}" if titles is not None else "")
        axes[row][0].set_title(title, fontsize=8, fontweight="bold")
        if row == 0:
            for column in range(1, 1 + len(augmented[row])):
                axes[row][column].set_title(f"augmented {column}", fontsize=8)
    figure.suptitle("Training augmentation: each photo beside random augmented versions", fontsize=11)
    return _save(figure, out_path)


def plot_predictions(
    images: Sequence[np.ndarray],
    true_names: Sequence[str],
    predicted_names: Sequence[str],
    confidences: Sequence[float],
    out_path: Path,
    columns: int = 4,
) -> Path:
    """A collage of photos, each titled with the predicted name and confidence and the true name below.

    Right predictions get a green title and frame, wrong ones red. A true name of "no known landmark" is right
    only when the prediction is "no known landmark" too.
    """
    count = len(images)
    if not len(true_names) == len(predicted_names) == len(confidences) == count:
        raise ValueError(
            f"Expected one true name, predicted name and confidence per image, got {count} images, "
            f"{len(true_names)} true names, {len(predicted_names)} predicted names and {len(confidences)} confidences."
        )
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 3.4 * rows + 0.4), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    right = 0
    for axis, image, true, predicted, confidence in zip(axes.flat, images, true_names, predicted_names, confidences):
        correct = str(predicted) == str(true)
        right += correct
        colour = GREEN if correct else RED
        _show(axis, image)
        axis.axis("on")
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(5)
        mark = "✓" if correct else "✗"
        axis.set_title(f"{mark} {_short(predicted, 24)} {float(confidence):.2f}", color=colour, fontsize=9,
                       fontweight="bold")
        truth = NO_LANDMARK_NAME if str(true) == NO_LANDMARK_NAME else _short(true, 26)
        axis.set_xlabel(f"true: {truth}", fontsize=8)
    share = f" ({right / count:.0%})" if count else ""
    figure.suptitle(f"Predictions: {right} of {count} right{share}  (green = right, red = wrong)", fontsize=11)
    return _save(figure, out_path)


def plot_confidence_histogram(
    confidences_landmark: Sequence[float], confidences_non_landmark: Sequence[float], out_path: Path
) -> Path:
    """Overlaid histograms of the top-1 confidence for queries with and without a known landmark.

    The further apart the two, the better non-landmark photos are pushed down below landmark photos.
    """
    landmark = np.asarray(confidences_landmark, dtype=np.float64)
    non_landmark = np.asarray(confidences_non_landmark, dtype=np.float64)
    figure, axis = plt.subplots(figsize=(7, 4.2))
    bins = np.linspace(0.0, 1.0, 26)
    tallest = 0
    for values, label, colour in ((landmark, "known landmark", GREEN), (non_landmark, "no known landmark", RED)):
        values = np.clip(values[np.isfinite(values)], 0.0, 1.0)
        counts, _, _ = axis.hist(values, bins=bins, alpha=0.55, color=colour, edgecolor="white", linewidth=0.5,
                                 label=f"{label} ({len(values)} queries)")
        tallest = max(tallest, int(np.max(counts, initial=0)))
        if len(values):
            median = float(np.median(values))
            axis.axvline(median, color=colour, linestyle="--", linewidth=1.2, label=f"median {median:.2f}")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, max(1, tallest) * 1.35)  # headroom for the legend
    axis.set_xlabel("confidence of the top-1 prediction")
    axis.set_ylabel("queries")
    axis.set_title("Top-1 confidence: queries with vs without a known landmark")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper center", ncol=2, fontsize=8.5)
    return _save(figure, out_path)


def plot_reliability(
    confidences: Sequence[float],
    correct: Sequence[bool],
    out_path: Path,
    raw_scores: Sequence[float] | None = None,
    bins: int = 10,
    what: str = "calibration photos",
    groups: dict[str, Sequence[bool]] | None = None,
) -> Path:
    """Calibration curve: the share of answers that were right against the confidence given, per confidence bin.

    On the diagonal a confidence of 0.9 is right 9 times in 10. Dot sizes and the bars below show how many
    answers each bin holds; ``raw_scores`` (the uncalibrated fused scores of the same answers) are drawn in grey;
    ``groups`` (name -> which answers) get a dashed curve each, e.g. the photos of trained and of taught landmarks.
    """
    confidences = np.clip(np.asarray(confidences, dtype=np.float64), 0.0, 1.0)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)

    def binned(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        which = np.clip(np.digitize(values, edges[1:-1]), 0, bins - 1)
        count = np.bincount(which, minlength=bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            return count, np.bincount(which, values, bins) / count, np.bincount(which, correct, bins) / count

    figure, (curve, counts_axis) = plt.subplots(2, 1, figsize=(6.4, 7.2), gridspec_kw={"height_ratios": [3, 1.2]},
                                                sharex=True)
    curve.plot([0, 1], [0, 1], linestyle="--", color=BEST_COLOUR, linewidth=1.2, label="perfectly calibrated")
    count, mean_confidence, observed = binned(confidences)
    filled = count > 0
    error = float((np.abs(mean_confidence - observed)[filled] * count[filled]).sum() / max(1, count.sum()))
    if raw_scores is not None:
        raw = np.clip(np.asarray(raw_scores, dtype=np.float64), 0.0, 1.0)
        raw_count, raw_mean, raw_observed = binned(raw)
        raw_filled = raw_count > 0
        raw_error = float((np.abs(raw_mean - raw_observed)[raw_filled] * raw_count[raw_filled]).sum() / max(1, raw_count.sum()))
        curve.plot(raw_mean[raw_filled], raw_observed[raw_filled], marker="o", color="#8c959f", linewidth=1.2,
                   markersize=4, label=f"fused score before calibration (error {raw_error:.2f})")
    curve.plot(mean_confidence[filled], observed[filled], color=TRAIN_COLOUR, linewidth=1.8,
               label=f"calibrated confidence (error {error:.2f})")
    for (name, members), colour in zip((groups or {}).items(), (VAL_COLOUR, "#bf8700", "#8250df")):
        members = np.asarray(members, dtype=bool)
        if not members.any():
            continue
        which = np.clip(np.digitize(confidences[members], edges[1:-1]), 0, bins - 1)
        group_count = np.bincount(which, minlength=bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            group_mean = np.bincount(which, confidences[members], bins) / group_count
            group_observed = np.bincount(which, correct[members], bins) / group_count
        shown = group_count > 0
        group_error = float((np.abs(group_mean - group_observed)[shown] * group_count[shown]).sum() / group_count.sum())
        curve.plot(group_mean[shown], group_observed[shown], marker="s", linestyle=":", color=colour, linewidth=1.4,
                   markersize=4, label=f"{name}: {int(members.sum())} answers (error {group_error:.2f})")
    curve.scatter(mean_confidence[filled], observed[filled], s=20 + 280 * count[filled] / max(1, count.max()),
                  color=TRAIN_COLOUR, zorder=3, edgecolor="white")
    for x, y, n in zip(mean_confidence[filled], observed[filled], count[filled]):
        curve.annotate(str(int(n)), (x, y), textcoords="offset points", xytext=(7, -11), fontsize=7.5, color=BEST_COLOUR)
    curve.set_xlim(0, 1)
    curve.set_ylim(-0.02, 1.02)
    curve.set_ylabel("share of these answers that were right")
    curve.set_title(f"Does a confidence of 0.9 mean right 9 times in 10?\n{int(count.sum())} answers on {what}",
                    fontsize=10.5)
    curve.grid(alpha=0.3)
    curve.legend(loc="upper left", fontsize=8)
    centres = (edges[:-1] + edges[1:]) / 2
    right = np.bincount(np.clip(np.digitize(confidences, edges[1:-1]), 0, bins - 1), correct, bins)
    width = 0.9 / bins
    counts_axis.bar(centres, right, width=width, color=GREEN, label="right")
    counts_axis.bar(centres, count - right, width=width, bottom=right, color=RED, alpha=0.8, label="wrong")
    counts_axis.set_xlabel("confidence (bins of width %.1f; mean |confidence - share right| = error)" % (1 / bins))
    counts_axis.set_ylabel("answers")
    counts_axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    counts_axis.grid(alpha=0.3, axis="y")
    counts_axis.legend(loc="upper center", fontsize=8, ncol=2)
    return _save(figure, out_path)


def plot_precision_coverage(
    confidences: Sequence[float],
    correct: Sequence[bool],
    is_landmark: Sequence[bool],
    threshold: float,
    out_path: Path,
    target_precision: float | None = None,
    what: str = "calibration photos",
) -> Path:
    """How many answers are right against how many are given, for every "no known landmark" threshold.

    Left: per threshold, the precision of the known answers, the coverage (photos of a known landmark answered
    right) and the share of photos without a known landmark that still get a landmark name. Right: precision
    against coverage. The chosen threshold is marked on both."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    is_landmark = np.asarray(is_landmark, dtype=bool)
    grid = np.unique(np.concatenate([np.linspace(0, 1, 201), confidences]))
    answered = confidences[None, :] >= grid[:, None]
    given = answered.sum(axis=1)
    right = (answered & correct[None, :]).sum(axis=1)
    precision = np.divide(right, given, out=np.full(len(grid), np.nan), where=given > 0)
    coverage = right / max(1, int(is_landmark.sum()))
    named = (answered & ~is_landmark[None, :]).sum(axis=1) / max(1, int((~is_landmark).sum()))
    at = confidences >= threshold
    chosen_precision = float(correct[at].mean()) if at.any() else float("nan")
    chosen_coverage = float(correct[at].sum() / max(1, int(is_landmark.sum())))
    chosen_named = float((at & ~is_landmark).sum() / max(1, int((~is_landmark).sum())))
    figure, (by_threshold, trade_off) = plt.subplots(1, 2, figsize=(12, 4.8))
    by_threshold.plot(grid, precision, color=GREEN, linewidth=1.8, label="known answers that are right (precision)")
    by_threshold.plot(grid, coverage, color=TRAIN_COLOUR, linewidth=1.8, label="landmark photos answered right (coverage)")
    if (~is_landmark).any():
        by_threshold.plot(grid, named, color=RED, linewidth=1.5,
                          label="photos without a known landmark named a landmark")
    by_threshold.axvline(threshold, color=BEST_COLOUR, linestyle="--", linewidth=1.2,
                         label=f"chosen threshold {threshold:.2f}")
    if target_precision is not None:
        by_threshold.axhline(target_precision, color=GREEN, linestyle=":", linewidth=1.0,
                             label=f"target precision {target_precision:.0%}")
    by_threshold.set_xlim(0, 1)
    by_threshold.set_ylim(0, 1.02)
    by_threshold.set_xlabel('threshold: below it the answer is "no known landmark"')
    by_threshold.set_ylabel("share")
    by_threshold.set_title("Per threshold", fontsize=10.5)
    by_threshold.grid(alpha=0.3)
    by_threshold.legend(loc="best", fontsize=7.5)
    trade_off.plot(coverage, precision, color=GREEN, linewidth=1.8)
    trade_off.scatter([chosen_coverage], [chosen_precision], s=70, color=BEST_COLOUR, zorder=3,
                      label=f"at {threshold:.2f}: {chosen_precision:.0%} right, {chosen_coverage:.0%} covered, "
                            f"{chosen_named:.0%} of the others named")
    if target_precision is not None:
        trade_off.axhline(target_precision, color=GREEN, linestyle=":", linewidth=1.0)
    trade_off.set_xlim(0, 1.02)
    trade_off.set_ylim(0, 1.02)
    trade_off.set_xlabel("coverage: landmark photos answered right")
    trade_off.set_ylabel("precision: known answers that are right")
    trade_off.set_title("Right answers vs answers given", fontsize=10.5)
    trade_off.grid(alpha=0.3)
    trade_off.legend(loc="lower left", fontsize=8)
    landmark_count, other_count = int(is_landmark.sum()), int((~is_landmark).sum())
    figure.suptitle(f"Known answers on {what}: {landmark_count} photos of known landmarks, {other_count} without one",
                    fontsize=11)
    return _save(figure, out_path)
