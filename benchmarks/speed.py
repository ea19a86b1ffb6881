"""Speed measurements without MLflow: Keras' fit as a user writes it and tuned, the project's
loop, its knobs, and the roofline.

Every epoch time is a median over epochs after a warm-up epoch: Keras' fit's from epoch-end
timestamps, the project's loop's as it measures each epoch itself, the plain loop's from a
timer around each epoch. The roofline is the time of the matrix multiplies and convolutions
one epoch needs (forward and backward over the training images, forward over the validation
images) at the rate TensorFlow reaches here for exactly those shapes. bench.py times the
tracked pipeline beside these.
"""

import dataclasses
import math
import time
import timeit

import keras
import numpy as np
import tensorflow as tf

from benchmarks import KERAS_TUNED
from mnist_pipeline.core import augment, training
from mnist_pipeline.core.config import TrainConfig
from mnist_pipeline.core.data import NUM_CLASSES, Mnist, split_validation
from mnist_pipeline.core.macs import epoch_flops, linear_layers, training_macs
from mnist_pipeline.core.models import build_model
from mnist_pipeline.names import EPOCH_SECONDS

WARMUP_EPOCHS = 1  # the first epoch builds the graph: never counted
LINEAR_REPEATS = 5  # timings of the roofline's loop; the median is used
SCALING_WIDTHS = (1, 4)  # multiples of the final variant's hidden widths
SCALING_BATCHES = (128, 512)
SCALING_EPOCHS = 2  # 1 warm-up + 1 timed, for each scaling point
ROUNDS = 2  # the trainings compared take turns this many times per variant


def _linear(x, w):
    return tf.matmul(x, w) if len(w.shape) == 2 else tf.nn.conv2d(x, w, 1, "VALID")


def roofline(cfg: TrainConfig, mnist: Mnist, steps: int = 50) -> dict[str, float]:
    """This machine's rate at ``cfg``'s shapes, and the epoch time it allows. The rate is that
    of ``steps`` training steps of the step's matmuls and convolutions alone, at their exact
    shapes: each layer's forward product and the gradient products of its weights and (but
    for the first) of its input."""
    layers = linear_layers(cfg)
    xs = [tf.random.normal((cfg.batch_size, *shape)) for shape, _ in layers]
    ws = [tf.random.normal(weight) for _, weight in layers]
    upstream = [tf.random.normal(_linear(x[:1], w).shape[1:]) for x, w in zip(xs, ws)]

    @tf.function
    def loop(n):
        total = tf.constant(0.0)
        for _ in tf.range(n):
            for index, (x, w, up) in enumerate(zip(xs, ws, upstream)):
                with tf.GradientTape() as tape:
                    tape.watch([x, w])
                    y = _linear(x, w)
                grads = tape.gradient(y, [w, x] if index else [w], output_gradients=tf.broadcast_to(up, y.shape))
                total += tf.reduce_sum(y[0]) + sum(tf.reduce_sum(g[0]) for g in grads)
        return total

    n = tf.constant(steps)
    loop(n).numpy()  # traced, and run once before it is timed
    step = float(np.median(timeit.repeat(lambda: loop(n).numpy(), number=1, repeat=LINEAR_REPEATS))) / steps
    n_train = len(split_validation(mnist.x_train, mnist.y_train, cfg.validation_split)[0][0])
    n_val = len(mnist.x_train) - n_train
    gflops = 2.0 * training_macs(cfg) * cfg.batch_size / step / 1e9
    return {"matmul_gflops": gflops, "roofline_s": epoch_flops(cfg, n_train, n_val) / (gflops * 1e9)}


def epoch_times(ends: list[float]) -> list[float]:
    """Epoch durations from epoch-end timestamps, the warm-up epoch(s) left out: the first
    end has no start, so the intervals are the durations of epochs 2, 3, ... (`bench_epochs`
    is checked to be at least 2 where it is given)."""
    return np.diff(ends)[WARMUP_EPOCHS - 1 :].tolist()


