"""One parameter dataclass per command: its defaults, help text and validation (fields declared
with param_fields.param). ``from_strings`` reads the strings MLproject passes; construction
checks typed values, so code past a params object trusts it. cli.py builds its parser from
these classes, and a test checks MLproject's defaults against them. A flow checks its data."""

from __future__ import annotations

import math
from dataclasses import dataclass, make_dataclass, replace

from mnist_pipeline import names
from mnist_pipeline.core import config, promotion
from mnist_pipeline.core.config import ConfigError, TrainConfig
from mnist_pipeline.core.knobs import EACH_VARIANT, KNOBS, OVERRIDABLE, Knob, to_bool
from mnist_pipeline.core.param_fields import Params, optional, param, stripped, text
from mnist_pipeline.core.variants import DEFAULT_VARIANTS, VARIANTS

_SEED = KNOBS["seed"]
DATA_DIR = "folder with the MNIST IDX files or mnist.npz (default: $MNIST_DATA_DIR, else keras.datasets.mnist download)"


def _override(knob: Knob):
    """A knob as a parameter: None ('') takes the variant's value. It is read here and
    checked by TrainConfig (Overrides.check)."""
    own = knob.default is EACH_VARIANT or any(knob.name in v.knobs for v in VARIANTS.values())
    default = "the variant's value" if own else text(knob.default)
    return param(None, f"{knob.help} (default: {default})", optional(knob.parse), knob.allowed)


def _bool(default: bool, help: str):
    return param(default, help, stripped(to_bool), "must be true or false")


def _model_name(help: str, optional: bool):
    return param(names.MODEL_NAME, help, lambda raw: config.parse_model_name(raw, optional=optional))


def _variants():
    return param(DEFAULT_VARIANTS, "comma-separated variant names", config.parse_variants)


def _force():
    return _bool(False, "true: retrain even if a matching FINISHED run exists")


def _workers():
    return param(
        config.WORKERS,
        "trainings at once, each in a process of its own on an equal share of the CPU cores "
        "(0: one per core, at most one per run to train; 1: one at a time, in this process)",
        stripped(config.parse_digits),
        "must be an integer >= 0",
    )


def _points(default: float, help: str):
    return param(default, help, stripped(float), "must be a number of points >= 0", lambda v: v >= 0 and v < math.inf)


def _min_improvement():
    return _points(promotion.MIN_IMPROVEMENT, "points of val_accuracy a new version must gain over the champion")


def _max_class_drop():
    return _points(promotion.MAX_CLASS_DROP, "most points any digit's val recall may fall against the champion")


def _seconds(default, help: str, when_zero: str, parse=None):
    ok, allowed = (lambda v: math.isfinite(v) and v >= 0), f"must be a number of seconds >= 0 ({when_zero})"
    return param(default, f"{help} ({when_zero})", parse or stripped(float), allowed, ok)


class _Gated:
    """Commands that may move the champion alias: the promotion gates (core/promotion.py)."""

    def gates(self) -> promotion.Gates:
        return promotion.Gates(self.min_improvement, self.max_class_drop)


class _Overridable(Params):
    """Behaviour of Overrides, whose fields are made from the knobs."""

    def overrides(self) -> dict:
        return {name: getattr(self, name) for name in OVERRIDABLE if getattr(self, name) is not None}

    def configs_of(self, variants) -> list[TrainConfig]:
        return [config.resolve(name, self.overrides()) for name in variants]

    def check(self) -> None:
        self.configs()


Overrides = make_dataclass(
    "Overrides",
    [(name, KNOBS[name].type | None, _override(KNOBS[name])) for name in OVERRIDABLE],
    bases=(_Overridable,),
    frozen=True,
)
Overrides.__module__ = __name__  # make_dataclass's own module= is Python 3.12's
Overrides.__doc__ = "The knobs a training command may set (core/knobs.py); None: the variant's own value."


@dataclass(frozen=True)
class TrainParams(Overrides):
    """train one variant as one MLflow run"""

    variant: str = param("final", ", ".join(VARIANTS))
    data_dir: str = param("", DATA_DIR)

    def configs(self) -> list[TrainConfig]:
        return self.configs_of([self.variant])


@dataclass(frozen=True)
class MainParams(_Gated, Overrides):
    """train variants as child runs, compare, register the best"""

    variants: tuple[str, ...] = _variants()
    force: bool = _force()
    model_name: str = _model_name("registered model name for the best run ('' : do not register)", optional=True)
    min_improvement: float = _min_improvement()
    max_class_drop: float = _max_class_drop()
    data_dir: str = param("", DATA_DIR)
    workers: int = _workers()

    def configs(self) -> list[TrainConfig]:
        return self.configs_of(self.variants)


