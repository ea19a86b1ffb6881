"""fit.Loop against Keras' own fit: the same updates, the same epoch metrics."""

import dataclasses
import math
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers.checks import tensorflow_log_lines
from mnist_pipeline.core import augment
from mnist_pipeline.core.config import resolve
from mnist_pipeline.core.fit import Loop, _logits, dropout, epoch_order, evaluation_tensors
from mnist_pipeline.core.models import build_model
from mnist_pipeline.core.training import train

BATCH = 32
N_FIT = 70  # two full batches and a last one of 6: the partial batch counts


def _model(cfg):
    keras.utils.set_random_seed(cfg.seed)
    return build_model(cfg, steps_per_epoch=math.ceil(N_FIT / BATCH))


def one_hot(labels):
    return keras.utils.to_categorical(labels, 10).astype("float32")


def _split(tiny_mnist, n=N_FIT, n_val=30):
    x, y = tiny_mnist.x_train.astype("float32"), tiny_mnist.y_train
    return (x[:n], y[:n]), (x[n : n + n_val], y[n : n + n_val])


@pytest.fixture
def small_cfg():
    """Dropout 0 (the only randomness left is the initial weights), L2 on: Keras' loss terms."""
    return resolve("regularized", {"hidden_units": (32, 16), "dropout": 0.0, "batch_size": BATCH})