def keras_fit_epochs(cfg: TrainConfig, mnist: Mnist, tuned: bool = False) -> list[float]:
    """Epoch times (after the warm-up) of the same network as a Keras user trains it:
    compiled with ``RMSprop``, categorical cross-entropy and accuracy, and ``fit`` on the
    arrays (``tuned``: on ``batches``, KERAS_TUNED steps a compiled call); an augmented
    network (the convnet) always on ``batches``, which augments."""
    keras.utils.set_random_seed(cfg.seed)
    (x, y), (xv, yv) = split_validation(mnist.x_train, mnist.y_train, cfg.validation_split)
    model = build_model(cfg, steps_per_epoch=math.ceil(len(x) / cfg.batch_size))
    # compiled again only to set steps_per_execution: build_model's optimizer and loss kept
    steps = KERAS_TUNED if tuned else 1
    model.compile(optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"], steps_per_execution=steps)
    x, y = x.astype("float32"), keras.utils.to_categorical(y, NUM_CLASSES).astype("float32")
    moves = augment.for_config(cfg)
    if tuned or moves:  # the dataset shuffles
        training = {"x": batches(x, y, cfg.batch_size, cfg.seed, moves), "shuffle": False}
    else:  # the arrays, as a user passes them
        training = {"x": x, "y": y, "batch_size": cfg.batch_size}
    ends = []
    model.fit(
        **training,
        epochs=cfg.epochs,
        validation_data=(xv.astype("float32"), keras.utils.to_categorical(yv, NUM_CLASSES).astype("float32")),
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: ends.append(time.perf_counter()))],
        verbose=0,
    )
    return epoch_times(ends)


def batches(x, y, batch_size: int, seed: int, moves=None) -> tf.data.Dataset:
    """Shuffled batches of (images, labels), prepared while the model trains, as a Keras user
    tunes the input; with ``moves`` (augment.py's function, as fit.Loop applies it) each
    batch's images are passed through it with a seed of their own, new every epoch."""
    shuffled = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed).batch(batch_size)
    if moves is not None:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        shuffled = tf.data.Dataset.zip(shuffled, seeds).map(lambda batch, step: (moves(batch[0], step), batch[1]))
    return shuffled.prefetch(tf.data.AUTOTUNE)


def loop_epochs(cfg: TrainConfig, mnist: Mnist) -> list[float]:
    """Epoch times (after the warm-up) of training.train, the project's loop, untracked: the
    seconds it measures of each epoch, its validation pass included."""
    return training.train(cfg, mnist).history[EPOCH_SECONDS].iloc[WARMUP_EPOCHS:].tolist()


def has_plain_loop(cfg: TrainConfig) -> bool:
    """Whether ``cfg`` is a dense network, the only kind the plain loop trains."""
    return not (cfg.conv_filters or augment.for_config(cfg))


def plain_loop_epochs(cfg: TrainConfig, mnist: Mnist) -> list[float]:
    """Epoch times (after the warm-up) of the reference the loop is held to: a plain TensorFlow
    loop over the same dense network and initial weights, untracked. Each epoch one shuffled,
    pre-batched copy of the images; each Dropout mask one uniform draw and a multiply; the
    cross-entropy on the logits; L2 on the kernels; ResourceApplyRMSProp per weight; then a
    forward pass over the validation images. Dense networks only (has_plain_loop)."""
    keras.utils.set_random_seed(cfg.seed)
    (x, y), (xv, _) = split_validation(mnist.x_train, mnist.y_train, cfg.validation_split)
    model = build_model(cfg)
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    weights = model.trainable_variables
    slots = [tf.Variable(tf.zeros(w.shape)) for w in weights] + [tf.Variable(tf.zeros(w.shape)) for w in weights]
    x, y, xv = tf.constant(x.reshape(len(x), -1)), tf.constant(y, tf.int32), tf.constant(xv.reshape(len(xv), -1))
    full = len(y) // cfg.batch_size
    epoch = tf.Variable(0, dtype=tf.int64)

    @tf.function
    def run_epoch():
        epoch.assign_add(1)
        order = tf.random.experimental.stateless_shuffle(tf.range(len(y)), seed=tf.stack([epoch, epoch]))
        xs = tf.reshape(tf.gather(x, order[: full * cfg.batch_size]), [full, cfg.batch_size, -1])
        ys = tf.reshape(tf.gather(y, order[: full * cfg.batch_size]), [full, cfg.batch_size])
        for i in tf.range(full):
            with tf.GradientTape() as tape:
                logits = _plain_forward(layers, cfg.dropout, xs[i], tf.cast(i, tf.int64) + epoch * full)
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(ys[i], logits))
                if cfg.l2:  # Keras adds no penalty term for a network without L2
                    loss += sum(cfg.l2 * tf.reduce_sum(tf.square(layer.kernel.value)) for layer in layers[:-1])
            for w, ms, mom, g in zip(weights, slots, slots[len(weights) :], tape.gradient(loss, weights)):
                # rho and epsilon of the model's RMSprop; the slots are the plain loop's own
                tf.raw_ops.ResourceApplyRMSProp(
                    var=w.value.handle, ms=ms.handle, mom=mom.handle, lr=cfg.learning_rate,
                    rho=model.optimizer.rho, momentum=0.0, epsilon=model.optimizer.epsilon, grad=g,
                )  # fmt: skip
        return tf.reduce_sum(_plain_forward(layers, cfg.dropout, xv))

    return timeit.repeat(lambda: run_epoch().numpy(), number=1, repeat=cfg.epochs)[WARMUP_EPOCHS:]


