"""The training loop: one compiled TensorFlow call per epoch, one per evaluation.

Keras' ``fit`` pays per step for its data adapter, its metric objects and its optimizer's
bookkeeping; this loop does what the study needs inside one graph. The network is still
the Keras model from models.py: its layers are called with ``training=True``, each Dropout
layer as a mask the loop draws (``dropout``: Keras' inverted Dropout from fewer random
bits), after the batch's augmentation if any (augment.py). Its loss is the compiled
categorical cross-entropy on the softmax output plus, for each kernel with an L2
regularizer, l2 * sum(w ** 2), whose gradient the loop adds itself; its optimizer is the
compiled ``keras.optimizers.RMSprop``, whose slots are the ones updated and saved. Per
epoch, as Keras' ``fit`` reports them:

- ``loss`` and ``accuracy``: means over the epoch's training images of each batch's loss
  (before its update, with Dropout active) and of its categorical accuracy;
- ``val_loss`` and ``val_accuracy``: the same over the validation images with the
  epoch's final weights, in inference mode.

The images are shuffled every epoch by an order drawn from the seed and the epoch number;
the last batch is the remainder, smaller than the others, as in Keras.
"""

import functools
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from mnist_pipeline.core.data import NUM_CLASSES

EVAL_BATCH = 1000  # images per forward pass when evaluating; the convnet's activations bound it
AUGMENT_STREAM = -1  # the augmentation's draws from a step's seed, apart from the Dropout masks' (0, 1, ...)


