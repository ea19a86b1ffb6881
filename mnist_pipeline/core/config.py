"""Run configuration: ``TrainConfig``, one training run's, whose fields are the training knobs,
each declared once in its body; the pipeline's other defaults, and parsers of parameter strings.

``resolve`` gives a variant's TrainConfig with overrides on top; ``logged_config`` the one a
run logged. The command dataclasses in commands.py read their strings with the parsers here.
"""

import re
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields

from mnist_pipeline.core.param_fields import ConfigError, Params, integer, is_int, number, param, read, switch
from mnist_pipeline.core.secrets import mask_url
from mnist_pipeline.core.variants import VARIANTS

MAX_REQUEST_MB = 16  # `serve`: largest request body read, in MiB; about 3,000 images as JSON

OPTIMIZER = "rmsprop"
LOSS = "categorical_crossentropy"

EACH_VARIANT = MISSING  # a knob's default: none, every variant sets its own (core/variants.py)
# 3x3 conv + 2x2 max-pool blocks that fit a 28x28 image: 28 -> 13 -> 5 -> 1 pixels a side.
MAX_CONV_BLOCKS = 3


def _units(text: str) -> tuple[int, ...]:
    """'512,256,128' -> (512, 256, 128); '' (a dense net's logged conv_filters) -> ()."""
    return tuple(int(part) for part in text.split(",")) if text else ()


_VARIANT_ALLOWED = f"must be one of {', '.join(VARIANTS)}"


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Params):
    """Everything that decides one training run: its variant and its knobs, checked at
    construction. The field order is that of a run's params and model card.

    Each knob is declared once, here, as a ``param`` (core/param_fields.py): its default
    (``EACH_VARIANT``: none, every variant sets its own), help, parser, check and what the check
    allows; ``unlogged=``: what a run that did not log it trained with (none: every run logged
    it); ``override=False``: not a parameter of train, main and reproduce (a variant sets it).
    The overrides (params.Overrides, so the CLI and MLproject, which a test holds to them), a
    run's params and model card (``as_params``) and `verify`'s reading of a run
    (``logged_config``) come from these fields. The code that acts on a knob reads
    ``cfg.<name>``. The defaults are ours: the study names the optimizer (RMSprop) and the
    loss (categorical cross-entropy), not these."""

    variant: str = param(MISSING, "the study's variant", str, _VARIANT_ALLOWED, lambda v: v in VARIANTS)
    hidden_units: tuple[int, ...] = param(
        EACH_VARIANT,
        "comma-separated widths of the hidden Dense layers, e.g. 512,256,128",
        _units,
        "must be one or more positive integers separated by commas, e.g. 512,256,128",
        lambda v: len(v) > 0 and all(is_int(u) and u > 0 for u in v),
    )
    conv_filters: tuple[int, ...] = param(
        (),  # a dense net
        "comma-separated filters of the 3x3 conv + 2x2 max-pool blocks, e.g. 32,64",
        _units,
        f"must be at most {MAX_CONV_BLOCKS} positive integers separated by commas, e.g. 32,64",
        lambda v: len(v) <= MAX_CONV_BLOCKS and all(is_int(f) and f > 0 for f in v),
    )
    dropout: float = number(
        EACH_VARIANT, "Dropout rate after each hidden layer, in [0, 1)", "in [0, 1)", lambda v: 0 <= v < 1
    )
    l2: float = number(0.0, "L2 factor on hidden kernels, >= 0 (0: none)", ">= 0", lambda v: v >= 0)
    epochs: int = integer(EACH_VARIANT, "training epochs, >= 1", ">= 1", lambda v: v >= 1)
    batch_size: int = integer(128, "images per step, >= 1", ">= 1", lambda v: v >= 1)
    # 1e-3: Keras' default
    learning_rate: float = number(
        1e-3, "RMSprop learning rate, > 0 (convnet: the first step's, decaying to 0)", "> 0", lambda v: v > 0
    )
    validation_split: float = number(
        0.1, "fraction of training images held out, in (0, 1)", "in (0, 1)", lambda v: 0 < v < 1
    )
    # seeds Python, NumPy and TensorFlow once per run
    seed: int = integer(42, "random seed, integer >= 0", "in [0, 2**32)", lambda v: 0 <= v < 2**32)
    # the training images' random moves, drawn per image and composed into one (core/augment.py)
    augment_shift: float = number(
        0.0,
        "random shift of training images, up to this fraction of the side each way (0: none)",
        "in [0, 0.5)",
        lambda v: 0 <= v < 0.5,
        unlogged=0.0,
        override=False,
    )
    augment_rotation: float = number(
        0.0,
        "random rotation of training images, up to this many degrees each way (0: none)",
        "in [0, 45]",
        lambda v: 0 <= v <= 45,
        unlogged=0.0,
        override=False,
    )
    augment_zoom: float = number(
        0.0,
        "random zoom of training images, up to this fraction in or out (0: none)",
        "in [0, 0.5)",
        lambda v: 0 <= v < 0.5,
        unlogged=0.0,
        override=False,
    )
    cosine_decay: bool = switch(
        False,
        "true: the learning rate falls from learning_rate to 0 over the run's steps; false: constant",
        unlogged=False,
        override=False,
    )
    # RMSprop's update as TensorFlow's one fused kernel per weight (called by fit.Loop)
    # instead of Keras 3's ~10 element-wise ops: the same formula, rounded in another
    # order (float32 last-bit differences); five seeds per variant showed no accuracy
    # change (docs/seeds.md). Runs from before it trained with Keras' ops.
    fused_rmsprop: bool = switch(
        True,
        "true: RMSprop in TensorFlow's one fused kernel (faster, other rounding); false: Keras' ops",
        unlogged=False,
    )

    def as_params(self) -> dict[str, str | int | float]:
        """Flat dict for logging: the same keys for every variant (a tuple as comma-separated
        numbers, '' if empty)."""
        return {name: ",".join(map(str, v)) if isinstance(v, tuple) else v for name, v in asdict(self).items()}


