"""Command line: one sub-command per MLproject entry point, plus `predict`.

Every parameter arrives as a string (as MLproject passes it) and is validated here,
with the data, before any MLflow run exists. A bad value exits with status 2 and one
line naming the parameter, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from mnist_pipeline.config import (
    N_TRIALS,
    OPTUNA_STORAGE,
    OVERRIDABLE,
    SEEDS,
    STUDY_NAME,
    ConfigError,
    TrainConfig,
    parse_bool,
    parse_digits,
    parse_model_name,
    parse_overrides,
    parse_sweep,
    parse_variants,
    read_param,
    resolve,
)
from mnist_pipeline.errors import UserError
from mnist_pipeline.variants import DEFAULT_VARIANTS, VARIANTS

PROG = "mnist-pipeline"
USAGE_ERROR = 2
MODEL_NAME = "mnist-digits"  # registered model name (registry.MODEL_NAME, without importing MLflow)

DEFAULTS = {  # the single source MLproject's defaults are checked against
    "variant": "final",
    "variants": ",".join(DEFAULT_VARIANTS),
    "data_dir": "",
    "force": "false",
    "model_name": MODEL_NAME,
    "run_id": "",
    "model_uri": f"models:/{MODEL_NAME}@champion",
    "seeds": str(SEEDS),
    "bench_epochs": "4",  # 1 warm-up epoch + 3 timed
    "out": "bench-results",
    "end_to_end": "true",
    "host": "127.0.0.1",
    "port": "5000",
    "max_request_mb": "16",  # serving.MAX_REQUEST_MB, without importing the server
    "n_trials": str(N_TRIALS),
    "timeout": "",  # seconds; empty: no limit
    "storage": OPTUNA_STORAGE,
    "study_name": STUDY_NAME,
    **{name: "" for name in OVERRIDABLE},  # empty: the variant's own value
}
HELP = {  # parameters several commands share; the others have their help where they are added
    "variants": "comma-separated variant names",
    "force": "true: retrain even if a matching FINISHED run exists",
    "hidden_units": "comma-separated widths of the hidden Dense layers, e.g. 512,256,128",
    "conv_filters": "comma-separated filters of the 3x3 conv + 2x2 max-pool blocks, e.g. 32,64",
    "dropout": "Dropout rate after each hidden layer, in [0, 1)",
    "l2": "L2 factor on hidden kernels, >= 0 (0: none)",
    "epochs": "training epochs, >= 1",
    "batch_size": "images per step, >= 1",
    "learning_rate": "RMSprop learning rate, > 0",
    "validation_split": "fraction of training images held out, in (0, 1)",
    "seed": "random seed, integer >= 0",
    "fused_rmsprop": "true: RMSprop in TensorFlow's one fused kernel (faster, other float rounding); "
    "false: Keras' own ops",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(USAGE_ERROR, f"{PROG}: error: {message}\n")


def _add(parser: argparse.ArgumentParser, name: str, help: str | None = None) -> None:
    parser.add_argument(f"--{name.replace('_', '-')}", default=DEFAULTS[name], help=help or HELP[name])


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    _add(parser, "data_dir", "folder with the MNIST IDX files or mnist.npz "
         "(default: $MNIST_DATA_DIR, else keras.datasets.mnist download)")


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    for name in OVERRIDABLE:
        shared = getattr(TrainConfig, name, None)  # None: each variant has its own value
        default = "the variant's value" if shared is None else shared
        _add(parser, name, f"{HELP[name]} (default: {default})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Train, compare, register and use the MNIST study's models.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = commands.add_parser("train", help="train one variant as one MLflow run")
    _add(train, "variant", ", ".join(VARIANTS))
    _add_data_dir(train)
    _add_overrides(train)
    main = commands.add_parser("main", help="train variants as child runs, compare, register the best")
    _add(main, "variants")
    _add(main, "force")
    _add(main, "model_name", "registered model name for the best run ('' : do not register)")
    _add_data_dir(main)
    _add_overrides(main)
    reproduce = commands.add_parser("reproduce", help="train variants with several seeds: mean ± std against seed noise")
    _add(reproduce, "variants")
    _add(reproduce, "seeds", "runs per variant, >= 2: seeds seed, seed+1, ... (--seed: the first, default 42)")
    _add(reproduce, "force")
    _add_data_dir(reproduce)
    _add_overrides(reproduce)
    register = commands.add_parser("register", help="register the best run of a main run")
    _add(register, "run_id", "id of a main run (default: the latest FINISHED one)")
    _add(register, "model_name", "registered model name")
    evaluate = commands.add_parser("evaluate", help="evaluate a model on the MNIST test set")
    _add(evaluate, "model_uri", "model to evaluate")
    _add_data_dir(evaluate)
    predict = commands.add_parser("predict", help="predict digits in PNG/JPEG or IDX files")
    _add(predict, "model_uri", "model to predict with")
    predict.add_argument("files", nargs="+", help="pictures of digits, or IDX images files")
    serve = commands.add_parser("serve", help="serve a model over REST (MLflow's scoring server, bounded requests)")
    _add(serve, "model_uri", "model to serve")
    _add(serve, "host", "address to listen on")
    _add(serve, "port", "port to listen on, 1-65535")
    _add(serve, "max_request_mb", "largest request body in MiB, > 0 (larger: HTTP 413)")
    sweep = commands.add_parser("sweep", help="an Optuna study of the final variant: trials as child runs, register the best")
    _add(sweep, "n_trials", "trials in the study, all workers together (a worker stops when it holds them)")
    _add(sweep, "timeout", "seconds after which this worker starts no new trial ('' or 0: no limit)")
    _add(sweep, "storage", "SQLAlchemy URL of the Optuna database (PostgreSQL for several workers)")
    _add(sweep, "study_name", "workers with the same study_name and storage share one study")
    _add(sweep, "model_name", "registered model name for the best trial ('' : do not register)")
    _add_data_dir(sweep)
    _add(sweep, "seed", "training seed of every trial and the first worker's sampler seed (default: 42)")
    bench = commands.add_parser("bench", help="time the pipeline against bare Keras and the roofline")
    _add_data_dir(bench)
    _add(bench, "bench_epochs", "epochs per timed training, >= 2 (the first is a warm-up)")
    _add(bench, "out", "folder for bench.json, bench.md and scaling.png")
    _add(bench, "end_to_end", "true: also time `mlflow run .` and pyfunc prediction")
    return parser


def _configs(args: argparse.Namespace) -> list[TrainConfig]:
    overrides = parse_overrides({name: getattr(args, name) for name in OVERRIDABLE})
    names = [args.variant] if args.command == "train" else parse_variants(args.variants)
    return [resolve(name, overrides) for name in names]


def _load_data(args: argparse.Namespace, configs: list[TrainConfig] = ()):
    from mnist_pipeline import data

    mnist = data.load(args.data_dir or None)
    for cfg in configs:
        data.split_validation(mnist.x_train, mnist.y_train, cfg.validation_split)
    return mnist


def _check_store() -> None:
    from mnist_pipeline import (
        store,  # MLflow without TensorFlow: a dead server shows fast
    )

    store.check_tracking_store()


def _prepare_training(args):
    configs = _configs(args)
    return configs, _load_data(args, configs)


def _train(args):
    configs, mnist = _prepare_training(args)
    _check_store()
    from mnist_pipeline import tracking  # imports TensorFlow: slow

    tracking.track_train_entry(configs[0], mnist)


def _main(args):
    force = parse_bool("force", args.force)
    model_name = parse_model_name(args.model_name, optional=True)
    configs, mnist = _prepare_training(args)
    _check_store()
    from mnist_pipeline import registry, tracking

    def register(run_ids):
        registry.register_best(run_ids, model_name, chosen_from="this main run's variants")

    tracking.track_main(configs, mnist, force=force, register=register if model_name else None)


def _reproduce(args):
    seeds = read_param("seeds", args.seeds, parse_digits,
                       "must be an integer >= 2 (the spread needs two runs per variant)", lambda v: v >= 2)
    force = parse_bool("force", args.force)
    configs, mnist = _prepare_training(args)
    if configs[0].seed + seeds > 2**32:
        raise ConfigError(f"seed={configs[0].seed} with seeds={seeds} is not allowed: the last seed, "
                          "seed + seeds - 1, must be below 2**32")
    from mnist_pipeline.reproduce import seed_list

    runs = [replace(cfg, seed=seed) for cfg in configs for seed in seed_list(cfg.seed, seeds)]
    _check_store()
    from mnist_pipeline import tracking

    tracking.track_reproduce(runs, mnist, force=force)


def _register(args):
    model_name = parse_model_name(args.model_name)
    _check_store()
    from mnist_pipeline import registry

    parent_id, children = registry.children_of(args.run_id or None)
    registry.register_best(list(children.values()), model_name, chosen_from=f"main run {parent_id}")


def _evaluate(args):
    mnist = _load_data(args)
    _check_store()
    from mnist_pipeline import logged_model, tracking

    model = logged_model.load_pyfunc(args.model_uri)  # before the run: a bad URI creates no run
    tracking.track_evaluation(args.model_uri, model, mnist)


def _predict(args):
    from mnist_pipeline.inputs import load_inputs

    names, images = load_inputs(args.files)
    _check_store()
    from mnist_pipeline import logged_model

    probabilities = logged_model.predict_probabilities(logged_model.load_pyfunc(args.model_uri), images)
    for name, p in zip(names, probabilities):
        print(f"{name}: {p.argmax()} (p={p.max():.3f})")


def _serve(args):
    port = read_param("port", args.port, parse_digits, "must be an integer in 1-65535", lambda v: 1 <= v <= 65535)
    max_request_mb = read_param("max_request_mb", args.max_request_mb, float, "must be a number > 0",
                                lambda v: math.isfinite(v) and v > 0)
    _check_store()
    from mnist_pipeline import logged_model, serving

    model = logged_model.load_pyfunc(args.model_uri)
    serving.serve(model, args.host, port, max_request_mb)


def _sweep(args):
    cfg = parse_sweep(args.n_trials, args.timeout, args.storage, args.study_name, args.model_name, args.seed)
    mnist = _load_data(args, [resolve("final", {"seed": cfg.seed})])
    _check_store()
    from mnist_pipeline import sweep  # imports Optuna and TensorFlow: slow

    sweep.run(cfg, mnist)


def _bench(args):
    epochs = read_param("bench_epochs", args.bench_epochs, parse_digits,
                        "must be an integer >= 2 (the first epoch is a warm-up)", lambda v: v >= 2)
    end_to_end = parse_bool("end_to_end", args.end_to_end)
    out = Path(args.out)
    if not args.out.strip() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"out={args.out!r} is not allowed: must be a folder (created if missing)")
    mnist = _load_data(args)
    from mnist_pipeline import bench

    source = Path(mnist.source)
    folder = source if source.is_dir() else source.parent if source.is_file() else None
    if end_to_end and folder is None:
        raise ConfigError("end_to_end=true needs data on disk: pass data_dir or set MNIST_DATA_DIR")
    bench.bench(mnist, epochs, out, folder if end_to_end else None)


COMMANDS = {
    "train": _train,
    "main": _main,
    "reproduce": _reproduce,
    "register": _register,
    "evaluate": _evaluate,
    "predict": _predict,
    "serve": _serve,
    "sweep": _sweep,
    "bench": _bench,
}


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except UserError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out
    # A polite kill ends runs KILLED, as Ctrl-C does. SIGINT too is set here: a process
    # started in the background of a non-interactive shell inherits SIGINT ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        sys.exit(run())
    except KeyboardInterrupt as stop:
        name = str(stop) or "SIGINT"
        print(f"{PROG}: interrupted by {name}: open runs ended KILLED", file=sys.stderr)
        sys.exit(128 + signal.Signals[name].value)