class Loop:
    """Trains ``model`` (compiled with RMSprop) on images ``x`` (raw pixels, any dtype: each
    batch is cast to float32, so uint8 images stay a quarter of the memory) and labels ``y``.

    ``fused``: each weight's RMSprop update is TensorFlow's one fused kernel
    (``ResourceApplyRMSProp``: Keras' formula, rounded in another order) instead of Keras'
    ~10 element-wise ops (``optimizer.apply``). ``shuffle=False`` keeps the given order.
    ``augment(images, seed)``: what each training batch becomes before the model sees it
    (augment.py's random rotations, zooms and shifts), drawn from the step's seed.
    """

    def __init__(
        self,
        model: keras.Model,
        x,
        y,
        batch_size: int,
        seed: int,
        fused: bool = True,
        shuffle: bool = True,
        augment: Callable | None = None,
    ):
        optimizer = model.optimizer
        if not isinstance(optimizer, keras.optimizers.RMSprop) or optimizer.momentum or optimizer.centered:
            raise ValueError("Loop trains with plain RMSprop only (no momentum, not centered)")
        if model.loss != "categorical_crossentropy":
            raise ValueError(f"Loop trains with the categorical cross-entropy only, not {model.loss!r}")
        self.model, self.batch_size, self.fused, self.shuffle = model, batch_size, fused, shuffle
        self.augment = augment
        self.x, self.labels = tf.constant(x), tf.constant(y, tf.int32)
        self._seed = seed
        self._epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._weights = model.trainable_variables
        self._l2 = _l2_factors(model, self._weights)
        optimizer.build(self._weights)
        # the fused kernel's momentum slot: with momentum 0 never read back, and not the optimizer's
        self._scratch = [tf.Variable(tf.zeros(w.shape, w.dtype), trainable=False) for w in self._weights * fused]
        # Each Loop traces its epoch once and its evaluation once (any number of images). Each is
        # a partial: TensorFlow counts traces per function code, all instances together, and warns
        # of retracing after 5 in 11 calls; a partial has no code, so each Loop's are counted alone.
        # autograph off: the loops are tf.while_loop already, and converting the Python took
        # half of the trace (0.5-0.8 s a run here) for the same graph
        self._train = tf.function(functools.partial(self._train_epoch), autograph=False)
        self._evaluate = tf.function(
            functools.partial(self._evaluate_all),
            input_signature=[tf.TensorSpec((None, *x.shape[1:]), tf.float32), tf.TensorSpec((None,), tf.int32)],
            autograph=False,
        )

    def trace(self) -> None:
        """Build the epoch's graph now, so that the first epoch times training only."""
        self._train.get_concrete_function()

    def epoch(self) -> dict[str, float]:
        """One pass over the training images: their mean ``loss`` and ``accuracy``."""
        loss, accuracy = self._train()
        return {"loss": float(loss), "accuracy": float(accuracy)}

    def evaluate(self, x, y) -> tuple[float, float, np.ndarray]:
        """Mean loss, accuracy and the probabilities (n, 10) of ``x`` in inference mode.
        ``x``, ``y``: arrays, or the tensors ``evaluation_tensors`` made of them once."""
        loss, accuracy, probabilities = self._evaluate(*evaluation_tensors(x, y))
        return float(loss), float(accuracy), probabilities.numpy()

    # graph code below: traced once per input shape

    def _train_epoch(self):
        n = self.x.shape[0]
        self._epoch.assign_add(1)
        order = epoch_order(n, self._seed, self._epoch) if self.shuffle else tf.range(n)
        epoch_seed = tf.stack([tf.constant(self._seed, tf.int64), self._epoch])

        def step(i, indices):
            x, labels = tf.cast(tf.gather(self.x, indices), tf.float32), tf.gather(self.labels, indices)
            seed = tf.random.experimental.stateless_fold_in(epoch_seed, i)
            if self.augment is not None:  # outside the tape: nothing to differentiate
                x = self.augment(x, tf.random.experimental.stateless_fold_in(seed, AUGMENT_STREAM))
            with tf.GradientTape() as tape:
                probabilities = self._forward(x, seed)
                loss = _cross_entropy(labels, probabilities)
            gradients = tape.gradient(loss, self._weights)
            # L2 as Keras adds it, l2 * sum(w ** 2) to the loss, its gradient 2 * l2 * w added here
            for index, factor in self._l2.items():
                loss += 2 * factor * tf.nn.l2_loss(self._weights[index])  # l2_loss: sum(w ** 2) / 2
                gradients[index] += 2 * factor * self._weights[index]
            self._apply(gradients)
            return loss, _correct(labels, _logits(probabilities))

        return _sums_over_batches(order, self.batch_size, step)

    def _forward(self, x, seed):
        """The model's layers in training mode, each Dropout as a mask drawn here from ``seed``
        (the epoch's and the step's) and the layer's place: see ``dropout``."""
        dropped = 0
        for layer in self.model.layers:
            if isinstance(layer, keras.layers.Dropout):
                x = dropout(x, layer.rate, tf.random.experimental.stateless_fold_in(seed, dropped))
                dropped += 1
            else:
                x = layer(x, training=True)
        return x

    def _apply(self, gradients) -> None:
        optimizer = self.model.optimizer
        if not self.fused:
            optimizer.apply(gradients, self._weights)
            return
        learning_rate = tf.cast(optimizer.learning_rate, tf.float32)
        for index, (weight, gradient) in enumerate(zip(self._weights, gradients)):
            tf.raw_ops.ResourceApplyRMSProp(
                var=weight.handle,  # a Keras variable's handle is the one of the TensorFlow variable it wraps
                ms=optimizer._velocities[index].handle,  # RMSprop's one slot per weight, saved with the model
                mom=self._scratch[index].handle,  # the kernel's momentum slot: zero momentum, never read back
                lr=learning_rate,
                rho=tf.constant(optimizer.rho, tf.float32),
                momentum=tf.constant(0.0, tf.float32),
                epsilon=tf.constant(optimizer.epsilon, tf.float32),
                grad=gradient,
            )
        optimizer.iterations.assign_add(1)

    def _evaluate_all(self, x, labels):
        n = tf.shape(x)[0]
        steps = (n + EVAL_BATCH - 1) // EVAL_BATCH

        def body(i, loss_sum, correct_sum, kept):
            start = i * EVAL_BATCH
            end = tf.minimum(start + EVAL_BATCH, n)
            batch_labels = labels[start:end]
            probabilities = self.model(x[start:end], training=False)
            loss = self.model.compute_loss(y=_one_hot(batch_labels), y_pred=probabilities, training=False)
            loss_sum += loss * tf.cast(end - start, tf.float32)  # the last batch holds the remainder
            correct_sum += _correct(batch_labels, probabilities)
            return i + 1, loss_sum, correct_sum, kept.write(i, probabilities)

        kept = tf.TensorArray(tf.float32, size=steps, element_shape=(None, NUM_CLASSES), infer_shape=False)
        start = (tf.constant(0), tf.constant(0.0), tf.constant(0.0), kept)
        _, loss_sum, correct_sum, kept = tf.while_loop(lambda i, *_: i < steps, body, start)
        count = tf.cast(n, tf.float32)
        return loss_sum / count, correct_sum / count, kept.concat()


def evaluation_tensors(x, y) -> tuple[tf.Tensor, tf.Tensor]:
    """Images ``x`` as float32 and labels ``y`` as int32, the tensors ``Loop.evaluate`` takes
    (a tensor already of its type is kept). Made once for the images evaluated every epoch:
    converting 6,000 raw images took 4-8 ms here, 1-2% of the baseline's epoch."""
    return _tensor(x, tf.float32), _tensor(y, tf.int32)


