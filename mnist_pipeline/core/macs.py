"""What a configuration costs, counted without running it: the multiply-adds of its matrix
products and convolutions per image, and the FLOPs of an epoch. benchmarks/speed.py's roofline
times them; tracking/training_dispatch.py starts the costliest trainings first."""

import math

from mnist_pipeline.core.config import TrainConfig
from mnist_pipeline.core.data import IMAGE_SHAPE, NUM_CLASSES

KERNEL = 3  # conv kernels are 3x3, "valid", each followed by a 2x2 max-pool (models.py)


def linear_layers(cfg: TrainConfig) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(input shape of one image, weight shape) of each conv and Dense layer, in order."""
    layers, side, channels = [], IMAGE_SHAPE[0], 1
    for filters in cfg.conv_filters:
        layers.append(((side, side, channels), (KERNEL, KERNEL, channels, filters)))
        side, channels = (side - KERNEL + 1) // 2, filters
    widths = (side * side * channels, *cfg.hidden_units, NUM_CLASSES)  # each Dense layer's input, then its output
    return layers + [((n_in,), (n_in, n_out)) for n_in, n_out in zip(widths, widths[1:])]


def layer_macs(cfg: TrainConfig) -> list[int]:
    """Multiply-adds of each layer's forward pass, per image: its weights times the places
    they apply at (a conv kernel at each output pixel, a Dense layer's weights once)."""
    return [
        ((shape[0] - KERNEL + 1) ** 2 if len(weight) == 4 else 1) * math.prod(weight)
        for shape, weight in linear_layers(cfg)
    ]


def training_macs(cfg: TrainConfig) -> int:
    """Multiply-adds per training image: forward, weight gradients, and the input gradients
    of every layer but the first (nothing trainable lies below it: TensorFlow skips that
    product, and so does the roofline)."""
    macs = layer_macs(cfg)
    return 3 * sum(macs) - macs[0]


def epoch_flops(cfg: TrainConfig, n_train: int, n_val: int) -> float:
    """FLOPs (2 per multiply-add) of one epoch: training steps, then a forward pass over
    the validation images."""
    return 2.0 * (training_macs(cfg) * n_train + sum(layer_macs(cfg)) * n_val)