def _plain_forward(layers, rate: float, h, seed=None):
    """The plain loop's dense network: logits of raw pixels ``h``, Dropout if ``seed``."""
    h = tf.cast(h, tf.float32) / 255
    for index, layer in enumerate(layers):
        h = tf.matmul(h, layer.kernel.value) + layer.bias.value
        if index < len(layers) - 1:
            h = tf.nn.relu(h)
            if seed is not None and rate:
                mask = tf.random.stateless_uniform(tf.shape(h), tf.stack([seed, index])) >= rate
                h = h * tf.cast(mask, tf.float32) / (1 - rate)
    return h


def scaling_row(base: TrainConfig, width: int, batch_size: int, mnist: Mnist) -> dict:
    """The loop's epoch and the roofline of ``base`` with hidden layers ``width`` times as wide,
    at ``batch_size``, over SCALING_EPOCHS epochs."""
    units = tuple(width * u for u in base.hidden_units)
    cfg = dataclasses.replace(base, hidden_units=units, batch_size=batch_size, epochs=SCALING_EPOCHS)
    loop = median([loop_epochs(cfg, mnist)])
    limit = roofline(cfg, mnist)
    return {
        "width": f"x{width}",
        "hidden_units": ",".join(map(str, cfg.hidden_units)),
        "batch_size": cfg.batch_size,
        "loop_s": loop,
        "roofline_s": limit["roofline_s"],
        "roofline_fraction": limit["roofline_s"] / loop,
        "matmul_gflops": limit["matmul_gflops"],
    }


def knob_rows(cfg: TrainConfig, mnist: Mnist, rounds: int = ROUNDS) -> list[dict]:
    """The loop with RMSprop as TensorFlow's fused kernel and as Keras' own ops, in turns
    for ``rounds`` rounds (the same formula, other float rounding)."""
    settings = {str(on).lower(): dataclasses.replace(cfg, fused_rmsprop=on) for on in (False, True)}
    turns = alternate({label: (lambda c=c: loop_epochs(c, mnist)) for label, c in settings.items()}, rounds)
    return [{"variant": cfg.variant, "knob": f"fused_rmsprop={on}", "loop_s": median(t)} for on, t in turns.items()]


def alternate(trainings: dict, rounds: int, mirrored: bool = False) -> dict[str, list]:
    """What each training returned in each round, the trainings taking turns for ``rounds``
    rounds; ``mirrored``: every other round in reverse order (A B, then B A), so that a drift
    of the host falls on all alike."""
    results = {label: [] for label in trainings}
    for round_ in range(rounds):
        for label in reversed(trainings) if mirrored and round_ % 2 else trainings:
            results[label].append(trainings[label]())
    return results


def median(rounds: list[list[float]]) -> float:
    """The median of every timed epoch of every round."""
    return float(np.median([seconds for epochs in rounds for seconds in epochs]))
