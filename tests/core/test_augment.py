"""augment.random_affine moves a digit as far as its ranges allow, no further, both ways."""

import numpy as np
import pytest
import tensorflow as tf

from mnist_pipeline.core import augment
from mnist_pipeline.core.augment import CENTER, SIDE, random_affine
from mnist_pipeline.core.config import resolve
from mnist_pipeline.core.variants import VARIANTS

RADIUS = 8.0  # the test blob's distance right of the centre, in pixels
COPIES = 400


def _blob_copies():
    """COPIES images of one smooth blob RADIUS pixels right of the centre (its centroid is
    where it is put, and bilinear resampling keeps it where the map sends it)."""
    rows, cols = np.mgrid[0:SIDE, 0:SIDE]
    blob = 255 * np.exp(-((rows - CENTER) ** 2 + (cols - CENTER - RADIUS) ** 2) / (2 * 1.2**2))
    return tf.constant(np.repeat(blob[None], COPIES, axis=0), tf.float32)


def _centroids(images):
    """Each image's centroid as (x, y) from the centre: x to the right, y down."""
    images = np.asarray(images, np.float64)
    rows, cols = np.mgrid[0:SIDE, 0:SIDE]
    mass = images.sum(axis=(1, 2))
    return (images * cols).sum(axis=(1, 2)) / mass - CENTER, (images * rows).sum(axis=(1, 2)) / mass - CENTER


def _moved(**ranges):
    return _centroids(random_affine(_blob_copies(), tf.constant([3, 4], tf.int64), **ranges))


def test_shifts_move_up_to_the_fraction_of_the_side_each_way():
    x, y = _moved(rotation=0.0, zoom=0.0, shift=0.1)
    largest = 0.1 * SIDE  # 2.8 pixels
    for moves in (x - RADIUS, y):
        assert np.abs(moves).max() <= largest + 0.05
        assert moves.min() < -0.8 * largest and moves.max() > 0.8 * largest  # both ways, near the bound


def test_rotations_turn_about_the_centre_up_to_the_angle_each_way():
    x, y = _moved(rotation=10.0, zoom=0.0, shift=0.0)
    np.testing.assert_allclose(np.hypot(x, y), RADIUS, atol=0.05)  # the distance from the centre is kept
    degrees = np.degrees(np.arctan2(y, x))
    assert np.abs(degrees).max() <= 10.0 + 0.3
    assert degrees.min() < -8 and degrees.max() > 8


def test_zooms_scale_about_the_centre_up_to_the_fraction_in_or_out():
    x, y = _moved(rotation=0.0, zoom=0.1, shift=0.0)
    np.testing.assert_allclose(y, 0.0, atol=0.02)  # the direction from the centre is kept
    scale = x / RADIUS  # an input pixel per 1 + z output pixels: the digit grows by 1 / (1 + z)
    assert scale.min() >= 1 / 1.1 - 0.01 and scale.max() <= 1 / 0.9 + 0.01
    assert scale.min() < 1 / 1.08 and scale.max() > 1 / 0.92


def test_the_seed_decides_every_draw_and_nothing_moves_without_ranges():
    images, seed = _blob_copies(), tf.constant([3, 4], tf.int64)
    ranges = {"rotation": 10.0, "zoom": 0.1, "shift": 0.1}
    first = random_affine(images, seed, **ranges)
    np.testing.assert_array_equal(first, random_affine(images, seed, **ranges))
    assert not np.array_equal(first, random_affine(images, seed + 1, **ranges))
    # the identity, but for the blob's tails below float32's normal range, which the kernel flushes to 0
    np.testing.assert_allclose(random_affine(images, seed, 0.0, 0.0, 0.0), images, rtol=0, atol=1e-37)


@pytest.mark.parametrize("name", VARIANTS)
def test_only_the_convnet_is_augmented_with_its_config_s_ranges(name):
    cfg = resolve(name)
    augmentation = augment.for_config(cfg)
    assert (augmentation is not None) == (name == "convnet")
    if augmentation is not None:
        ranges = {"rotation": cfg.augment_rotation, "zoom": cfg.augment_zoom, "shift": cfg.augment_shift}
        assert augmentation.keywords == ranges and all(ranges.values())
