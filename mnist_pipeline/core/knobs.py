"""The training knobs: every field of a training run's configuration, each declared once.

A knob holds its type, its default (one value for every variant, or each variant's own),
how its string is read, what it allows, its help, and what runs that did not log it trained
with. Everything else comes from ``KNOBS``: ``config.TrainConfig`` and its checks, the
overrides of `train`, `main` and `reproduce` (``params.Overrides``, so the CLI and MLproject's
parameters, which a test holds to them), a run's logged params and model card
(``TrainConfig.as_params``), and how `verify` reads a logged run (``config.logged_config``).

A new knob is one entry here and, if ``override``, its parameter in MLproject's three
training entry points. The code that acts on it reads ``cfg.<name>``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

EACH_VARIANT = "each variant's own"  # default: every variant sets it (core/variants.py)
ALWAYS_LOGGED = "always logged"  # unlogged: every run has logged it since the first


@dataclass(frozen=True)
class Knob:
    name: str
    type: Any  # the value's type in TrainConfig
    help: str  # what it does, for --help (the default is added)
    parse: Callable[[str], Any]  # a parameter's or a logged param's string; ValueError: not allowed
    allowed: str  # what ``ok`` allows, as the error message says it
    ok: Callable[[Any], bool]
    default: Any = EACH_VARIANT  # the value of every variant that does not set its own
    unlogged: Any = ALWAYS_LOGGED  # what a run that did not log it trained with
    override: bool = True  # a parameter of train, main and reproduce; False: set by a variant only

    def logged(self, value) -> str | int | float | bool:
        """The value as a run logs it (a tuple as comma-separated numbers, '' if empty)."""
        return ",".join(map(str, value)) if isinstance(value, tuple) else value


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _units(text: str) -> tuple[int, ...]:
    """'512,256,128' -> (512, 256, 128); '' (a dense net's logged conv_filters) -> ()."""
    return tuple(int(part) for part in text.split(",")) if text else ()


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def to_bool(text: str) -> bool:
    """true or false (also 1 or 0, yes or no, any case); ValueError otherwise."""
    if text.lower() not in _BOOLS:
        raise ValueError(text)
    return _BOOLS[text.lower()]


def _switch(name: str, help: str, **rest) -> Knob:
    return Knob(name, bool, help, to_bool, "must be true or false", lambda v: isinstance(v, bool), **rest)


# 3x3 conv + 2x2 max-pool blocks that fit a 28x28 image: 28 -> 13 -> 5 -> 1 pixels a side.
MAX_CONV_BLOCKS = 3

# In TrainConfig's field order, which is also the order of a run's params and model card.
# The defaults are ours: the study names the optimizer (RMSprop) and the loss (categorical
# cross-entropy), not these.
KNOBS: dict[str, Knob] = {
    knob.name: knob
    for knob in (
        Knob(
            "hidden_units",
            tuple[int, ...],
            "comma-separated widths of the hidden Dense layers, e.g. 512,256,128",
            _units,
            "must be one or more positive integers separated by commas, e.g. 512,256,128",
            lambda v: len(v) > 0 and all(_int(u) and u > 0 for u in v),
        ),
        Knob(
            "conv_filters",
            tuple[int, ...],
            "comma-separated filters of the 3x3 conv + 2x2 max-pool blocks, e.g. 32,64",
            _units,
            f"must be at most {MAX_CONV_BLOCKS} positive integers separated by commas, e.g. 32,64",
            lambda v: len(v) <= MAX_CONV_BLOCKS and all(_int(f) and f > 0 for f in v),
            default=(),  # a dense net
        ),
        Knob(
            "dropout",
            float,
            "Dropout rate after each hidden layer, in [0, 1)",
            float,
            "must be a number in [0, 1)",
            lambda v: _finite(v) and 0 <= v < 1,
        ),
        Knob(
            "l2",
            float,
            "L2 factor on hidden kernels, >= 0 (0: none)",
            float,
            "must be a number >= 0",
            lambda v: _finite(v) and v >= 0,
            default=0.0,
        ),
        Knob("epochs", int, "training epochs, >= 1", int, "must be an integer >= 1", lambda v: _int(v) and v >= 1),
        Knob(
            "batch_size",
            int,
            "images per step, >= 1",
            int,
            "must be an integer >= 1",
            lambda v: _int(v) and v >= 1,
            default=128,
        ),
        Knob(
            "learning_rate",
            float,
            "RMSprop learning rate, > 0 (convnet: the first step's, decaying to 0)",
            float,
            "must be a number > 0",
            lambda v: _finite(v) and v > 0,
            default=1e-3,  # Keras' default
        ),
        Knob(
            "validation_split",
            float,
            "fraction of training images held out, in (0, 1)",
            float,
            "must be a number in (0, 1)",
            lambda v: _finite(v) and 0 < v < 1,
            default=0.1,
        ),
        Knob(
            "seed",
            int,
            "random seed, integer >= 0",  # seeds Python, NumPy and TensorFlow once per run
            int,
            "must be an integer in [0, 2**32)",
            lambda v: _int(v) and 0 <= v < 2**32,
            default=42,
        ),
        Knob(
            "augment_shift",
            float,
            "random shift of training images, fraction of the side (0: none)",
            float,
            "must be a number in [0, 0.5)",
            lambda v: _finite(v) and 0 <= v < 0.5,
            default=0.0,
            unlogged=0.0,
            override=False,
        ),
        _switch(
            "cosine_decay",
            "true: the learning rate falls from learning_rate to 0 over the run's steps; false: constant",
            default=False,
            unlogged=False,
            override=False,
        ),
        # RMSprop's update as TensorFlow's one fused kernel per weight (called by fit.Loop)
        # instead of Keras 3's ~10 element-wise ops: the same formula, rounded in another
        # order (float32 last-bit differences); five seeds per variant showed no accuracy
        # change (docs/seeds.md). Runs from before it trained with Keras' ops.
        _switch(
            "fused_rmsprop",
            "true: RMSprop in TensorFlow's one fused kernel (faster, other rounding); false: Keras' ops",
            default=True,
            unlogged=False,
        ),
    )
}

OVERRIDABLE: tuple[str, ...] = tuple(name for name, knob in KNOBS.items() if knob.override)
