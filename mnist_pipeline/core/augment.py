"""Random rotations, zooms and shifts of the training images, composed into one affine map per
image, so that an image is resampled once however many are asked (Keras' RandomRotation,
RandomZoom and RandomTranslation one after the other resample it three times, blurring the
digits and taking longer; docs/seeds.md has the trial of both).

fit.Loop applies it to each training batch before the model, from the step's seed: the model
never holds it, so a saved model is plain Keras layers that any consumer loads.
"""

import functools
import math
from collections.abc import Callable

import keras
import tensorflow as tf

from mnist_pipeline.core.config import TrainConfig
from mnist_pipeline.core.data import IMAGE_SHAPE

SIDE = IMAGE_SHAPE[0]
CENTER = (SIDE - 1) / 2  # the point rotations and zooms keep in place: the middle of the pixel grid


def for_config(cfg: TrainConfig) -> Callable | None:
    """``random_affine`` with ``cfg``'s ranges, or None where ``cfg`` augments nothing."""
    ranges = {"rotation": cfg.augment_rotation, "zoom": cfg.augment_zoom, "shift": cfg.augment_shift}
    return functools.partial(random_affine, **ranges) if any(ranges.values()) else None


def random_affine(images, seed, rotation: float, zoom: float, shift: float) -> tf.Tensor:
    """``images`` (n, 28, 28) float32, each turned by up to ``rotation`` degrees either way,
    scaled by up to ``zoom`` (a fraction) in or out and moved by up to ``shift`` of the side
    along each axis, about the image's centre: four uniform draws per image from ``seed``
    (shape [2]). Bilinear; what comes from outside the image is black (0)."""
    n = tf.shape(images)[0]
    draws = tf.random.stateless_uniform((4, n), seed, minval=-1.0, maxval=1.0)
    angle = draws[0] * (rotation * math.pi / 180)
    scale = 1 + draws[1] * zoom  # input pixels per output pixel: above 1 the digit shrinks
    move_x, move_y = draws[2] * (shift * SIDE), draws[3] * (shift * SIDE)
    cos, sin = tf.cos(angle) * scale, tf.sin(angle) * scale  # the rotation's entries, scaled
    # each output pixel p samples the input at R (p - c) + c + move; the rows of R are (cos, -sin), (sin, cos)
    zeros = tf.zeros_like(cos)
    transforms = tf.stack(
        [cos, -sin, CENTER * (1 - cos + sin) + move_x, sin, cos, CENTER * (1 - sin - cos) + move_y, zeros, zeros],
        axis=1,
    )
    moved = keras.ops.image.affine_transform(
        images[..., None], transforms, "bilinear", "constant", data_format="channels_last"
    )
    return moved[..., 0]