KNOBS = {f.name: f for f in fields(TrainConfig) if f.name != "variant"}  # in the order runs log them
OVERRIDABLE: tuple[str, ...] = tuple(name for name, f in KNOBS.items() if f.metadata.get("override", True))


def parse_digits(text: str) -> int:
    """A non-negative integer written in digits only (no sign, no underscores), spaces around it
    allowed."""
    if not re.fullmatch(r"\s*[0-9]+\s*", text):
        raise ValueError(text)
    return int(text)


def logged_config(params: Mapping[str, str]) -> TrainConfig:
    """The TrainConfig a training run logged (its params, as strings). A knob the run did not
    log is the value runs trained with before it existed (its ``unlogged``), whatever the
    variant or default says now."""
    unlogged = {name: f.metadata["unlogged"] for name, f in KNOBS.items() if "unlogged" in f.metadata}
    logged = {name: read(f, params[name]) for name, f in KNOBS.items() if name in params}
    return resolve(params["variant"], unlogged | logged)


def resolve(variant: str, overrides: Mapping | None = None) -> TrainConfig:
    """The variant's own values over the knobs' defaults, with any parsed ``overrides`` on top."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant={variant!r} is not allowed: {_VARIANT_ALLOWED}")
    return TrainConfig(variant=variant, **(dict(VARIANTS[variant].knobs) | dict(overrides or {})))


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
OPTUNA_STORAGE = "sqlite:///optuna.db"  # a file in the working directory; any SQLAlchemy URL
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # also safe inside MLflow filters


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
    shown = url.update_query_dict(secret).render_as_string(hide_password=True)  # passwords masked, as messages show it
    if url.password or secret:  # `mlflow run` logs every parameter, and echoes the command
        raise ConfigError(
            f"storage={shown!r} is not allowed: a password in it would be "
            "logged as a run parameter; give it as PGPASSWORD or in ~/.pgpass"
        )
    try:
        url.get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise ConfigError(f"storage={shown!r} is not allowed: {allowed}") from None
    except ImportError as err:
        raise ConfigError(
            f"storage={shown!r} is not allowed: its database driver {err.name} is not installed"
        ) from None
    return text.strip()
