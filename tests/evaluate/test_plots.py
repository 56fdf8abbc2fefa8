import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from landmarks.evaluate import plots


def _open(path):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def _photo(seed: int, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def no_figures_left_open():
    import matplotlib.pyplot as plt

    yield
    assert plt.get_fignums() == []


def test_plot_curves_writes_two_panel_png(tmp_path):
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3, 4],
            "train_loss": [2.0, 1.5, 1.0, 0.8],
            "train_accuracy": [0.3, 0.5, 0.7, 0.8],
            "val_loss": [2.1, 1.6, 1.4, 1.5],
            "val_accuracy": [0.25, 0.45, 0.6, 0.58],
        }
    )
    out = plots.plot_curves(history, tmp_path / "plots" / "curves.png")
    assert out == tmp_path / "plots" / "curves.png"
    width, height = _open(out)
    assert width > 2 * height  # two panels side by side (11 x 4.2 in at 120 dpi)
    assert 1000 < width < 1600 and 350 < height < 700


@pytest.mark.parametrize("validation", ["nan", "missing", "single epoch"])
def test_plot_curves_without_validation(tmp_path, validation):
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.5], "train_accuracy": [0.4, 0.6]})
    if validation == "nan":
        history["val_loss"] = np.nan
        history["val_accuracy"] = np.nan
    elif validation == "single epoch":
        history = pd.DataFrame({"epoch": [1], "train_loss": [1.0], "train_accuracy": [0.4], "val_loss": [np.nan],
                                "val_accuracy": [0.3]})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # e.g. nanargmin on an all-NaN column
        _open(plots.plot_curves(history, tmp_path / "curves.png"))


def test_best_validation_epoch():
    history = pd.DataFrame({"val_loss": [1.0, 0.5, np.nan, 0.7], "val_accuracy": [0.1, 0.9, 0.2, 0.3]})
    epochs = np.array([1, 2, 3, 4])
    assert plots._best_validation_epoch(history, epochs) == (2.0, "lowest validation loss")
    history["val_loss"] = np.nan
    assert plots._best_validation_epoch(history, epochs) == (2.0, "highest validation accuracy")
    assert plots._best_validation_epoch(history.drop(columns=["val_loss", "val_accuracy"]), epochs) is None


def test_plot_augmentations_grid(tmp_path):
    raw = [_photo(0), _photo(1), _photo(2)]
    augmented = [[_photo(10 + 4 * i + j) for j in range(4)] for i in range(3)]
    out = plots.plot_augmentations(raw, augmented, tmp_path / "augmentations.png", titles=["tower", "bridge", "arch"])
    width, height = _open(out)
    # 5 columns x 1.9 in, 3 rows x 1.9 in + 0.5 in, at 120 dpi
    assert width == pytest.approx(5 * 1.9 * 120, abs=5) and height == pytest.approx((3 * 1.9 + 0.5) * 120, abs=5)


def test_plot_augmentations_accepts_float_and_grey_images_and_no_titles(tmp_path):
    raw = [np.random.default_rng(0).random((16, 16, 3)), np.zeros((16, 16), dtype=np.uint8)]
    augmented = [[np.ones((16, 16, 1))], []]
    _open(plots.plot_augmentations(raw, augmented, tmp_path / "augmentations.png"))


def test_plot_augmentations_rejects_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match="one list of augmented views per photo"):
        plots.plot_augmentations([_photo(0)], [], tmp_path / "a.png")


def test_plot_predictions_collage(tmp_path):
    images = [_photo(i, 32) for i in range(6)]
    true_names = ["taj_mahal", "eiffel_tower", "no known landmark", "no known landmark", "a very long landmark name " * 4, "x"]
    predicted = ["taj_mahal", "big_ben", "eiffel_tower", "no known landmark", "a very long landmark name " * 4, "y"]
    confidences = [0.93, 0.41, 0.55, 0.12, 0.7, 0.2]
    out = plots.plot_predictions(images, true_names, predicted, confidences, tmp_path / "predictions.png", columns=4)
    width, height = _open(out)
    # 4 columns x 3 in, 2 rows x 3.4 in + 0.4 in, at 120 dpi
    assert width == pytest.approx(4 * 3.0 * 120, abs=5) and height == pytest.approx((2 * 3.4 + 0.4) * 120, abs=5)


def test_plot_predictions_colours_right_green_and_wrong_red(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    seen = {}
    original_save = plots._save

    def spy(figure, out_path):
        axes = [axis for axis in figure.axes if axis.images]
        seen["titles"] = [(axis.get_title(), axis.title.get_color()) for axis in axes]
        seen["frames"] = [axis.spines["top"].get_edgecolor() for axis in axes]
        return original_save(figure, out_path)

    monkeypatch.setattr(plots, "_save", spy)
    plots.plot_predictions(
        [_photo(0), _photo(1), _photo(2)],
        ["taj_mahal", "no known landmark", "no known landmark"],
        ["taj_mahal", "big_ben", "no known landmark"],
        [0.93, 0.5, 0.2],
        tmp_path / "p.png",
    )
    titles = [title for title, _ in seen["titles"]]
    assert "taj_mahal 0.93" in titles[0] and "big_ben 0.50" in titles[1]
    colours = [colour for _, colour in seen["titles"]]
    assert colours == [plots.GREEN, plots.RED, plots.GREEN]
    green, red = (np.array(plt.matplotlib.colors.to_rgba(c)) for c in (plots.GREEN, plots.RED))
    assert [tuple(f) for f in seen["frames"]] == [tuple(green), tuple(red), tuple(green)]


def test_plot_predictions_empty_and_mismatched(tmp_path):
    _open(plots.plot_predictions([], [], [], [], tmp_path / "empty.png"))
    with pytest.raises(ValueError, match="one true name"):
        plots.plot_predictions([_photo(0)], ["a", "b"], ["a"], [0.5], tmp_path / "bad.png")


def test_plot_confidence_histogram(tmp_path):
    rng = np.random.default_rng(0)
    out = plots.plot_confidence_histogram(rng.beta(5, 2, 200), rng.beta(2, 5, 80), tmp_path / "confidence.png")
    width, height = _open(out)
    assert width == pytest.approx(7 * 120, abs=5) and height == pytest.approx(4.2 * 120, abs=5)
    # one group empty does not crash
    _open(plots.plot_confidence_histogram([0.9, 0.8], [], tmp_path / "one.png"))
