"""Run configuration: ``TrainConfig`` (one training run, validated at construction, its
fields made from core/knobs.py), the pipeline's other defaults, and parsers of parameter
strings.

``resolve`` gives a variant's TrainConfig with overrides on top; ``logged_config`` the one a
run logged. The command dataclasses in params.py read their strings with the parsers here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import make_dataclass

from mnist_pipeline.core.errors import UserError
from mnist_pipeline.core.knobs import ALWAYS_LOGGED, EACH_VARIANT, KNOBS, OVERRIDABLE
from mnist_pipeline.core.secrets import mask_url
from mnist_pipeline.core.variants import VARIANTS

WORKERS = 0  # `main`, `reproduce`: trainings at once (0: one per CPU core; 1: one at a time, here)
SEEDS = 5  # `reproduce`: runs per variant, seeds seed, seed + 1, ..., seed + SEEDS - 1
REFRESH_SECONDS = 30  # `serve`: seconds between reads of the alias it follows
MAX_REQUEST_MB = 16  # `serve`: largest request body read, in MiB; about 3,000 images as JSON

OPTIMIZER = "rmsprop"
LOSS = "categorical_crossentropy"

_VARIANT_ALLOWED = f"must be one of {', '.join(VARIANTS)}"


class ConfigError(UserError, ValueError):
    """A parameter value that is not allowed; the message is one line for the user."""


class _Checked:
    """TrainConfig's behaviour; its fields are ``variant`` and one per knob."""

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant={show(self.variant)} is not allowed: {_VARIANT_ALLOWED}")
        for knob in KNOBS.values():
            value = getattr(self, knob.name)
            if not knob.ok(value):
                raise ConfigError(f"{knob.name}={show(value)} is not allowed: {knob.allowed}")

    def as_params(self) -> dict[str, str | int | float]:
        """Flat dict for logging: the same keys for every variant."""
        return {"variant": self.variant} | {knob.name: knob.logged(getattr(self, knob.name)) for knob in KNOBS.values()}


TrainConfig = make_dataclass(
    "TrainConfig",
    [("variant", str), *((knob.name, knob.type) for knob in KNOBS.values())],
    bases=(_Checked,),
    frozen=True,
)
TrainConfig.__module__ = __name__  # make_dataclass's own module= is Python 3.12's
TrainConfig.__doc__ = "Everything that decides one training run: its variant and every knob (core/knobs.py)."


def show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "''"
    return repr(value) if isinstance(value, str) else str(value)


def parse_digits(text: str) -> int:
    """A non-negative integer written in digits only (no sign, no underscores)."""
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError(text)
    return int(text)


def _parsed(name: str, text: str):
    try:
        return KNOBS[name].parse(text.strip())
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not allowed: {KNOBS[name].allowed}") from None


def parse_overrides(raw: Mapping[str, str | None]) -> dict:
    """Read string overrides; ``None`` or an empty string means "the variant's value"."""
    for name in raw:
        if name not in OVERRIDABLE:
            raise ConfigError(f"{name} is not a parameter: use one of {', '.join(OVERRIDABLE)}")
    return {name: _parsed(name, str(text)) for name, text in raw.items() if text is not None and str(text).strip()}


def logged_config(params: Mapping[str, str]) -> TrainConfig:
    """The TrainConfig a training run logged (its params, as strings). A knob the run did not
    log is the value runs trained with before it existed (``Knob.unlogged``), whatever the
    variant or default says now."""
    values = {}
    for name, knob in KNOBS.items():
        if name in params:
            values[name] = _parsed(name, params[name])
        elif knob.unlogged is not ALWAYS_LOGGED:
            values[name] = knob.unlogged
    return resolve(params["variant"], values)


def seed_list(first: int, count: int) -> list[int]:
    """The seeds of `reproduce`: first, first + 1, ..., first + count - 1."""
    return list(range(first, first + count))


def resolve(variant: str, overrides: Mapping | None = None) -> TrainConfig:
    """The variant's own values over the knobs' defaults, with any parsed ``overrides`` on top."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant={variant!r} is not allowed: {_VARIANT_ALLOWED}")
    defaults = {name: knob.default for name, knob in KNOBS.items() if knob.default is not EACH_VARIANT}
    return TrainConfig(variant=variant, **(defaults | dict(VARIANTS[variant].knobs) | dict(overrides or {})))


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
