"""`bench`: the tracked pipeline beside bare Keras and the roofline, in one run.

Writes ``bench.json``, ``bench.md`` and ``scaling.png`` to ``--out``; launched by
``mlflow run -e bench`` (or inside any active run) it logs them to that run too, with
``<variant>.<ratio>`` metrics (report.py). Prints bench.md. It measures TensorFlow, so it imports it
at once. The pipeline's epoch ends are the store's timestamps of each epoch's logged
metrics, so the logging itself is inside the timed epochs.
"""

import collections
import contextlib
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from unittest import mock

import mlflow
import numpy as np

from benchmarks import BENCH_EPOCHS, BenchParams, report, serving, shadow, speed
from mnist_pipeline import names
from mnist_pipeline.core import config, data, threads
from mnist_pipeline.core.variants import VARIANTS
from mnist_pipeline.tracking import access, readback, registry, run_lifecycle, store, track_training

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # where MLproject is: benchmarks/ is not in the wheel
FINAL = "final"
# What `mlflow run` and a user set to point MLflow at a store, an experiment or a run.
ISOLATED_ENV = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_URI")


def run_benchmark(
    mnist: data.Mnist,
    variants=tuple(VARIANTS),
    epochs: int = BENCH_EPOCHS,
    widths=speed.SCALING_WIDTHS,
    batches=speed.SCALING_BATCHES,
    data_dir: str | None = None,
    rounds: int = speed.ROUNDS,
) -> dict:
    """Every measurement, as one report; ``data_dir`` also times `mlflow run .` and serving."""
    # one throw-away store for every tracked training: a new store's tables take seconds
    with tempfile.TemporaryDirectory() as tmp, isolated_store(tmp):
        rows = [variant_row(config.resolve(name, {"epochs": epochs}), mnist, rounds) for name in variants]
        final = config.resolve(FINAL, {"epochs": epochs})  # its knob and the system metrics' cost
        knobs = speed.knob_rows(final, mnist, rounds)
        monitor = system_metrics_cost(final, mnist, 2 * rounds)  # a small difference: more turns
    return {
        "machine": {"cpus": threads.cores(), "processor": platform.processor() or platform.machine()},
        "data_digest": mnist.digest,
        "variants": rows,
        "knobs": knobs,
        "system_metrics": monitor,
        "scaling": [speed.scaling_row(config.resolve(FINAL), w, b, mnist) for w in widths for b in batches],
        "end_to_end": end_to_end(data_dir, mnist.x_test) if data_dir else None,
    }


def run(params: BenchParams) -> dict:
    """Measure, write, log, print. ``end_to_end`` also times `mlflow run .` and serving,
    from the data's folder."""
    mnist = data.load_for(params.data_dir)
    source = Path(mnist.source)
    folder = source if source.is_dir() else source.parent if source.is_file() else None
    if params.end_to_end and folder is None:
        raise config.ConfigError("end_to_end=true needs data on disk: pass data_dir or set MNIST_DATA_DIR")
    if run_lifecycle.launched_by_mlflow_run():  # the report goes to `mlflow run`'s run: refused before minutes of work
        store.check_tracking_store()
        access.require_runs("bench")
    measured = run_benchmark(mnist, epochs=params.bench_epochs, data_dir=str(folder) if params.end_to_end else None)
    report.log_report(measured, report.write_report(measured, Path(params.out)))
    print(report.markdown(measured))
    return measured


def system_metrics_cost(cfg: config.TrainConfig, mnist: data.Mnist, rounds: int = speed.ROUNDS) -> dict:
    """The tracked pipeline's epoch with MLflow's system metrics off and on, in turns for
    ``rounds`` rounds (off-on, then on-off: a drift of the host falls on both alike): median
    s/epoch of each, and what the metrics cost as a share of it."""

    def tracked(flag: str) -> list[float]:
        with mock.patch.dict(os.environ, {"MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": flag}):
            return pipeline(cfg, mnist)["epochs"]

    turns = speed.alternate({flag: (lambda f=flag: tracked(f)) for flag in ("false", "true")}, rounds, mirrored=True)
    off, on = speed.median(turns["false"]), speed.median(turns["true"])
    return {"variant": cfg.variant, "off_s": off, "on_s": on, "cost": on / off - 1}


def pipeline(cfg: config.TrainConfig, mnist: data.Mnist) -> dict:
    """The pipeline's tracked training in the current store (run_benchmark's throw-away one):
    epoch times (after the warm-up), test accuracy, and the seconds its per-epoch tracking
    took inside those epochs."""
    run_id = track_training.track_training(cfg, mnist)
    logged = mlflow.MlflowClient().get_metric_history(run_id, names.EPOCH_SECONDS)  # when each reached the store
    metrics = readback.metrics_of(run_id)
    return {
        "epochs": speed.epoch_times(sorted(m.timestamp / 1000 for m in logged)),
        "test_accuracy": metrics["test_accuracy"],
        "tracking_s_per_epoch": metrics[names.TRACKING_SECONDS] / cfg.epochs,
    }


