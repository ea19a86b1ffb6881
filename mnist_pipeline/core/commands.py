"""One parameter dataclass per command: its defaults, help text and validation (fields declared
with param_fields.param). ``from_strings`` reads the strings MLproject passes; construction
checks typed values, so code past a params object trusts it. cli.py builds its parser from
these classes, and a test checks MLproject's defaults against them. A flow checks its data."""

from dataclasses import Field, dataclass, make_dataclass, replace
from functools import partial

from mnist_pipeline import names
from mnist_pipeline.core import config, promotion_rule, threads
from mnist_pipeline.core.config import EACH_VARIANT, KNOBS, OVERRIDABLE, ConfigError, TrainConfig, parse_digits
from mnist_pipeline.core.param_fields import Params, integer, number, optional, param, switch, text
from mnist_pipeline.core.variants import DEFAULT_VARIANTS, VARIANTS

_SEED = KNOBS["seed"].metadata
DATA_DIR = "folder with the MNIST IDX files or mnist.npz (default: $MNIST_DATA_DIR, else keras.datasets.mnist download)"


def _override(knob: Field) -> tuple:
    """A knob of TrainConfig as a field of Overrides: None ('') takes the variant's value. It is
    read here and checked by TrainConfig (Overrides.check)."""
    own = knob.default is EACH_VARIANT or any(knob.name in v.knobs for v in VARIANTS.values())
    default = "the variant's value" if own else text(knob.default)
    help = f"{knob.metadata['help']} (default: {default})"
    return knob.name, knob.type | None, param(None, help, optional(knob.metadata["parse"]), knob.metadata["allowed"])


def _model_name(help: str, optional: bool):
    return param(names.MODEL_NAME, help, lambda raw: config.parse_model_name(raw, optional=optional))


_variants = partial(param, DEFAULT_VARIANTS, "comma-separated variant names", config.parse_variants)
_force = partial(switch, False, "true: retrain even if a matching FINISHED run exists")


def _count(default: int, help: str):
    return integer(default, help, ">= 0", lambda v: v >= 0, parse_digits)


def _workers():
    return _count(
        0,
        "trainings at once, each in a process of its own on an equal share of the CPU cores "
        "(0: one per core, at most one per run to train; 1: one at a time, in this process)",
    )


def _points(default: float, help: str):
    return number(default, help, "of points >= 0", lambda v: v >= 0)


def _min_improvement():
    return _points(promotion_rule.MIN_IMPROVEMENT, "points of val_accuracy a new version must gain over the champion")


def _max_class_drop():
    return _points(promotion_rule.MAX_CLASS_DROP, "most points any digit's val recall may fall against the champion")


def _require_shadow():
    return switch(
        False,
        "true: a version that passes the gates becomes challenger only, and `promote` moves champion to it "
        "on the server's live evidence",
    )


def _seconds(default, help: str, when_zero: str, parse=float):
    return number(default, f"{help} ({when_zero})", f"of seconds >= 0 ({when_zero})", lambda v: v >= 0, parse)


class _Gated:
    """Commands that may move the champion alias: the promotion gates (core/promotion_rule.py)."""

    def gates(self) -> promotion_rule.Gates:
        return promotion_rule.Gates(self.min_improvement, self.max_class_drop, self.require_shadow)


# The knobs train, main and reproduce take: TrainConfig's fields whose ``override`` is true,
# each of its type or None (the variant's own value).
_Knobs = make_dataclass("_Knobs", [_override(KNOBS[name]) for name in OVERRIDABLE], frozen=True)


@dataclass(frozen=True)
class Overrides(Params, _Knobs):
    """The knobs a training command may set (its fields: TrainConfig's overridable knobs);
    None: the variant's own value. A subclass gives ``variants``."""

    def configs(self) -> list[TrainConfig]:
        """Each variant's configuration, with the knobs given on top."""
        given = {name: getattr(self, name) for name in OVERRIDABLE if getattr(self, name) is not None}
        return [config.resolve(name, given) for name in self.variants]

    def check(self) -> None:
        self.configs()

    def processes(self) -> int:
        """How many processes train this command's runs at once (core/threads.py): more than
        one only for a command that has ``workers`` (main, reproduce)."""
        return threads.plan(len(self.configs()), getattr(self, "workers", 1))[0]


@dataclass(frozen=True)
class TrainParams(Overrides):
    """train one variant as one MLflow run"""

    variant: str = param("final", ", ".join(VARIANTS))
    data_dir: str = param("", DATA_DIR)

    @property
    def variants(self) -> tuple[str, ...]:
        return (self.variant,)


@dataclass(frozen=True)
class MainParams(_Gated, Overrides):
    """train variants as child runs, compare, register the best"""

    variants: tuple[str, ...] = _variants()
    force: bool = _force()
    model_name: str = _model_name("registered model name for the best run ('' : do not register)", optional=True)
    min_improvement: float = _min_improvement()
    max_class_drop: float = _max_class_drop()
    require_shadow: bool = _require_shadow()
    data_dir: str = param("", DATA_DIR)
    workers: int = _workers()


