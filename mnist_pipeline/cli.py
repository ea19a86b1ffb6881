"""Command line: one sub-command per command dataclass (core/commands.py), dispatched to its
flow (flows/<command>.py). benchmarks/__main__.py runs its command through the same.

Every parameter arrives as a string (as MLproject passes it) and is read and validated by
its dataclass before the flow is imported; the flow checks its data and the tracking store
before any MLflow run exists. A bad value exits with status 2 and one line naming the
parameter, the value and what is allowed.
"""

import argparse
import gc
import importlib
import logging
import os
import signal
import sys
from dataclasses import fields

from mnist_pipeline.core import interrupts
from mnist_pipeline.core.commands import COMMANDS, Overrides
from mnist_pipeline.core.errors import Mismatch, UserError
from mnist_pipeline.core.roles import ADMIN_COMMANDS
from mnist_pipeline.core.secrets import redact
from mnist_pipeline.tracking import worker_context

PROG = "mnist-pipeline"
USAGE_ERROR = 2
MISMATCH = 1  # `verify` found that a re-training does not reproduce the version
# What a console run prints is ours: TensorFlow's INFO lines (the CPU features it was built
# for) and MLflow's artifact download bars are off unless the environment says otherwise;
# TensorFlow's warnings and errors still show. On a CPU with AVX-512, TensorFlow turns its
# oneDNN kernels on by default and says so in two lines TF_CPP_MIN_LOG_LEVEL does not hide;
# off, such a CPU runs the Eigen kernels every other CPU runs (docs/commands.md, "The console").
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "TF_ENABLE_ONEDNN_OPTS": "0"}
# Bounded retries against an HTTP tracking server for the whole process: a server that dies
# mid-run fails the run's next call after about 1 + 2 + 4 s of back-off instead of MLflow's
# default minutes. Set here, before any run: MLflow reads them at each request, in every thread
# (its system metrics too). Calls that need others pass their own (tracking/store.py).
HTTP_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # seconds (an integer), doubled each retry
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",  # seconds
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",  # seconds per request
}
# MLflow's system metrics of every training run, every 2 s (seconds): its 10 s would leave the
# baseline's 11 s of training one point. (mlflow.set_system_metrics_sampling_interval writes the
# same variable, over a value the user set.)
SYSTEM_METRICS = {"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "2"}


ALL_COMMANDS = COMMANDS | ADMIN_COMMANDS  # the MLproject entry points, and the admin's


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(USAGE_ERROR, f"{self.prog.split()[0]}: error: {message}\n")


def build_parser(
    commands=ALL_COMMANDS, prog=PROG, description="Train, compare, register and use the MNIST study's models."
) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=description)
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, params in commands.items():
        command = subparsers.add_parser(name, help=params.__doc__.strip().splitlines()[0])
        command.set_defaults(params=params, **params.defaults())  # before the options: their defaults
        for f in fields(params):
            flag = f.name if f.metadata["positional"] else f"--{f.name.replace('_', '-')}"
            help = f.metadata["help"].replace("%", "%%")  # argparse formats help with %: a literal % doubled
            command.add_argument(flag, nargs="+" if f.metadata["positional"] else None, help=help)
    return parser


def run(argv: list[str] | None = None, parser=None, flows: str = "mnist_pipeline.flows") -> int:
    """Reads ``argv`` with ``parser`` (the package's commands by default) and runs the command's
    ``run(params)`` in the module of its name in package ``flows``; the exit status."""
    parser = parser or build_parser()
    args = vars(parser.parse_args(argv))
    command, params_class = args.pop("command"), args.pop("params")
    try:
        params = params_class.from_strings(args)
        if isinstance(params, Overrides) and params.processes() > 1:
            worker_context.start()  # the workers' code loads while this process imports the command's
        importlib.import_module(f"{flows}.{command}").run(params)
    except (UserError, Mismatch) as err:
        kind, status = ("mismatch", MISMATCH) if isinstance(err, Mismatch) else ("error", USAGE_ERROR)
        print(f"{parser.prog}: {kind}: {redact(str(err))}", file=sys.stderr)
        return status
    return 0


def main(parser=None, flows: str = "mnist_pipeline.flows") -> None:
    parser = parser or build_parser()
    for name, value in (QUIET | HTTP_RETRIES | SYSTEM_METRICS).items():  # values the user set win
        os.environ.setdefault(name, value)
    # MLflow's "started / stopping / terminated" INFO lines for every run; its warnings still show
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    # A polite kill ends runs KILLED, as Ctrl-C does. SIGINT too is set here: a process
    # started in the background of a non-interactive shell inherits SIGINT ignored.
    signal.signal(signal.SIGTERM, interrupts.handler)
    signal.signal(signal.SIGINT, interrupts.handler)
    try:
        status = run(None, parser, flows)
    except KeyboardInterrupt as stop:
        name = str(stop) or "SIGINT"
        print(f"{parser.prog}: interrupted by {name}: open runs ended KILLED", file=sys.stderr)
        status = 128 + signal.Signals[name].value
    # The interpreter's last garbage collection would visit every object MLflow, pandas and
    # TensorFlow made, 0.7 s here; frozen, they are left to the process's end (atexit still runs).
    gc.freeze()
    sys.exit(status)