def variant_row(cfg: config.TrainConfig, mnist: data.Mnist, rounds: int = speed.ROUNDS) -> dict:
    """One row of the main table, every ratio computed from this row's own timings. Keras'
    fit as written and tuned, the tracked pipeline and (for a dense network) the plain loop
    take turns for ``rounds`` rounds, so a slow spell of the host falls on all; each time is
    the median over every timed epoch of its kind."""
    trainings = {
        "keras": lambda: speed.keras_fit_epochs(cfg, mnist),
        "keras_tuned": lambda: speed.keras_fit_epochs(cfg, mnist, tuned=True),
        "pipeline": lambda: pipeline(cfg, mnist),
    }
    if speed.has_plain_loop(cfg):
        trainings["plain"] = lambda: speed.plain_loop_epochs(cfg, mnist)
    turns = speed.alternate(trainings, rounds)
    tracked = turns["pipeline"]
    keras_s, tuned_s = speed.median(turns["keras"]), speed.median(turns["keras_tuned"])
    pipeline_s = speed.median([timed["epochs"] for timed in tracked])
    plain_s = speed.median(turns["plain"]) if "plain" in turns else None
    tracking_s = float(np.median([timed["tracking_s_per_epoch"] for timed in tracked]))
    limit = speed.roofline(cfg, mnist)
    return {
        "variant": cfg.variant,
        "epochs_timed": sum(len(timed["epochs"]) for timed in tracked),
        "keras_s": keras_s,
        "pipeline_s": pipeline_s,
        "pipeline_over_keras": pipeline_s / keras_s,
        "keras_tuned_s": tuned_s,
        "pipeline_over_keras_tuned": pipeline_s / tuned_s,
        "plain_loop_s": plain_s,
        "pipeline_over_plain": pipeline_s / plain_s if plain_s else None,
        "tracking_s": tracking_s,
        "tracking_overhead": pipeline_s / (pipeline_s - tracking_s),
        "roofline_s": limit["roofline_s"],
        "pipeline_over_roofline": pipeline_s / limit["roofline_s"],
        "matmul_gflops": limit["matmul_gflops"],
        "test_accuracy": tracked[0]["test_accuracy"],  # the same every round: the seed fixes it
    }


def end_to_end(data_dir: str, images: np.ndarray) -> dict:
    """Wall time of the default `mlflow run .`, then the serving speed of its champion:
    pyfunc, both REST servers, the load test, and the server following the champion's alias
    under load (serving.py), ``images`` the requests' images."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k not in ISOLATED_ENV}
        env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db", MNIST_DATA_DIR=str(data_dir))
        command = ["mlflow", "run", str(PROJECT_ROOT), "--env-manager", "local"]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"`mlflow run .` failed in the benchmark: {done.stderr[-2000:]}")
        wall = time.perf_counter() - start
        with isolated_store(tmp):  # the store `mlflow run` wrote
            phases = phase_rows(wall)
            speeds = serving.pyfunc_speed(images)
            speeds |= serving.rest_speed(images, env)
            shadow_rows = shadow.shadow_overhead(images, env)
            speeds |= shadow.shadow_summary(shadow_rows)
            speeds |= serving.follow_speed(images, env, f"{tmp}/broken")  # moves the alias: last
    return {"mlflow_run_s": wall, **speeds, "phases": phases, "shadow": shadow_rows}


def phase_rows(wall: float) -> list[dict]:
    """Seconds per phase of the `mlflow run .` that took ``wall`` seconds, from the phases its
    runs logged (names.PHASES). The variants' rows overlap where they trained side by side:
    only their wall time (the `variants` phase) counts towards the rest. The last rows are the
    wall time over the sum of the epochs and over the epochs of the process that trained longest."""
    # the store is the one `mlflow run .` wrote: one `main` run
    [main] = readback.runs_tagged({names.TAG_ROLE: names.ROLE_MAIN}, everywhere=True)
    top = mlflow.artifacts.load_dict(f"runs:/{main.info.run_id}/{names.PHASES}")
    rows = [("mlflow run: its start, the project, the run", wall - top["total"])]
    rows += [(f"{name} (wall time)" if name == "variants" else name, s) for name, s in top.items() if name != "total"]
    rows.append(("the rest", wall - sum(seconds for _, seconds in rows)))
    busy, epochs = collections.Counter(), collections.Counter()  # per process: its runs' seconds, its epochs'
    for name, run_id in registry.children_of(main.info.run_id)[1].items():
        run = mlflow.get_run(run_id)
        process, run_s = run.data.tags.get(names.TAG_PID, ""), (run.info.end_time - run.info.start_time) / 1000
        epoch_s = sum(m.value for m in mlflow.MlflowClient().get_metric_history(run_id, names.EPOCH_SECONDS))
        busy[process] += run_s
        epochs[process] += epoch_s
        phases = mlflow.artifacts.load_dict(f"runs:/{run_id}/{names.PHASES}")  # inside the variants' wall time
        phases["logging and printing of epochs"] = phases.pop("epochs") - epoch_s
        rows += [(f"{name}: epochs", epoch_s), *((f"{name}: {phase}", s) for phase, s in phases.items())]
        rows.append((f"{name}: the run's own logging", run_s - sum(phases.values()) - epoch_s))  # params, tags, ending
    rows.append(("variants: processes starting, and waiting", top["variants"] - max(busy.values())))
    rows.append(("wall / sum of epochs", wall / sum(epochs.values())))
    rows.append(("wall / the longest process's epochs", wall / max(epochs.values())))
    return [{"phase": phase, "seconds": seconds} for phase, seconds in rows]


@contextlib.contextmanager
def isolated_store(folder: str):
    """A throw-away tracking store in ``folder``, hiding any run this process was launched
    in (``mlflow run`` sets MLFLOW_RUN_ID); everything is put back afterwards."""
    previous = mlflow.get_tracking_uri()
    with mock.patch.dict(os.environ, {k: v for k, v in os.environ.items() if k not in ISOLATED_ENV}, clear=True):
        try:
            mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
            os.environ["MLFLOW_EXPERIMENT_ID"] = mlflow.create_experiment("bench", f"{folder}/artifacts")
            yield
        finally:
            mlflow.set_tracking_uri(previous)
