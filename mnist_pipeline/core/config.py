"""Run configuration: ``TrainConfig`` (one training run, validated at construction), every
default of the pipeline, and the parsers that read parameter strings.

``resolve`` gives a variant's TrainConfig with overrides on top; the command dataclasses in
params.py read their strings with the parsers here.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields

from mnist_pipeline.core.errors import UserError
from mnist_pipeline.core.secrets import mask_url
from mnist_pipeline.core.variants import VARIANTS

# Defaults shared by every variant. The study names the optimizer (RMSprop) and loss
# (categorical cross-entropy) but not these; the values below are ours.
BATCH_SIZE = 128  # images per gradient step
LEARNING_RATE = 1e-3  # RMSprop step size (Keras' default)
VALIDATION_SPLIT = 0.1  # fraction of the 60,000 training images held out for validation
SEED = 42  # seeds Python, NumPy and TensorFlow once per run
# RMSprop's update as TensorFlow's one fused kernel per weight (called by fit.Loop) instead
# of Keras 3's ~10 element-wise ops: the same formula, rounded in another order (float32
# last-bit differences); five seeds per variant showed no accuracy change (docs/seeds.md).
FUSED_RMSPROP = True

# 3x3 conv + 2x2 max-pool blocks that fit a 28x28 image: 28 -> 13 -> 5 -> 1 pixels a side.
MAX_CONV_BLOCKS = 3

SEEDS = 5  # `reproduce`: runs per variant, seeds seed, seed + 1, ..., seed + SEEDS - 1
BENCH_EPOCHS = 4  # `bench`: per timed training, 1 warm-up epoch + 3 timed
REFRESH_SECONDS = 30  # `serve`: seconds between reads of the alias it follows
MAX_REQUEST_MB = 16  # `serve`: largest request body read, in MiB; about 3,000 images as JSON

OPTIMIZER = "rmsprop"
LOSS = "categorical_crossentropy"

# Names of the fields a run may override; an override left unset takes the variant's value.
OVERRIDABLE = (
    "hidden_units",
    "conv_filters",
    "dropout",
    "l2",
    "epochs",
    "batch_size",
    "learning_rate",
    "validation_split",
    "seed",
    "fused_rmsprop",
)


class ConfigError(UserError, ValueError):
    """A parameter value that is not allowed; the message is one line for the user."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides one training run, validated at construction."""

    variant: str
    hidden_units: tuple[int, ...]
    conv_filters: tuple[int, ...]  # () for the dense nets
    dropout: float
    l2: float
    epochs: int
    batch_size: int = BATCH_SIZE
    learning_rate: float = LEARNING_RATE
    validation_split: float = VALIDATION_SPLIT
    seed: int = SEED
    augment_shift: float = 0.0  # set by the variant only (not overridable)
    cosine_decay: bool = False  # set by the variant only (not overridable)
    fused_rmsprop: bool = FUSED_RMSPROP  # speed; same optimizer, other float rounding

    def __post_init__(self):
        for name, (allowed, ok) in _CHECKS.items():
            value = getattr(self, name)
            if not ok(value):
                raise ConfigError(f"{name}={show(value)} is not allowed: {allowed}")

    def as_params(self) -> dict[str, str | int | float]:
        """Flat dict for logging: the same keys for every variant."""
        params = asdict(self)
        params["hidden_units"] = ",".join(map(str, self.hidden_units))
        params["conv_filters"] = ",".join(map(str, self.conv_filters))  # "" for a dense net
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
    "conv_filters": (
        f"must be at most {MAX_CONV_BLOCKS} positive integers separated by commas, e.g. 32,64",
        lambda v: len(v) <= MAX_CONV_BLOCKS and all(_int(f) and f > 0 for f in v),
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
    "augment_shift": ("must be a number in [0, 0.5)", lambda v: _finite(v) and 0 <= v < 0.5),
    "fused_rmsprop": ("must be true or false", lambda v: isinstance(v, bool)),
    "cosine_decay": ("must be true or false", lambda v: isinstance(v, bool)),
}


def allowed(name: str) -> str:
    """What a TrainConfig field allows, as its error messages say it."""
    return _CHECKS[name][0]


def show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "''"
    return repr(value) if isinstance(value, str) else str(value)


