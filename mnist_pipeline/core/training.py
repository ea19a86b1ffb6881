"""Fit and evaluate one configuration. Returns what happened; logs nothing anywhere.

Epochs are numbered from 1: the history's first row, and the metric step MLflow gets
for it, is epoch 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd

from mnist_pipeline.core.config import TrainConfig
from mnist_pipeline.core.data import NUM_CLASSES, Mnist, split_validation
from mnist_pipeline.core.models import build_model
from mnist_pipeline.names import EPOCH_METRICS, EPOCH_SECONDS


@dataclass
class TrainResult:
    """A trained model, its per-epoch history and its test-set scores."""

    model: keras.Model
    history: pd.DataFrame  # index "epoch" 1..n, columns EPOCH_METRICS
    test_loss: float
    test_accuracy: float
    test_probabilities: np.ndarray  # (n_test, 10)
    train_seconds: float  # wall time of fit(), validation passes included
    samples_per_second: float  # training images per second of train_seconds
    num_train: int
    num_validation: int

    @property
    def best_epoch(self) -> int:
        """Epoch with the highest val_accuracy; ties go to the lower val_loss."""
        return best_epoch(self.history)

    @property
    def best_val_accuracy(self) -> float:
        return float(self.history.loc[self.best_epoch, "val_accuracy"])


def best_epoch(history: pd.DataFrame) -> int:
    ranked = history.sort_values(["val_accuracy", "val_loss"], ascending=[False, True])
    return int(ranked.index[0])


class _EpochRecorder(keras.callbacks.Callback):
    """Times each epoch and hands its metrics to ``on_epoch`` as soon as it ends."""

    def __init__(self, on_epoch: Callable[[int, dict[str, float]], None] | None):
        super().__init__()
        self.rows: list[dict[str, float]] = []
        self._on_epoch = on_epoch
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {name: float(logs[name]) for name in EPOCH_METRICS[:-1]}
        row[EPOCH_SECONDS] = time.perf_counter() - self._start
        self.rows.append(row)
        if self._on_epoch is not None:
            self._on_epoch(epoch + 1, row)


def one_hot(labels: np.ndarray) -> np.ndarray:
    return keras.utils.to_categorical(labels, NUM_CLASSES).astype("float32")


def train(
    cfg: TrainConfig,
    data: Mnist,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    verbose: int = 2,
) -> TrainResult:
    """Train ``cfg`` on ``data``; ``on_epoch(epoch, metrics)`` is called after every epoch."""
    keras.utils.set_random_seed(cfg.seed)
    (x_fit, y_fit), (x_val, y_val) = split_validation(data.x_train, data.y_train, cfg.validation_split)
    model = build_model(cfg)
    recorder = _EpochRecorder(on_epoch)
    start = time.perf_counter()
    model.fit(
        x_fit.astype("float32"),
        one_hot(y_fit),
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        validation_data=(x_val.astype("float32"), one_hot(y_val)),
        callbacks=[recorder],
        verbose=verbose,
    )
    train_seconds = time.perf_counter() - start
    x_test = data.x_test.astype("float32")
    test_loss, test_accuracy = model.evaluate(x_test, one_hot(data.y_test), batch_size=1024, verbose=0)
    history = pd.DataFrame(recorder.rows, index=pd.RangeIndex(1, len(recorder.rows) + 1, name="epoch"))
    return TrainResult(
        model=model,
        history=history,
        test_loss=float(test_loss),
        test_accuracy=float(test_accuracy),
        test_probabilities=model.predict(x_test, batch_size=1024, verbose=0),
        train_seconds=train_seconds,
        samples_per_second=len(x_fit) * cfg.epochs / train_seconds,
        num_train=len(x_fit),
        num_validation=len(x_val),
    )
