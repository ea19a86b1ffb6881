"""The tables and plots a run logs: learning curves of a history, the report of predictions."""

import numpy as np
import pandas as pd

from mnist_pipeline import names
from mnist_pipeline.core import evaluation, plots
from mnist_pipeline.core.data import Mnist
from mnist_pipeline.tracking.run_lifecycle import log_figure, log_metrics, log_text


def log_history(history: pd.DataFrame, title: str) -> None:
    """The per-epoch table and the learning curves drawn from it."""
    log_text(history.to_csv(), names.HISTORY)
    log_figure(plots.learning_curves(history, title), names.CURVES)


def log_test_report(data: Mnist, probabilities: np.ndarray, title: str) -> None:
    """Per-class table, confusion counts and matrix, and misclassified digits of the test set."""
    report = evaluation.report(data.y_test, probabilities)
    log_text(report.per_class.to_csv(), names.PER_CLASS)
    log_text(report.confusion.to_csv(), names.CONFUSION_COUNTS)
    log_figure(plots.confusion_matrix(data.y_test, report.predicted, title), names.CONFUSION)
    log_figure(plots.misclassified(data.x_test, data.y_test, probabilities, title), names.MISCLASSIFIED)


def log_validation_report(labels: np.ndarray, probabilities: np.ndarray, **link) -> None:
    """Per-digit precision and recall on the validation split, as a table and as metrics
    (val_recall_<d>, val_precision_<d>) that the registry's gates compare; ``link``: the
    ``dataset`` and ``model_id`` of run_lifecycle.log_metrics."""
    per_class = evaluation.report(labels, probabilities).per_class
    log_text(per_class.to_csv(), names.VAL_PER_CLASS)
    columns = {names.VAL_RECALL: "recall", names.VAL_PRECISION: "precision"}  # metric name -> column
    log_metrics(
        {name.format(digit=d): float(v) for name, c in columns.items() for d, v in per_class[c].items()}, **link
    )
