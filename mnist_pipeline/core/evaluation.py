"""Scores of a model's predictions: accuracy, loss, the per-class report and confusion counts.

Plain NumPy, pandas and scikit-learn on labels and class probabilities; the tracking layer
logs what these return.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import classification_report, confusion_matrix, log_loss

from mnist_pipeline.core.data import NUM_CLASSES

DIGITS = range(NUM_CLASSES)


@dataclass(frozen=True)
class Report:
    """What a set of predictions scores, per digit and in all."""

    predicted: np.ndarray  # (n,) the most probable digit
    per_class: pd.DataFrame  # index "digit" "0".."9": precision, recall, f1-score, support, predicted
    confusion: pd.DataFrame  # index "true_digit", columns predicted_0..9: counts


def scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy of the most probable digit, and categorical cross-entropy."""
    return {
        "test_accuracy": float((probabilities.argmax(axis=1) == labels).mean()),
        "test_loss": float(log_loss(labels, probabilities, labels=DIGITS)),
    }


def report(labels: np.ndarray, probabilities: np.ndarray) -> Report:
    """Per-class precision, recall, f1 and support, and the confusion counts (rows: true digit)."""
    predicted = probabilities.argmax(axis=1)
    by_class = classification_report(labels, predicted, labels=DIGITS, output_dict=True, zero_division=0)
    per_class = pd.DataFrame({str(d): by_class[str(d)] for d in DIGITS}).T.rename_axis("digit")
    per_class["predicted"] = np.bincount(predicted, minlength=NUM_CLASSES)
    counts = confusion_matrix(labels, predicted, labels=DIGITS)
    confusion = pd.DataFrame(
        counts, index=pd.RangeIndex(NUM_CLASSES, name="true_digit"), columns=[f"predicted_{d}" for d in DIGITS]
    )
    return Report(predicted, per_class, confusion)
