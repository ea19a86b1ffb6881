"""Model builders. The network reads like the study's table: optional conv/pool blocks,
then Dense layers with Dropout after each."""

from __future__ import annotations

import keras
import tensorflow as tf

from mnist_pipeline.core.config import TrainConfig
from mnist_pipeline.core.data import IMAGE_SHAPE, NUM_CLASSES


def build_model(cfg: TrainConfig) -> keras.Model:
    """A compiled network taking raw (n, 28, 28) pixels 0-255, giving 10 probabilities."""
    kernel_regularizer = keras.regularizers.L2(cfg.l2) if cfg.l2 > 0 else None
    image = []  # conv blocks and shifts work on (28, 28, 1) images; the dense nets need neither
    if cfg.conv_filters or cfg.augment_shift:
        image.append(keras.layers.Reshape((*IMAGE_SHAPE, 1)))
    if cfg.augment_shift:  # shifted copies of the training images, black borders; inactive at inference
        shift = cfg.augment_shift
        image.append(keras.layers.RandomTranslation(shift, shift, fill_mode="constant"))
    conv = []
    for filters in cfg.conv_filters:
        conv += [
            keras.layers.Conv2D(filters, 3, activation="relu", kernel_regularizer=kernel_regularizer),
            keras.layers.MaxPooling2D(2),
        ]
    hidden = []
    for units in cfg.hidden_units:
        hidden += [
            keras.layers.Dense(units, activation="relu", kernel_regularizer=kernel_regularizer),
            keras.layers.Dropout(cfg.dropout),
        ]
    model = keras.Sequential(
        [
            keras.Input(shape=IMAGE_SHAPE, dtype="float32"),
            # scale inside the model, so every consumer sends the same raw images
            keras.layers.Rescaling(1.0 / 255),
            *image,
            *conv,
            keras.layers.Flatten(),
            *hidden,
            keras.layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name=cfg.variant,
    )
    optimizer = keras.optimizers.RMSprop(learning_rate=cfg.learning_rate)
    if cfg.fused_rmsprop:
        fuse_rmsprop(optimizer)
    model.compile(
        optimizer=optimizer,
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=cfg.steps_per_execution,
    )
    return model


def fuse_rmsprop(optimizer: keras.optimizers.RMSprop) -> None:
    """Make ``optimizer`` update each weight with TensorFlow's fused RMSprop kernel.

    Keras 3 applies RMSprop (no momentum, not centered) as ~10 element-wise TensorFlow ops
    per weight per step, each a pass over memory: 42% of the final variant's op time in the
    profile, 19% with this kernel. ``ResourceApplyRMSProp`` (tf.keras 2's RMSprop ran it
    when momentum > 0) computes Keras 3's formula, ``ms = rho*ms + (1-rho)*g**2``,
    ``var -= lr*g / sqrt(ms + epsilon)``, in one pass, with its own order of float32
    roundings: weights differ from Keras' in the last bits.

    The instance keeps its class, config and slots, so a saved model is a plain RMSprop one
    for any Keras. The kernel's momentum slot (with momentum 0 it only carries the step) is
    a scratch variable the optimizer does not track: it is never saved.
    """
    if optimizer.momentum or optimizer.centered:
        raise ValueError("fuse_rmsprop: only plain RMSprop (no momentum, not centered)")
    keras_build = optimizer.build
    scratch: list[tf.Variable] = []

    def build(variables):
        if optimizer.built:  # as Keras' own build: once
            return
        keras_build(variables)
        scratch[:] = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False) for v in variables]

    def update_step(gradient, variable, learning_rate):
        index = optimizer._get_variable_index(variable)  # as Keras' own RMSprop.update_step
        dtype = variable.dtype
        tf.raw_ops.ResourceApplyRMSProp(
            var=_handle(variable),
            ms=_handle(optimizer._velocities[index]),
            mom=scratch[index].handle,
            lr=tf.cast(learning_rate, dtype),
            rho=tf.constant(optimizer.rho, dtype),
            momentum=tf.constant(0.0, dtype),
            epsilon=tf.constant(optimizer.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )

    optimizer.build, optimizer.update_step = build, update_step


def _handle(variable) -> tf.Tensor:
    """The resource handle of a TensorFlow variable, or of the one a Keras variable wraps."""
    return variable.handle if isinstance(variable, tf.Variable) else variable.value.handle