@dataclass(frozen=True)
class ReproduceParams(Overrides):
    """train variants with several seeds: mean ± std against seed noise"""

    variants: tuple[str, ...] = _variants()
    seeds: int = integer(
        5,
        f"runs per variant, >= 2: seeds seed, seed+1, ... (--seed: the first, default {TrainConfig.seed})",
        ">= 2 (the spread needs two runs per variant)",
        lambda v: v >= 2,
        parse_digits,
    )
    force: bool = _force()
    data_dir: str = param("", DATA_DIR)
    workers: int = _workers()

    def check(self) -> None:
        first = super().configs()[0].seed
        if first + self.seeds > 2**32:
            raise ConfigError(
                f"seed={first} with seeds={self.seeds} is not allowed: the last seed, "
                "seed + seeds - 1, must be below 2**32"
            )

    def configs(self) -> list[TrainConfig]:
        """Every variant at every seed, variant by variant."""
        return [replace(cfg, seed=seed) for cfg in super().configs() for seed in range(cfg.seed, cfg.seed + self.seeds)]


@dataclass(frozen=True)
class RegisterParams(_Gated, Params):
    """register the best run of a main run"""

    run_id: str = param("", "id of a main run (default: the latest FINISHED one)")
    model_name: str = _model_name("registered model name", optional=False)
    min_improvement: float = _min_improvement()
    max_class_drop: float = _max_class_drop()
    require_shadow: bool = _require_shadow()


@dataclass(frozen=True)
class PromoteParams(Params):
    """move champion to the challenger on the live evidence of its serving runs"""

    model_name: str = _model_name("registered model name", optional=False)
    min_shadow_images: int = _count(promotion_rule.MIN_SHADOW_IMAGES, "live images the challenger must have scored")
    min_labelled_images: int = _count(
        promotion_rule.MIN_LABELLED_IMAGES,
        "labelled live images both must have scored (0: promote on agreement, latency and errors alone)",
    )
    max_accuracy_drop: float = _points(
        promotion_rule.MAX_ACCURACY_DROP,
        "points of live accuracy the challenger may be worse by, at the 95% lower bound",
    )
    max_latency_ratio: float = number(
        promotion_rule.MAX_LATENCY_RATIO,
        "most the challenger's p99 may be over the champion's, > 0",
        "> 0",
        lambda v: v > 0,
    )
    serving_experiment: str = param("", "experiment of the serving runs ('': <model name>-serving)")

    def gates(self) -> promotion_rule.LiveGates:
        return promotion_rule.LiveGates(
            self.min_shadow_images, self.min_labelled_images, self.max_accuracy_drop, self.max_latency_ratio
        )


@dataclass(frozen=True)
class EvaluateParams(Params):
    """evaluate a model on the MNIST test set"""

    model_uri: str = param(names.CHAMPION_URI, "model to evaluate")
    data_dir: str = param("", DATA_DIR)
    log: bool = switch(False, "true: record the evaluation (mlflow.models.evaluate) in a run; false: print the scores")


@dataclass(frozen=True)
class PredictParams(Params):
    """predict digits in PNG/JPEG or IDX files"""

    model_uri: str = param(names.CHAMPION_URI, "model to predict with")
    files: tuple[str, ...] = param((), "pictures of digits, or IDX images files", tuple, positional=True)


@dataclass(frozen=True)
class ServeParams(Params):
    """serve a model over REST (MLflow's scoring server, bounded requests)"""

    model_uri: str = param(names.CHAMPION_URI, "model to serve")
    host: str = param("127.0.0.1", "address to listen on")
    port: int = integer(5000, "port to listen on, 1-65535", "in 1-65535", lambda v: 1 <= v <= 65535, parse_digits)
    refresh_seconds: float = _seconds(30, "seconds between reads of the URI's alias", "0: load once")
    max_request_mb: float = number(
        config.MAX_REQUEST_MB, "largest request body in MiB, > 0 (larger: HTTP 413)", "> 0", lambda v: v > 0
    )
    shadow_fraction: float = number(
        1.0,
        "share of requests the challenger also scores, in [0, 1] (0: no shadowing)",
        "in [0, 1]",
        lambda v: 0 <= v <= 1,
    )
    shadow_timeout_seconds: float = number(
        5.0, "seconds the challenger has for a request before it counts as an error, > 0", "> 0", lambda v: v > 0
    )
    window_seconds: float = number(60.0, "seconds of each window of serving figures, > 0", "> 0", lambda v: v > 0)
    serving_experiment: str = param(
        "",
        "experiment of the serving runs ('': <model name>-serving; 'unregistered-serving' for a URI naming no model)",
    )


@dataclass(frozen=True)
class SweepParams(_Gated, Params):
    """an Optuna study of the final variant: trials as child runs, register the best"""

    n_trials: int = integer(
        20, "trials in the study, all workers together (a worker stops when it holds them)", ">= 1", lambda v: v >= 1
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
        "mnist-sweep",
        "workers with the same study_name and storage share one study",
        str,
        "1-100 letters, digits, '.', '_' or '-', starting with a letter or digit",
        config.STUDY_NAME.fullmatch,
    )
    model_name: str = _model_name("registered model name for the best trial ('' : do not register)", optional=True)
    min_improvement: float = _min_improvement()
    max_class_drop: float = _max_class_drop()
    require_shadow: bool = _require_shadow()
    data_dir: str = param("", DATA_DIR)
    seed: int | None = param(
        None,
        f"training seed of every trial and the first worker's sampler seed (default: {TrainConfig.seed})",
        optional(_SEED["parse"]),
        _SEED["allowed"],
        _SEED["ok"],
    )

    @property
    def training_seed(self) -> int:
        return TrainConfig.seed if self.seed is None else self.seed


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
    "promote": PromoteParams,
    "evaluate": EvaluateParams,
    "predict": PredictParams,
    "serve": ServeParams,
    "sweep": SweepParams,
    "verify": VerifyParams,
}