def _tensor(value, dtype) -> tf.Tensor:
    return tf.cast(value, dtype) if isinstance(value, tf.Tensor) else tf.constant(value, dtype)  # cast: kept if so


def epoch_order(n: int, seed: int, epoch) -> tf.Tensor:
    """The order of the ``n`` training images in ``epoch``: a permutation drawn from the
    seed and the epoch number alone, so a run is the same wherever it resumes or runs."""
    return tf.random.experimental.stateless_shuffle(tf.range(n), seed=tf.stack([tf.constant(seed, tf.int64), epoch]))


def _sums_over_batches(order, batch_size: int, step):
    """``step(i, indices)`` -> (batch mean loss, correct count) over consecutive batches of
    ``order``, the last one the remainder (its own static shape); returns the mean loss and
    the accuracy over all images, each batch weighted by its size."""
    n = order.shape[0]
    full, rest = divmod(n, batch_size)
    batches = tf.reshape(order[: full * batch_size], [full, batch_size])  # each batch of static shape

    def body(i, loss_sum, correct_sum):
        loss, correct = step(i, batches[i])
        return i + 1, loss_sum + loss * batch_size, correct_sum + correct

    zero = tf.constant(0.0)
    _, loss_sum, correct_sum = tf.while_loop(lambda i, *_: i < full, body, (tf.constant(0), zero, zero))
    if rest:
        loss, correct = step(tf.constant(full), order[full * batch_size :])
        loss_sum, correct_sum = loss_sum + loss * rest, correct_sum + correct
    return loss_sum / n, correct_sum / n


def dropout(x, rate: float, seed) -> tf.Tensor:
    """Inverted Dropout as Keras' layer does it in training: each value kept with probability
    1 - ``rate`` and scaled by 1 / (1 - rate), the others 0. The draw is 16 random bits per
    value (two from each 32-bit number, against Keras' one float each), so the rate is taken
    to the nearest 1/65536; ``seed`` (shape [2]) decides the mask. ``x`` has a static shape.
    The mask is multiplied in, not selected (``tf.where``): the same values for finite ``x``
    (a dropped inf or NaN gives NaN, not 0), and a gradient of one pass (a select's computes
    both branches), 5-9% of an epoch here (docs/speed.md)."""
    if rate == 0:
        return x
    count = int(np.prod(x.shape))
    words = tf.random.stateless_uniform([(count + 1) // 2], seed, minval=None, maxval=None, dtype=tf.uint32)
    draws = tf.reshape(tf.bitcast(words, tf.uint16), [-1])[:count]
    kept = tf.reshape(draws >= tf.constant(min(round(rate * 65536), 65535), tf.uint16), x.shape)
    return x * tf.cast(kept, x.dtype) * (1 / (1 - rate))


def _l2_factors(model: keras.Model, weights) -> dict[int, float]:
    """The index in ``weights`` and the L2 factor of every kernel with an L2 regularizer;
    ValueError for any other regularizer (the loop adds L2's terms itself)."""
    factors = {}
    for layer in model.layers:
        for kind in ("kernel", "bias", "activity"):
            regularizer = getattr(layer, f"{kind}_regularizer", None)
            if regularizer is None:
                continue
            if kind != "kernel" or type(regularizer) is not keras.regularizers.L2:
                raise ValueError(f"Loop adds L2 on kernels only; {layer.name} has {kind}_regularizer {regularizer}")
            [index] = [i for i, weight in enumerate(weights) if weight is layer.kernel]
            factors[index] = float(regularizer.l2)
    return factors


def _cross_entropy(labels, probabilities):
    """The compiled loss, categorical cross-entropy on the softmax output, as Keras computes it."""
    return tf.reduce_mean(keras.losses.categorical_crossentropy(_one_hot(labels), probabilities))


def _correct(labels, scores):
    """How many of the batch's images have their label as the class of highest ``scores``
    (probabilities, or the logits they come from: the same order, but where two logits so
    close that their probabilities round to one value rank apart)."""
    hits = tf.equal(labels, tf.argmax(scores, axis=-1, output_type=tf.int32))
    return tf.reduce_sum(tf.cast(hits, tf.float32))


def _logits(probabilities):
    """The softmax's input where Keras' TensorFlow backend keeps it on the softmax's output
    (its cross-entropy reads it there too), else ``probabilities``. A training step ranks the
    classes on the logits, so that nothing but the loss needs the softmax: about 4% of an epoch."""
    return getattr(probabilities, "_keras_logits", probabilities)


def _one_hot(labels):
    return tf.one_hot(labels, NUM_CLASSES, dtype=tf.float32)
