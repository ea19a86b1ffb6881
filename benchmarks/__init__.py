"""The benchmark: the tracked pipeline beside Keras' fit, a plain TensorFlow loop and the
roofline, and the registered model served every way a consumer does (docs/speed.md).

It runs from the project folder, not from the installed package (a wheel holds
mnist_pipeline/ alone): ``python -m benchmarks bench --data-dir ...``, or
``mlflow run . -e bench``. It imports the package; the package never imports it
(tests/test_layers.py). Its command line is the package's (cli.py): the same checks, the
same one-line errors and the same environment (quiet TensorFlow, oneDNN off, bounded HTTP
retries, the system metrics' interval) as the commands it times.

    bench.py     the `bench` command: every measurement, its report and where it goes
    speed.py     untracked trainings (Keras' fit, the project's loop, a plain loop) and the roofline
    serving.py   the serving half: pyfunc, both REST servers, the load test, the alias moving under load
"""

from dataclasses import dataclass
from pathlib import Path

from mnist_pipeline import cli
from mnist_pipeline.core import config
from mnist_pipeline.core.commands import DATA_DIR
from mnist_pipeline.core.param_fields import Params, param, switch

BENCH_EPOCHS = 4  # `bench`: per timed training, 1 warm-up epoch + 3 timed
# Keras tuned (a prefetched tf.data pipeline): its steps per compiled call, its fastest for
# final on these CPUs (docs/speed.md); the fair reference for the loop, beside Keras as written
KERAS_TUNED = 64


@dataclass(frozen=True)
class BenchParams(Params):
    """time the pipeline against bare Keras and the roofline"""

    data_dir: str = param("", DATA_DIR)
    bench_epochs: int = param(
        BENCH_EPOCHS,
        "epochs per timed training, >= 2 (the first is a warm-up)",
        config.parse_digits,
        "must be an integer >= 2 (the first epoch is a warm-up)",
        lambda v: v >= 2,
    )
    out: str = param(
        "bench-results",
        "folder for bench.json, bench.md and scaling.png",
        allowed="must be a folder (created if missing)",
        ok=lambda v: bool(v.strip()) and not (Path(v).exists() and not Path(v).is_dir()),
    )
    end_to_end: bool = switch(True, "true: also time `mlflow run .` and pyfunc prediction")


COMMANDS = {"bench": BenchParams}  # MLproject's `bench` entry point: `python -m benchmarks bench ...`


def parser():
    """The command line of ``python -m benchmarks``."""
    return cli.build_parser(COMMANDS, prog="benchmarks", description="Time the MNIST pipeline (docs/speed.md).")


def main() -> None:
    cli.main(parser(), flows="benchmarks")