def _parse_int(text: str) -> int:
    return int(text)


def _parse_units(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def to_bool(text: str) -> bool:
    """true or false (also 1 or 0, yes or no, any case); ValueError otherwise."""
    if text.lower() not in _BOOLS:
        raise ValueError(text)
    return _BOOLS[text.lower()]


def parse_digits(text: str) -> int:
    """A non-negative integer written in digits only (no sign, no underscores)."""
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError(text)
    return int(text)


# How each overridable field is read from a command-line / MLproject string.
PARSERS = {
    "hidden_units": _parse_units,
    "conv_filters": _parse_units,
    "dropout": float,
    "l2": float,
    "epochs": _parse_int,
    "batch_size": _parse_int,
    "learning_rate": float,
    "validation_split": float,
    "seed": _parse_int,
    "fused_rmsprop": to_bool,
}


def parse_overrides(raw: dict[str, str | None]) -> dict:
    """Read string overrides; ``None`` or an empty string means "the variant's value"."""
    parsed = {}
    for name, text in raw.items():
        if name not in PARSERS:
            raise ConfigError(f"{name} is not a parameter: use one of {', '.join(PARSERS)}")
        if text is None or str(text).strip() == "":
            continue
        try:
            parsed[name] = PARSERS[name](str(text).strip())
        except ValueError:
            allowed = _CHECKS[name][0]
            raise ConfigError(f"{name}={text!r} is not allowed: {allowed}") from None
    return parsed


def seed_list(first: int, count: int) -> list[int]:
    """The seeds of `reproduce`: first, first + 1, ..., first + count - 1."""
    return list(range(first, first + count))


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
        raise ConfigError(f"variants={bad!r} is not allowed: a comma-separated list from {', '.join(VARIANTS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"variants={text!r} is not allowed: a variant appears twice")
    return names


def parse_model_name(text: str, optional: bool = False) -> str:
    """A registered model name as MLflow accepts it; '' only if ``optional`` (no registration)."""
    if optional and text == "":
        return text
    if not text.strip() or text != text.strip() or any(c in text for c in "/:"):
        allowed = "a registered model name: not empty, no '/' or ':', no surrounding spaces"
        allowed += " ('' : do not register)" if optional else ""
        raise ConfigError(f"model_name={text!r} is not allowed: {allowed}")
    return text


# The sweep (`mnist-pipeline sweep`): an Optuna study over the final variant's hyperparameters.
N_TRIALS = 20  # trials in the study, all its workers together
STUDY_NAME = "mnist-sweep"
OPTUNA_STORAGE = "sqlite:///optuna.db"  # a file in the working directory; any SQLAlchemy URL
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # also safe inside MLflow filters


def parse_study_name(text: str) -> str:
    if not _STUDY_NAME.fullmatch(text):
        raise ConfigError(
            f"study_name={text!r} is not allowed: 1-100 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return text


def parse_storage(text: str) -> str:
    """A SQLAlchemy URL whose dialect and driver are installed; messages hide its password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    allowed = f"must be a SQLAlchemy database URL, e.g. {OPTUNA_STORAGE} or postgresql+psycopg2://user@host/optuna"
    try:
        url = make_url(text.strip())
    except (ArgumentError, ValueError):
        raise ConfigError(f"storage={mask_url(text)!r} is not allowed: {allowed}") from None
    secret = {key: "***" for key in ("password", "sslpassword") if key in url.query}
    url = url.update_query_dict(secret) if secret else url  # shown masked in every message below
    if url.password or secret:  # `mlflow run` logs every parameter, and echoes the command
        raise ConfigError(
            f"storage={url.render_as_string(hide_password=True)!r} is not allowed: a password in it would be "
            "logged as a run parameter; give it as PGPASSWORD or in ~/.pgpass"
        )
    try:
        dialect = url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise ConfigError(f"storage={url.render_as_string(hide_password=True)!r} is not allowed: {allowed}") from None
    try:
        dialect.import_dbapi()
    except ImportError as err:
        shown = url.render_as_string(hide_password=True)
        raise ConfigError(
            f"storage={shown!r} is not allowed: its database driver {err.name} is not installed"
        ) from None
    return text.strip()
