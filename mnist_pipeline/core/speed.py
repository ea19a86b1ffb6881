"""Speed measurements without MLflow: bare Keras epochs, speed knobs, the matmul roofline.

Every epoch time is a median over epochs after a warm-up epoch, taken from epoch-end
timestamps. The roofline is the time of the matrix multiplies one epoch needs (forward
and backward over the training images, forward over the validation images) at the rate
TensorFlow reaches here for exactly those shapes. flows/bench.py times the tracked
pipeline beside these.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from mnist_pipeline.core.config import TrainConfig
from mnist_pipeline.core.data import Mnist, split_validation
from mnist_pipeline.core.models import build_model
from mnist_pipeline.core.training import one_hot

WARMUP_EPOCHS = 1  # the first epoch traces the graph: never counted
MATMUL_REPEATS = 5  # timings of the matmul loop; the median is used
SCALING_WIDTHS = (1, 2, 4)  # multiples of the final variant's hidden widths
SCALING_BATCHES = (64, 128, 256, 512)
ROUNDS = 2  # bare and tracked trainings alternate this many times per variant
THREAD_ENV = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")  # TensorFlow reads them when it starts


def layer_shapes(cfg: TrainConfig) -> list[tuple[int, int]]:
    widths = [28 * 28, *cfg.hidden_units, 10]
    return list(zip(widths[:-1], widths[1:]))


def layer_macs(cfg: TrainConfig) -> list[int]:
    """Multiply-adds of each Dense layer's forward pass, per image."""
    return [a * b for a, b in layer_shapes(cfg)]


def training_macs(cfg: TrainConfig) -> int:
    """Multiply-adds per training image: forward, weight gradients, and the input gradients
    of every layer but the first (nothing trainable lies below it: TensorFlow skips that
    matmul, and so does the roofline)."""
    macs = layer_macs(cfg)
    return 3 * sum(macs) - macs[0]


def epoch_flops(cfg: TrainConfig, n_train: int, n_val: int) -> float:
    """FLOPs (2 per multiply-add) of one epoch: training steps, then a forward pass over
    the validation images."""
    return 2.0 * (training_macs(cfg) * n_train + sum(layer_macs(cfg)) * n_val)


def matmul_step_seconds(cfg: TrainConfig, steps: int = 50) -> float:
    """Seconds per training step of the step's matmuls alone, at its exact shapes."""
    shapes, batch = layer_shapes(cfg), cfg.batch_size
    weights = [tf.random.normal(shape) for shape in shapes]
    x = tf.random.normal((batch, shapes[0][0]))

    @tf.function
    def loop(x, n):
        total = tf.constant(0.0)
        for _ in tf.range(n):
            activations, h = [], x
            for w in weights:
                activations.append(h)
                h = tf.matmul(h, w)
            grad = h
            for layer in reversed(range(len(weights))):
                total += tf.reduce_sum(tf.matmul(activations[layer], grad, transpose_a=True)[0])  # weight gradient
                if layer > 0:  # the first layer's input gradient is not needed
                    grad = tf.matmul(grad, weights[layer], transpose_b=True)
        return total

    loop(x, tf.constant(2)).numpy()  # trace
    times = []
    for _ in range(MATMUL_REPEATS):
        start = time.perf_counter()
        loop(x, tf.constant(steps)).numpy()
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def roofline(cfg: TrainConfig, mnist: Mnist) -> dict[str, float]:
    """This machine's matmul rate at ``cfg``'s shapes, and the epoch time it allows."""
    n_train = len(split_validation(mnist.x_train, mnist.y_train, cfg.validation_split)[0][0])
    n_val = len(mnist.x_train) - n_train
    step = matmul_step_seconds(cfg)
    train_flops = 2.0 * training_macs(cfg) * cfg.batch_size
    gflops = train_flops / step / 1e9
    return {"matmul_gflops": gflops, "roofline_s": epoch_flops(cfg, n_train, n_val) / (gflops * 1e9)}


def epoch_times(ends: list[float]) -> list[float]:
    """Epoch durations from epoch-end timestamps, the warm-up epoch(s) left out: the first
    end has no start, so the intervals are the durations of epochs 2, 3, ..."""
    intervals = np.diff(ends)[WARMUP_EPOCHS - 1 :]
    if len(intervals) == 0:
        raise ValueError("need at least WARMUP_EPOCHS + 1 epochs to time one")
    return [float(t) for t in intervals]


