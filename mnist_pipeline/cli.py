"""Command line: one sub-command per MLproject entry point.

Every parameter arrives as a string (as MLproject passes it) and is validated here,
with the data, before any MLflow run exists. A bad value exits with status 2 and one
line naming the parameter, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import os
import sys

from mnist_pipeline.config import (
    OVERRIDABLE,
    ConfigError,
    TrainConfig,
    parse_bool,
    parse_overrides,
    parse_variants,
    resolve,
)
from mnist_pipeline.data import DataError
from mnist_pipeline.variants import DEFAULT_VARIANTS

PROG = "mnist-pipeline"
USAGE_ERROR = 2

DEFAULTS = {  # the single source MLproject's defaults are checked against
    "variant": "final",
    "variants": ",".join(DEFAULT_VARIANTS),
    "data_dir": "",
    "force": "false",
    **{name: "" for name in OVERRIDABLE},  # empty: the variant's own value
}
HELP = {
    "hidden_units": "comma-separated widths of the hidden Dense layers, e.g. 512,256,128",
    "dropout": "Dropout rate after each hidden layer, in [0, 1)",
    "l2": "L2 factor on hidden kernels, >= 0 (0: none)",
    "epochs": "training epochs, >= 1",
    "batch_size": "images per step, >= 1",
    "learning_rate": "RMSprop learning rate, > 0",
    "validation_split": "fraction of training images held out, in (0, 1)",
    "seed": "random seed, integer >= 0",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(USAGE_ERROR, f"{PROG}: error: {message}\n")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=DEFAULTS["data_dir"],
        help="folder with the MNIST IDX files or mnist.npz (default: $MNIST_DATA_DIR, "
        "else keras.datasets.mnist download)",
    )
    for name in OVERRIDABLE:
        shared = getattr(TrainConfig, name, None)  # None: each variant has its own value
        default = "the variant's value" if shared is None else shared
        parser.add_argument(
            f"--{name.replace('_', '-')}", default=DEFAULTS[name], help=f"{HELP[name]} (default: {default})"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Train and compare the MNIST study's variants.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = commands.add_parser("train", help="train one variant as one MLflow run")
    train.add_argument("--variant", default=DEFAULTS["variant"], help="baseline, regularized or final")
    _add_common(train)
    main = commands.add_parser("main", help="train variants as child runs and compare them")
    main.add_argument("--variants", default=DEFAULTS["variants"], help="comma-separated variant names")
    main.add_argument(
        "--force", default=DEFAULTS["force"], help="true: retrain even if a matching FINISHED run exists"
    )
    _add_common(main)
    return parser


def _configs(args: argparse.Namespace) -> list:
    overrides = parse_overrides({name: getattr(args, name) for name in OVERRIDABLE})
    names = [args.variant] if args.command == "train" else parse_variants(args.variants)
    return [resolve(name, overrides) for name in names]


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mnist_pipeline import data  # after parsing: --help needs no data and no TensorFlow

    try:
        configs = _configs(args)
        force = parse_bool("force", args.force) if args.command == "main" else False
        mnist = data.load(args.data_dir or None)
        for cfg in configs:
            data.split_validation(mnist.x_train, mnist.y_train, cfg.validation_split)
    except (ConfigError, DataError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return USAGE_ERROR

    from mnist_pipeline import tracking  # imports TensorFlow and MLflow: slow

    if args.command == "train":
        tracking.track_train_entry(configs[0], mnist)
    else:
        tracking.track_main(configs, mnist, force=force)
    return 0


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out
    sys.exit(run())
