"""Fit and evaluate one configuration. Returns what happened; logs nothing anywhere.

Epochs are numbered from 1: the history's first row, and the metric step MLflow gets
for it, is epoch 1.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd

from mnist_pipeline.core import augment
from mnist_pipeline.core.config import TrainConfig
from mnist_pipeline.core.data import Mnist, split_validation
from mnist_pipeline.core.fit import Loop, evaluation_tensors
from mnist_pipeline.core.models import build_model
from mnist_pipeline.core.phases import Phases
from mnist_pipeline.names import EPOCH_METRICS, EPOCH_SECONDS


@dataclass
class TrainResult:
    """A trained model, its per-epoch history and its test-set scores."""

    model: keras.Model
    history: pd.DataFrame  # index "epoch" 1..n, columns EPOCH_METRICS
    test_loss: float
    test_accuracy: float
    test_probabilities: np.ndarray  # (n_test, 10)
    val_labels: np.ndarray  # (n_val,) the validation split's digits
    val_probabilities: np.ndarray  # (n_val, 10) with the last epoch's weights
    train_seconds: float  # wall time of the epochs, validation passes included
    samples_per_second: float  # training images per second of train_seconds
    phases: dict[str, float]  # seconds of "build" (model and graph), "epochs" and "test"

    @property
    def best_epoch(self) -> int:
        """Epoch with the highest val_accuracy; ties go to the lower val_loss."""
        return best_epoch(self.history)

    @property
    def best_val_accuracy(self) -> float:
        return float(self.history.loc[self.best_epoch, "val_accuracy"])


def best_epoch(history: pd.DataFrame) -> int:
    return int(history.sort_values(["val_accuracy", "val_loss"], ascending=[False, True]).index[0])


def train(
    cfg: TrainConfig,
    data: Mnist,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``cfg`` on ``data`` with fit.Loop; ``on_epoch(epoch, metrics)`` is called after
    every epoch, its seconds included (training and validation)."""
    keras.utils.set_random_seed(cfg.seed)
    (x_fit, y_fit), (x_val, y_val) = split_validation(data.x_train, data.y_train, cfg.validation_split)
    phases = Phases()
    with phases("build"):
        model = build_model(cfg, steps_per_epoch=math.ceil(len(x_fit) / cfg.batch_size))
        augmentation = augment.for_config(cfg)
        loop = Loop(model, x_fit, y_fit, cfg.batch_size, cfg.seed, fused=cfg.fused_rmsprop, augment=augmentation)
        loop.trace()
        validation = evaluation_tensors(x_val, y_val)  # converted once, evaluated every epoch
    rows = []
    with phases("epochs"):
        for epoch in range(1, cfg.epochs + 1):
            start = time.perf_counter()
            row = loop.epoch()
            row["val_loss"], row["val_accuracy"], val_probabilities = loop.evaluate(*validation)
            row[EPOCH_SECONDS] = time.perf_counter() - start
            rows.append(row)
            if on_epoch is not None:
                on_epoch(epoch, row)
    with phases("test"):
        test_loss, test_accuracy, test_probabilities = loop.evaluate(data.x_test, data.y_test)
    history = pd.DataFrame(rows, index=pd.RangeIndex(1, len(rows) + 1, name="epoch"))[list(EPOCH_METRICS)]
    return TrainResult(
        model=model,
        history=history,
        test_loss=test_loss,
        test_accuracy=test_accuracy,
        test_probabilities=test_probabilities,
        val_labels=y_val,
        val_probabilities=val_probabilities,
        train_seconds=phases.seconds["epochs"],
        samples_per_second=len(x_fit) * cfg.epochs / phases.seconds["epochs"],
        phases=phases.seconds,
    )