@dataclass(frozen=True)
class ReproduceParams(Overrides):
    """train variants with several seeds: mean ± std against seed noise"""

    variants: tuple[str, ...] = _variants()
    seeds: int = param(
        config.SEEDS,
        f"runs per variant, >= 2: seeds seed, seed+1, ... (--seed: the first, default {_SEED.default})",
        stripped(config.parse_digits),
        "must be an integer >= 2 (the spread needs two runs per variant)",
        lambda v: v >= 2,
    )
    force: bool = _force()
    data_dir: str = param("", DATA_DIR)
    workers: int = _workers()

    def check(self) -> None:
        first = self.configs_of(self.variants)[0].seed
        if first + self.seeds > 2**32:
            raise ConfigError(
                f"seed={first} with seeds={self.seeds} is not allowed: the last seed, "
                "seed + seeds - 1, must be below 2**32"
            )

    def configs(self) -> list[TrainConfig]:
        """Every variant at every seed, variant by variant."""
        return [
            replace(cfg, seed=seed)
            for cfg in self.configs_of(self.variants)
            for seed in config.seed_list(cfg.seed, self.seeds)
        ]


@dataclass(frozen=True)
class RegisterParams(_Gated, Params):
    """register the best run of a main run"""

    run_id: str = param("", "id of a main run (default: the latest FINISHED one)")
    model_name: str = _model_name("registered model name", optional=False)
    min_improvement: float = _min_improvement()
    max_class_drop: float = _max_class_drop()


@dataclass(frozen=True)
class EvaluateParams(Params):
    """evaluate a model on the MNIST test set"""

    model_uri: str = param(names.CHAMPION_URI, "model to evaluate")
    data_dir: str = param("", DATA_DIR)


@dataclass(frozen=True)
class PredictParams(Params):
    """predict digits in PNG/JPEG or IDX files"""

    model_uri: str = param(names.CHAMPION_URI, "model to predict with")
    files: tuple[str, ...] = param((), "pictures of digits, or IDX images files", positional=True)


@dataclass(frozen=True)
class ServeParams(Params):
    """serve a model over REST (MLflow's scoring server, bounded requests)"""

    model_uri: str = param(names.CHAMPION_URI, "model to serve")
    host: str = param("127.0.0.1", "address to listen on")
    port: int = param(
        5000,
        "port to listen on, 1-65535",
        stripped(config.parse_digits),
        "must be an integer in 1-65535",
        lambda v: 1 <= v <= 65535,
    )
    refresh_seconds: float = _seconds(
        config.REFRESH_SECONDS, "seconds between reads of the URI's alias", "0: load once"
    )
    max_request_mb: float = param(
        config.MAX_REQUEST_MB,
        "largest request body in MiB, > 0 (larger: HTTP 413)",
        stripped(float),
        "must be a number > 0",
        lambda v: math.isfinite(v) and v > 0,
    )


@dataclass(frozen=True)
class SweepParams(_Gated, Params):
    """an Optuna study of the final variant: trials as child runs, register the best"""

    n_trials: int = param(
        config.N_TRIALS,
        "trials in the study, all workers together (a worker stops when it holds them)",
        stripped(int),
        "must be an integer >= 1",
        lambda v: v >= 1,
    )
    timeout: float | None = _seconds(
        None, "seconds after which this worker starts no new trial", "'' or 0: no limit", optional(float)
    )
    storage: str = param(
        config.OPTUNA_STORAGE,
        "SQLAlchemy URL of the Optuna database (PostgreSQL for several workers)",
        config.parse_storage,
    )
    study_name: str = param(
        config.STUDY_NAME, "workers with the same study_name and storage share one study", config.parse_study_name
    )
    model_name: str = _model_name("registered model name for the best trial ('' : do not register)", optional=True)
    min_improvement: float = _min_improvement()
    max_class_drop: float = _max_class_drop()
    data_dir: str = param("", DATA_DIR)
    seed: int | None = param(
        None,
        f"training seed of every trial and the first worker's sampler seed (default: {_SEED.default})",
        optional(_SEED.parse),
        _SEED.allowed,
        _SEED.ok,
    )

    @property
    def training_seed(self) -> int:
        return _SEED.default if self.seed is None else self.seed


@dataclass(frozen=True)
class VerifyParams(Params):
    """re-train a registered version from what the registry records, and compare"""

    model_uri: str = param(names.CHAMPION_URI, "registered version: models:/<name>@<alias> or models:/<name>/<version>")
    data_dir: str = param("", DATA_DIR)


COMMANDS: dict[str, type[Params]] = {
    "train": TrainParams,
    "main": MainParams,
    "reproduce": ReproduceParams,
    "register": RegisterParams,
    "evaluate": EvaluateParams,
    "predict": PredictParams,
    "serve": ServeParams,
    "sweep": SweepParams,
    "verify": VerifyParams,
}