class _EpochEnds(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ends: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append(time.perf_counter())


def bare_keras_epochs(cfg: TrainConfig, mnist: Mnist) -> list[float]:
    """Epoch times (after the warm-up) of a plain ``fit`` of the same model on the same data."""
    keras.utils.set_random_seed(cfg.seed)
    (x, y), (xv, yv) = split_validation(mnist.x_train, mnist.y_train, cfg.validation_split)
    ends = _EpochEnds()
    build_model(cfg).fit(
        x.astype("float32"),
        one_hot(y),
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        validation_data=(xv.astype("float32"), one_hot(yv)),
        callbacks=[ends],
        verbose=0,
    )
    return epoch_times(ends.ends)


def bare_keras(cfg: TrainConfig, mnist: Mnist) -> float:
    """Median s/epoch of a plain ``fit`` of the same model on the same data."""
    return float(np.median(bare_keras_epochs(cfg, mnist)))


def scaling_row(cfg: TrainConfig, mnist: Mnist) -> dict:
    bare = bare_keras(cfg, mnist)
    limit = roofline(cfg, mnist)
    return {
        "hidden_units": ",".join(map(str, cfg.hidden_units)),
        "batch_size": cfg.batch_size,
        "bare_s": bare,
        "roofline_s": limit["roofline_s"],
        "roofline_fraction": limit["roofline_s"] / bare,
        "matmul_gflops": limit["matmul_gflops"],
    }


def knob_rows(cfg: TrainConfig, mnist: Mnist, rounds: int = ROUNDS) -> list[dict]:
    """Before/after of each speed knob on bare Keras, the two settings alternating for
    ``rounds`` rounds. steps_per_execution and threads change no number; fused_rmsprop
    changes float rounding (models.fuse_rmsprop). Thread counts are fixed when TensorFlow
    starts, so those trainings run in fresh processes (data from a folder or .npz only)."""
    knobs = {
        "steps_per_execution": {
            str(spe): dataclasses.replace(cfg, steps_per_execution=spe) for spe in sorted({1, cfg.steps_per_execution})
        },
        "fused_rmsprop": {str(on).lower(): dataclasses.replace(cfg, fused_rmsprop=on) for on in (False, True)},
    }
    rows = []
    for knob, settings in knobs.items():
        epochs = _alternate({label: (lambda c=c: bare_keras_epochs(c, mnist)) for label, c in settings.items()}, rounds)
        rows += [
            {"variant": cfg.variant, "knob": f"{knob}={label}", "bare_s": float(np.median(epochs[label]))}
            for label in settings
        ]
    if Path(mnist.source).exists():
        threads = {"TensorFlow's default (one per core)": None, "1": "1"}
        epochs = _alternate(
            {label: (lambda n=n: bare_keras_elsewhere(cfg, mnist.source, n)) for label, n in threads.items()}, rounds
        )
        rows += [
            {"variant": cfg.variant, "knob": f"threads={label}", "bare_s": float(np.median(epochs[label]))}
            for label in threads
        ]
    return rows


def _alternate(trainings: dict, rounds: int) -> dict[str, list[float]]:
    """Each training's epoch times, the trainings taking turns for ``rounds`` rounds."""
    epochs = {label: [] for label in trainings}
    for _ in range(rounds):
        for label, timed in trainings.items():
            epochs[label] += timed()
    return epochs


def bare_keras_elsewhere(cfg: TrainConfig, source: str, threads: str | None) -> list[float]:
    """bare_keras_epochs in a fresh Python whose TensorFlow has ``threads`` threads per pool
    (None: TensorFlow's own default, one per core)."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    env.update({k: threads for k in THREAD_ENV} if threads else {})
    code = (
        "import json, sys; from mnist_pipeline.core import config, data, speed; "
        "cfg = config.TrainConfig(**{k: tuple(v) if isinstance(v, list) else v "
        "for k, v in json.loads(sys.argv[1]).items()}); "
        "print(json.dumps(speed.bare_keras_epochs(cfg, data.load(sys.argv[2]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(dataclasses.asdict(cfg)), source],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])
