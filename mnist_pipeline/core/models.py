"""Model builders. The network reads like the study's table: optional conv/pool blocks,
then Dense layers with Dropout after each."""

import keras

from mnist_pipeline.core.config import LOSS, TrainConfig
from mnist_pipeline.core.data import IMAGE_SHAPE, NUM_CLASSES


def build_model(cfg: TrainConfig, steps_per_epoch: int | None = None) -> keras.Model:
    """A compiled network taking raw (n, 28, 28) pixels 0-255, giving 10 probabilities; the
    training images' augmentation is fit.Loop's, not a layer here. ``steps_per_epoch``:
    gradient steps per epoch, which a decaying learning rate needs."""
    kernel_regularizer = keras.regularizers.L2(cfg.l2) if cfg.l2 > 0 else None
    # conv blocks work on (28, 28, 1) images; the dense nets on the pixels as given
    image = [keras.layers.Reshape((*IMAGE_SHAPE, 1))] if cfg.conv_filters else []
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
    # compiled for its consumers (evaluate, the registry's Keras flavor) and for fit.Loop,
    # which trains with this optimizer's slots and the compiled loss (the one runs log as `loss`)
    rmsprop = keras.optimizers.RMSprop(learning_rate=learning_rate(cfg, steps_per_epoch))
    model.compile(optimizer=rmsprop, loss=LOSS, metrics=["accuracy"])
    return model


def learning_rate(cfg: TrainConfig, steps_per_epoch: int | None):
    """RMSprop's rate: ``cfg.learning_rate`` throughout, or with ``cfg.cosine_decay`` falling
    from it to 0 along a cosine over the run's steps (a Keras schedule, saved with the model)."""
    if not cfg.cosine_decay:
        return cfg.learning_rate
    if not steps_per_epoch:
        raise ValueError(f"{cfg.variant}: a decaying learning rate needs steps_per_epoch")
    return keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=cfg.epochs * steps_per_epoch)
