"""Run configuration: one frozen dataclass, its defaults, and all parameter validation.

Every entry point turns its raw string parameters into a ``TrainConfig`` through
``resolve``; code past this module trusts the config.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from mnist_pipeline.errors import UserError
from mnist_pipeline.variants import VARIANTS

# Defaults shared by every variant. The study names the optimizer (RMSprop) and loss
# (categorical cross-entropy) but not these; the values below are ours.
BATCH_SIZE = 128  # images per gradient step
LEARNING_RATE = 1e-3  # RMSprop step size (Keras' default)
VALIDATION_SPLIT = 0.1  # fraction of the 60,000 training images held out for validation
SEED = 42  # seeds Python, NumPy and TensorFlow once per run
# Gradient steps per call from Python into TensorFlow. It changes no number (the same
# updates in the same order) and cut an epoch by 25-30% here (see `mnist-pipeline bench`).
STEPS_PER_EXECUTION = 128

OPTIMIZER = "rmsprop"
LOSS = "categorical_crossentropy"

# Names of the fields a run may override; an override left unset takes the variant's value.
OVERRIDABLE = (
    "hidden_units",
    "dropout",
    "l2",
    "epochs",
    "batch_size",
    "learning_rate",
    "validation_split",
    "seed",
)


class ConfigError(UserError, ValueError):
    """A parameter value that is not allowed; the message is one line for the user."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides one training run, validated at construction."""

    variant: str
    hidden_units: tuple[int, ...]
    dropout: float
    l2: float
    epochs: int
    batch_size: int = BATCH_SIZE
    learning_rate: float = LEARNING_RATE
    validation_split: float = VALIDATION_SPLIT
    seed: int = SEED
    steps_per_execution: int = STEPS_PER_EXECUTION  # speed only; not a study parameter

    def __post_init__(self):
        for name, (allowed, ok) in _CHECKS.items():
            value = getattr(self, name)
            if not ok(value):
                raise ConfigError(f"{name}={_show(value)} is not allowed: {allowed}")

    def as_params(self) -> dict[str, str | int | float]:
        """Flat dict for logging: the same keys for every variant."""
        params = asdict(self)
        params["hidden_units"] = ",".join(map(str, self.hidden_units))
        return params


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


_CHECKS = {
    "variant": (f"must be one of {', '.join(VARIANTS)}", lambda v: v in VARIANTS),
    "hidden_units": (
        "must be one or more positive integers separated by commas, e.g. 512,256,128",
        lambda v: len(v) > 0 and all(_int(u) and u > 0 for u in v),
    ),
    "dropout": ("must be a number in [0, 1)", lambda v: _finite(v) and 0 <= v < 1),
    "l2": ("must be a number >= 0", lambda v: _finite(v) and v >= 0),
    "epochs": ("must be an integer >= 1", lambda v: _int(v) and v >= 1),
    "batch_size": ("must be an integer >= 1", lambda v: _int(v) and v >= 1),
    "learning_rate": ("must be a number > 0", lambda v: _finite(v) and v > 0),
    "validation_split": (
        "must be a number in (0, 1)",
        lambda v: _finite(v) and 0 < v < 1,
    ),
    "seed": ("must be an integer in [0, 2**32)", lambda v: _int(v) and 0 <= v < 2**32),
    "steps_per_execution": ("must be an integer >= 1", lambda v: _int(v) and v >= 1),
}


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "''"
    return repr(value) if isinstance(value, str) else str(value)


def _parse_int(text: str) -> int:
    return int(text)


def _parse_units(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


# How each overridable field is read from a command-line / MLproject string.
_PARSERS = {
    "hidden_units": _parse_units,
    "dropout": float,
    "l2": float,
    "epochs": _parse_int,
    "batch_size": _parse_int,
    "learning_rate": float,
    "validation_split": float,
    "seed": _parse_int,
}


def parse_overrides(raw: dict[str, str | None]) -> dict:
    """Read string overrides; ``None`` or an empty string means "the variant's value"."""
    parsed = {}
    for name, text in raw.items():
        if name not in _PARSERS:
            raise ConfigError(f"{name} is not a parameter: use one of {', '.join(_PARSERS)}")
        if text is None or str(text).strip() == "":
            continue
        try:
            parsed[name] = _PARSERS[name](str(text).strip())
        except ValueError:
            allowed = _CHECKS[name][0]
            raise ConfigError(f"{name}={text!r} is not allowed: {allowed}") from None
    return parsed


def resolve(variant: str, overrides: dict | None = None) -> TrainConfig:
    """The variant's own values, with any parsed ``overrides`` on top."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant={variant!r} is not allowed: {_CHECKS['variant'][0]}")
    base = VARIANTS[variant]
    values = {f.name: getattr(base, f.name) for f in fields(TrainConfig) if hasattr(base, f.name)}
    values.update(overrides or {})
    return TrainConfig(variant=variant, **values)


def parse_variants(text: str) -> tuple[str, ...]:
    """A comma-separated list of known, distinct variant names."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in VARIANTS]
    if not names or unknown:
        bad = ",".join(unknown) if unknown else text
        raise ConfigError(
            f"variants={bad!r} is not allowed: a comma-separated list from {', '.join(VARIANTS)}"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"variants={text!r} is not allowed: a variant appears twice")
    return names


def parse_bool(name: str, text: str) -> bool:
    values = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    key = str(text).strip().lower()
    if key not in values:
        raise ConfigError(f"{name}={text!r} is not allowed: must be true or false")
    return values[key]