@pytest.mark.parametrize(
    ("fused", "cosine_decay"),
    [(False, False), (True, False), (True, True)],
    ids=["keras-ops", "fused-kernel", "fused-kernel-cosine-decay"],
)
def test_loop_trains_as_keras_fit_does(tiny_mnist, small_cfg, fused, cosine_decay):
    """From the same initial weights and batches (no shuffling), two epochs of the loop and
    of Keras' fit give the same weights, optimizer slots and epoch metrics within float32
    rounding; the fused kernel rounds in another order, hence its looser tolerance. A
    decaying rate (the convnet's) is Keras' schedule in both, stepped by the same counter."""
    (x, y), (xv, yv) = _split(tiny_mnist)
    cfg = dataclasses.replace(small_cfg, epochs=2, cosine_decay=cosine_decay)
    keras_model, loop_model = _model(cfg), _model(cfg)
    start = keras_model.get_weights()
    for a, b in zip(start, loop_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    fitted = keras_model.fit(
        x, one_hot(y), batch_size=BATCH, epochs=2, shuffle=False, validation_data=(xv, one_hot(yv)), verbose=0
    ).history
    loop = Loop(loop_model, x, y, BATCH, seed=0, fused=fused, shuffle=False)
    ours = []
    for _ in range(2):
        row = loop.epoch()
        row["val_loss"], row["val_accuracy"], _ = loop.evaluate(xv, yv)
        ours.append(row)
    tolerance = {"rtol": 1e-4, "atol": 1e-6} if fused else {"rtol": 1e-5, "atol": 1e-7}
    for ours_w, keras_w, first in zip(loop_model.get_weights(), keras_model.get_weights(), start):
        np.testing.assert_allclose(ours_w, keras_w, **tolerance)
        assert not np.array_equal(keras_w, first)  # training moved them
    assert int(loop_model.optimizer.iterations) == int(keras_model.optimizer.iterations) == 2 * 3
    for ours_v, keras_v in zip(loop_model.optimizer.variables, keras_model.optimizer.variables):
        np.testing.assert_allclose(np.asarray(ours_v), np.asarray(keras_v), **tolerance)
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose([row[name] for row in ours], fitted[name], rtol=1e-5, err_msg=name)
    # after all of the run's steps a cosine-decayed rate has reached 0; a constant one stays
    final_rate = 0.0 if cosine_decay else cfg.learning_rate
    assert float(loop_model.optimizer.learning_rate) == pytest.approx(final_rate, rel=1e-6, abs=1e-12)


def test_epoch_metrics_are_means_over_images(tiny_mnist, small_cfg):
    """A known case: zero kernels and a fixed output bias give every image the
    probabilities softmax(bias), so each metric has a closed form. The partial batch holds
    the only class-1 images: a mean of batch means would weigh them 1/3, Keras' mean over
    images (and the loop's) weighs them 6/70."""
    cfg = dataclasses.replace(small_cfg, l2=0.0, learning_rate=1e-12)  # the update moves nothing measurable
    model = _model(cfg)
    bias = np.array([2.0, 1.0] + [0.0] * 8, np.float32)
    model.set_weights([np.zeros_like(w) for w in model.get_weights()[:-1]] + [bias])
    p = np.exp(bias) / np.exp(bias).sum()
    (x, _), (xv, _) = _split(tiny_mnist)
    y = np.array([0] * 64 + [1] * 6)
    yv = np.array([1] * 10 + [3] * 20)
    loop = Loop(model, x, y, BATCH, seed=0, shuffle=False)
    row = loop.epoch()
    val_loss, val_accuracy, probabilities = loop.evaluate(xv, yv)
    assert row["loss"] == pytest.approx((64 * -math.log(p[0]) + 6 * -math.log(p[1])) / 70, rel=1e-5)
    assert row["accuracy"] == pytest.approx(64 / 70, rel=1e-6)  # every image is called a 0
    assert val_loss == pytest.approx((10 * -math.log(p[1]) + 20 * -math.log(p[3])) / 30, rel=1e-5)
    assert val_accuracy == 0.0
    np.testing.assert_allclose(probabilities, np.tile(p, (30, 1)), rtol=1e-5)


def test_evaluation_takes_raw_images_or_the_tensors_made_of_them_once(tiny_mnist, small_cfg):
    """Raw uint8 images, float32 images and the tensors ``evaluation_tensors`` made of them
    (as train makes the validation images' once, from arrays or tensors) evaluate the same."""
    (x, y), (xv, yv) = _split(tiny_mnist)
    loop = Loop(_model(small_cfg), x, y, BATCH, seed=0)
    loop.epoch()
    raw = tiny_mnist.x_train[N_FIT : N_FIT + len(yv)]
    assert raw.dtype == np.uint8
    inputs = [(raw, yv), (xv, yv), evaluation_tensors(raw, yv), evaluation_tensors(tf.constant(raw), yv)]
    assert inputs[3][0].dtype == tf.float32  # a uint8 tensor is cast
    results = [loop.evaluate(*pair) for pair in inputs]
    for loss, accuracy, probabilities in results[1:]:
        assert (loss, accuracy) == results[0][:2]
        np.testing.assert_array_equal(probabilities, results[0][2])


def test_shuffling_is_a_new_permutation_each_epoch_fixed_by_the_seed():
    orders = {epoch: epoch_order(1000, 42, tf.constant(epoch, tf.int64)).numpy() for epoch in (1, 2)}
    assert sorted(orders[1]) == list(range(1000))
    assert not np.array_equal(orders[1], orders[2])
    np.testing.assert_array_equal(orders[1], epoch_order(1000, 42, tf.constant(1, tf.int64)).numpy())
    assert not np.array_equal(orders[1], epoch_order(1000, 43, tf.constant(1, tf.int64)).numpy())


def test_fused_kernel_updates_keras_rmsprop_slots_and_nothing_else(tiny_mnist, small_cfg, monkeypatch):
    kernel, calls = tf.raw_ops.ResourceApplyRMSProp, []
    monkeypatch.setattr(tf.raw_ops, "ResourceApplyRMSProp", lambda **kw: calls.append(1) or kernel(**kw))
    (x, y), _ = _split(tiny_mnist)
    model = _model(small_cfg)
    Loop(model, x, y, BATCH, seed=0, fused=False).epoch()
    assert calls == []  # Keras' own ops
    model = _model(small_cfg)
    Loop(model, x, y, BATCH, seed=0, fused=True).epoch()
    assert len(calls) >= len(model.trainable_variables)  # traced once per weight (and batch shape)
    # what the model carries, and saves, is Keras' own RMSprop with its own slots only
    assert type(model.optimizer) is keras.optimizers.RMSprop
    assert len(model.optimizer.variables) == 2 + len(model.trainable_variables)  # iterations, rate, one slot each


def test_each_epoch_is_one_graph_traced_once(tiny_mnist):
    """The convnet's random rotations, zooms and shifts and its Dropout run inside the compiled
    epoch: three epochs trace it once, and evaluations of any number of images trace one
    evaluation."""
    cfg = resolve("convnet", {"conv_filters": (4,), "hidden_units": (8,), "epochs": 3})
    (x, y), (xv, yv) = _split(tiny_mnist, n=100, n_val=40)
    loop = Loop(_model(cfg), x, y, BATCH, seed=cfg.seed, augment=augment.for_config(cfg))
    losses = [loop.epoch()["loss"] for _ in range(3)]
    loop.evaluate(xv, yv)
    loop.evaluate(xv[:7], yv[:7])
    assert all(math.isfinite(loss) for loss in losses)
    assert loop._train.experimental_get_tracing_count() == 1
    assert loop._evaluate.experimental_get_tracing_count() == 1


@pytest.mark.parametrize(
    "dropout, moves",
    [(0.5, {}), (0.0, {"augment_shift": 0.1}), (0.0, {"augment_rotation": 10.0}), (0.0, {"augment_zoom": 0.1})],
    ids=["dropout", "shifts", "rotations", "zooms"],
)
def test_dropout_and_augmentation_act_in_training_only(tiny_mnist, dropout, moves):
    """At a learning rate too small to move the weights, the training loss (Dropout, or random
    shifts, rotations or zooms of the training images) differs from the loss of the same
    weights in inference mode (which never augments), the same twice; Dropout's training loss
    is the higher."""
    cfg = resolve("baseline", {"epochs": 1, "batch_size": BATCH, "learning_rate": 1e-12})
    cfg = dataclasses.replace(cfg, dropout=dropout, **moves)
    (x, y), _ = _split(tiny_mnist, n=200)
    loop = Loop(_model(cfg), x, y, BATCH, seed=cfg.seed, shuffle=False, augment=augment.for_config(cfg))
    training_loss = loop.epoch()["loss"]
    inference_loss, _, first = loop.evaluate(x, y)
    _, _, second = loop.evaluate(x, y)
    assert training_loss != pytest.approx(inference_loss, rel=1e-3), "nothing random acted in training"
    assert training_loss > inference_loss or not dropout
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("rate", [0.5, 0.2, 0.9])
def test_dropout_masks_as_keras_inverted_dropout_does(rate):
    """Each value kept with probability 1 - rate (within 5 standard deviations over 200,000
    values) and scaled by 1 / (1 - rate), the others 0; the seed alone decides the mask."""
    x = tf.random.uniform((200, 1000), 0.5, 1.5, seed=1)
    seed = tf.constant([42, 7], tf.int64)
    out = dropout(x, rate, seed).numpy()
    kept = out != 0
    spread = 5 * math.sqrt(rate * (1 - rate) / kept.size)
    assert abs(kept.mean() - (1 - rate)) < spread
    np.testing.assert_allclose(out[kept], x.numpy()[kept] / (1 - rate), rtol=1e-6)
    np.testing.assert_array_equal(dropout(x, rate, seed).numpy(), out)
    other = dropout(x, rate, tf.random.experimental.stateless_fold_in(seed, 1)).numpy() != 0
    assert (other != kept).mean() > 0.9 * 2 * rate * (1 - rate)  # another seed: an independent mask
    assert dropout(x, 0.0, seed) is x


def test_the_step_s_forward_pass_keeps_the_logits_it_ranks_classes_on(tiny_mnist, small_cfg):
    """The step counts its correct images on the softmax's input, which Keras' TensorFlow
    backend keeps on the softmax's output in a graph; were that gone, the step would rank
    on the probabilities (the same answer, the softmax computed again). Canary on the
    loop's own forward pass: the logits are there and give the probabilities."""
    (x, y), _ = _split(tiny_mnist)
    loop = Loop(_model(small_cfg), x, y, BATCH, seed=0)

    @tf.function
    def both():
        probabilities = loop._forward(tf.constant(x[:8]), tf.constant([1, 2], tf.int64))
        logits = _logits(probabilities)
        assert logits is not probabilities, "Keras no longer keeps the logits on its softmax's output"
        return probabilities, logits

    probabilities, logits = both()
    np.testing.assert_allclose(tf.nn.softmax(logits), probabilities, rtol=1e-6, atol=1e-7)


def test_the_loop_s_dropout_gives_keras_training_loss_on_average(tiny_mnist):
    """The same weights, in training mode: the mean loss over 400 masks of the loop's Dropout
    and of Keras' own Dropout layers agree within 2% (a scale 10% off is 16% away)."""
    cfg = resolve("regularized", {"hidden_units": (64, 32), "batch_size": BATCH})
    (x, y), _ = _split(tiny_mnist, n=200)
    model = _model(cfg)
    for weight in model.trainable_variables:  # larger weights: Dropout moves the loss far from inference's
        weight.assign(weight * 4)
    loop = Loop(model, x, y, BATCH, seed=0)
    copies = 40  # masks per forward pass: the images repeated
    x, target = tf.constant(np.tile(x, (copies, 1, 1))), tf.constant(np.tile(one_hot(y), (copies, 1)))

    def mean_loss(forward):
        return np.mean([float(model.compute_loss(y=target, y_pred=forward(i), training=True)) for i in range(10)])

    ours = mean_loss(lambda i: loop._forward(x, tf.constant([0, i], tf.int64)))
    keras_own = mean_loss(lambda i: model(x, training=True))
    inference = float(model.compute_loss(y=target, y_pred=model(x, training=False)))
    assert ours == pytest.approx(keras_own, rel=0.02) and ours > inference * 1.5


def test_train_reports_the_loop_phases(tiny_mnist):
    """The three phases are apart and within the call: each takes time, together no more than
    the wall time measured around train() (none counted twice); the epochs' phase holds every
    epoch's own seconds, and is what train_seconds reports."""
    cfg = resolve("baseline", {"epochs": 2, "batch_size": BATCH})
    start = time.perf_counter()
    result = train(cfg, tiny_mnist)
    wall = time.perf_counter() - start
    phases = result.phases
    assert set(phases) == {"build", "epochs", "test"} and min(phases.values()) > 0
    assert sum(phases.values()) <= wall
    assert 0 < result.history["epoch_seconds"].sum() <= phases["epochs"] == result.train_seconds < wall


def test_many_loops_in_one_process_warn_of_no_retracing(tiny_mnist, small_cfg):
    """Six models trained in one process (as `main`, `reproduce` and the benchmark do): each
    Loop traces once, and TensorFlow's retracing warning, which counts all instances
    together, does not reach the console."""
    (x, y), (xv, yv) = _split(tiny_mnist)
    with tensorflow_log_lines() as seen:
        for _ in range(6):
            loop = Loop(_model(small_cfg), x, y, BATCH, seed=0)
            loop.epoch()
            loop.evaluate(xv, yv)
            assert loop._train.experimental_get_tracing_count() == 1
    assert not [message for message in seen if "retracing" in message]
