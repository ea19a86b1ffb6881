"""Matplotlib figures from histories and predictions. Figures are returned, not saved.

Each is a bare ``Figure``, not one of pyplot's: no backend or display is involved, and
nothing holds it once its caller drops it (pyplot keeps its figures until closed). Margins
are fixed per figure: matplotlib's constrained layout took half of each figure's time (about
0.2 s a figure; a run draws three)."""

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay


def _per_epoch(panels: dict[tuple[str, str], dict[str, pd.Series]]) -> Figure:
    """Two panels side by side, each (title, y label) -> its lines (label -> values per epoch)."""
    axes = Figure(figsize=(10, 4)).subplots(1, 2, gridspec_kw=dict(left=0.08, right=0.98, bottom=0.12, top=0.92))
    for ax, ((title, metric), lines) in zip(axes, panels.items()):
        for label, values in lines.items():
            ax.plot(values.index, values, "o-", label=label)
        ax.set(xlabel="epoch", ylabel=metric, title=title)
        ax.grid(alpha=0.3)
        ax.legend()
    return axes[0].figure


def learning_curves(history: pd.DataFrame, title: str) -> Figure:
    """Accuracy and loss per epoch, training beside validation."""
    return _per_epoch(
        {(f"{title}: {m}", m): {"train": history[m], "validation": history[f"val_{m}"]} for m in ("accuracy", "loss")}
    )


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, title: str) -> Figure:
    """Counts of true digit (rows) against predicted digit (columns) on the test set."""
    ax = Figure(figsize=(7, 6)).subplots(gridspec_kw=dict(left=0.1, right=0.97, bottom=0.09, top=0.94))
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=range(10), ax=ax, colorbar=False, cmap="Blues")
    ax.set_title(f"{title}: test confusion matrix")
    return ax.figure


def misclassified(
    images: np.ndarray, y_true: np.ndarray, probabilities: np.ndarray, title: str, limit: int = 36
) -> Figure:
    """The most confidently wrong test digits, each with its true and predicted label.

    The digits are tiled into one image, drawn once (36 small axes took a second to save)."""
    y_pred = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    wrong = wrong[np.argsort(-probabilities[wrong, y_pred[wrong]])][:limit]
    cols, side, label = 6, images.shape[1], 16  # pixels: a digit, and the band above it for its label
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    tile = side + label
    mosaic = np.full((rows * tile, cols * tile), 255, np.uint8)  # white bands between the digits
    height = rows * 1.6 + 0.5  # inches: the tiles, and the title above them
    fig = Figure(figsize=(cols * 1.6, height))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.5 / height)
    for n, i in enumerate(wrong):
        top, left = (n // cols) * tile + label, (n % cols) * tile + label // 2
        mosaic[top : top + side, left : left + side] = images[i]
        caption = f"true {y_true[i]} / pred {y_pred[i]}\np={probabilities[i, y_pred[i]]:.2f}"
        ax.text(left + side / 2, top - 1, caption, ha="center", va="bottom", fontsize=8)
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255)
    ax.axis("off")
    fig.suptitle(f"{title}: {len(wrong)} most confident of {int((y_pred != y_true).sum())} errors")
    return fig


def validation_overlay(curves: dict[str, pd.DataFrame]) -> Figure:
    """Validation accuracy and loss per epoch, one line per variant."""
    metrics = ("val_accuracy", "val_loss")
    return _per_epoch({(m.replace("_", " "), m): {name: h[m] for name, h in curves.items()} for m in metrics})


def seed_spread(results: pd.DataFrame, study: dict[str, float]) -> Figure:
    """Test accuracy of every seed per variant (dots), their mean ± std (bar) and the
    study's single figure (red cross)."""
    ax = Figure(figsize=(7, 4)).subplots(gridspec_kw=dict(left=0.11, right=0.98, bottom=0.08, top=0.92))
    accuracy = (100 * results["test_accuracy"]).groupby(results["variant"], sort=False)
    rng = np.random.default_rng(0)  # jitter only spreads the dots sideways
    for i, (_, seeds) in enumerate(accuracy):
        ax.plot(i + rng.uniform(-0.12, 0.12, len(seeds)), seeds, "o", alpha=0.7, color="tab:blue")
    spread = accuracy.agg(["mean", "std", "size"])  # std: ddof 1, none for one seed
    at = np.arange(len(spread))
    ax.errorbar(
        at + 0.25, spread["mean"], spread["std"].fillna(0), fmt="s", color="black", capsize=4, label="mean ± std"
    )
    ax.plot(at, [100 * study[name] for name in spread.index], "x", color="tab:red", markersize=10, mew=2, label="study")
    ax.set_xticks(at, labels=spread.index)
    ax.set(ylabel="test accuracy (%)", title=f"test accuracy over {spread['size'].max()} seeds")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return ax.figure
