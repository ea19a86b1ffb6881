"""`bench`: the tracked pipeline beside bare Keras and the roofline, in one run.

Writes ``bench.json``, ``bench.md`` and ``scaling.png`` to ``--out``; launched by
``mlflow run -e bench`` (or inside any active run) it logs them to that run too, with
``<variant>.<ratio>`` metrics. Prints bench.md. It measures TensorFlow, so it imports it
at once. The pipeline's epoch ends are the store's timestamps of each epoch's logged
metrics, so the logging itself is inside the timed epochs.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import BENCH_EPOCHS, BenchParams, serving, speed
from mnist_pipeline import names
from mnist_pipeline.core import config, data, plots, threads
from mnist_pipeline.core.config import TrainConfig
from mnist_pipeline.core.data import Mnist
from mnist_pipeline.core.variants import VARIANTS
from mnist_pipeline.tracking import access, readback, runs, store, training_run

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # where MLproject is, in a source checkout
SCALING_EPOCHS = 2  # 1 warm-up + 1 timed, for each of the 12 scaling points
FINAL = "final"
LOGGED = ("keras_s", "pipeline_s", "pipeline_over_keras", "tracking_overhead", "roofline_s", "pipeline_over_roofline")


def run_benchmark(
    mnist: data.Mnist,
    variants=tuple(VARIANTS),
    epochs: int = BENCH_EPOCHS,
    scaling_epochs: int = SCALING_EPOCHS,
    widths=speed.SCALING_WIDTHS,
    batches=speed.SCALING_BATCHES,
    data_dir: str | None = None,
    rounds: int = speed.ROUNDS,
) -> dict:
    """Every measurement, as one report; ``data_dir`` also times `mlflow run .` and serving."""
    rows, knobs, scaling, monitor = [], [], [], None
    # one throw-away store for every tracked training: a new store's tables take seconds
    with tempfile.TemporaryDirectory() as tmp, store.isolated_store(tmp):
        for name in variants:
            cfg = dataclasses.replace(config.resolve(name), epochs=epochs)
            rows.append(variant_row(cfg, mnist, rounds))
            if name == FINAL:
                knobs += speed.knob_rows(cfg, mnist, rounds)
                monitor = system_metrics_cost(cfg, mnist, 2 * rounds)  # a small difference: more turns
    base = config.resolve(FINAL)
    for width, batch in itertools.product(widths, batches):
        units = tuple(width * u for u in base.hidden_units)
        cfg = dataclasses.replace(base, hidden_units=units, batch_size=batch, epochs=scaling_epochs)
        scaling.append({"width": f"x{width}", **speed.scaling_row(cfg, mnist)})
    return {
        "machine": {"cpus": threads.cores(), "processor": platform.processor() or platform.machine()},
        "data_digest": mnist.digest,
        "variants": rows,
        "knobs": knobs,
        "system_metrics": monitor,
        "scaling": scaling,
        "end_to_end": end_to_end(data_dir) if data_dir else None,
    }


def markdown(report: dict) -> str:
    parts = [
        "## Variants (s/epoch: median of every epoch after each warm-up; Keras' fit, the tracked pipeline and "
        "the plain TensorFlow loop, untracked, in turns)",
        _table(report["variants"]),
    ]
    if report["knobs"]:
        parts += [
            "## RMSprop's update in the loop, Keras' ops and the fused kernel in turns (other float rounding only)",
            _table(report["knobs"]),
        ]
    if report.get("system_metrics"):
        title = "## MLflow's system metrics, off and on in turns (tracked pipeline, s/epoch; cost: on / off - 1)"
        parts += [title, _table([report["system_metrics"]])]
    parts += ["## Final variant: the loop against width and batch size (untracked)", _table(report["scaling"])]
    if report["end_to_end"]:
        measures = {key: value for key, value in report["end_to_end"].items() if key != "phases"}
        rows = [{"measure": key, "value": value} for key, value in measures.items()]
        parts += ["## End to end: the default `mlflow run .`, then its champion served", _table(rows)]
        parts += ["## Where the default `mlflow run .` spends its time", _table(report["end_to_end"]["phases"])]
    return "\n\n".join(parts) + "\n"


def _table(rows: list[dict]) -> str:
    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g")


def write_report(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench.json", out / "bench.md", out / "scaling.png"]
    paths[0].write_text(json.dumps(report, indent=2))
    paths[1].write_text(markdown(report))
    fig = plots.scaling(pd.DataFrame(report["scaling"]))
    fig.savefig(paths[2], dpi=100)
    plots.close(fig)
    return paths


def log_report(report: dict, paths: list[Path]) -> None:
    """Into the run this process was launched in, if any."""
    metrics = {f"{row['variant']}.{key}": row[key] for row in report["variants"] for key in LOGGED}
    measures = {k: v for k, v in (report["end_to_end"] or {}).items() if k != "phases"}
    runs.log_to_launching_run({**metrics, **measures}, [str(p) for p in paths], names.BENCH_DIR)


def run(params: BenchParams) -> dict:
    """Measure, write, log, print. ``end_to_end`` also times `mlflow run .` and serving,
    from the data's folder."""
    mnist = data.load_for(params.data_dir)
    source = Path(mnist.source)
    folder = source if source.is_dir() else source.parent if source.is_file() else None
    if params.end_to_end and folder is None:
        raise config.ConfigError("end_to_end=true needs data on disk: pass data_dir or set MNIST_DATA_DIR")
    if runs.launched_by_mlflow_run():  # the report goes to `mlflow run`'s run: refused before minutes of work
        store.check_tracking_store()
        access.require_runs("bench")
    report = run_benchmark(mnist, epochs=params.bench_epochs, data_dir=str(folder) if params.end_to_end else None)
    paths = write_report(report, Path(params.out))
    log_report(report, paths)
    print(markdown(report))
    return report


def system_metrics_cost(cfg: TrainConfig, mnist: Mnist, rounds: int = speed.ROUNDS) -> dict:
    """The tracked pipeline's epoch with MLflow's system metrics off and on, in turns for
    ``rounds`` rounds (off-on, then on-off: a drift of the host falls on both alike): median
    s/epoch of each, and what the metrics cost as a share of it."""

    def tracked(flag: str) -> list[float]:
        with store.environment({"MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": flag}):
            return pipeline(cfg, mnist)["epochs"]

    turns = speed.alternate({flag: (lambda f=flag: tracked(f)) for flag in ("false", "true")}, rounds, mirrored=True)
    off, on = speed.median(turns["false"]), speed.median(turns["true"])
    return {"variant": cfg.variant, "off_s": off, "on_s": on, "cost": on / off - 1}


def pipeline(cfg: TrainConfig, mnist: Mnist) -> dict:
    """The pipeline's tracked training in the current store (run_benchmark's throw-away one):
    epoch times (after the warm-up), test accuracy, and the seconds its per-epoch tracking
    took inside those epochs."""
    run_id = training_run.track_training(cfg, mnist)
    ends = readback.epoch_end_times(run_id)
    metrics = readback.metrics_of(run_id)
    return {
        "epochs": speed.epoch_times(ends),
        "test_accuracy": metrics["test_accuracy"],
        "tracking_s_per_epoch": metrics[names.TRACKING_SECONDS] / cfg.epochs,
    }


def variant_row(cfg: TrainConfig, mnist: Mnist, rounds: int = speed.ROUNDS) -> dict:
    """One row of the main table, every ratio computed from this row's own timings. Keras'
    fit, the tracked pipeline and (for a dense network) the plain loop take turns for
    ``rounds`` rounds, so a slow spell of the host falls on all; each time is the median over
    every timed epoch of its kind."""
    trainings = {"keras": lambda: speed.keras_fit_epochs(cfg, mnist), "pipeline": lambda: pipeline(cfg, mnist)}
    if speed.has_plain_loop(cfg):
        trainings["plain"] = lambda: speed.plain_loop_epochs(cfg, mnist)
    turns = speed.alternate(trainings, rounds)
    tracked = turns["pipeline"]
    keras_s, pipeline_s = speed.median(turns["keras"]), speed.median([timed["epochs"] for timed in tracked])
    plain_s = speed.median(turns["plain"]) if "plain" in turns else None
    tracking_s = float(np.median([timed["tracking_s_per_epoch"] for timed in tracked]))
    limit = speed.roofline(cfg, mnist)
    return {
        "variant": cfg.variant,
        "epochs_timed": sum(len(timed["epochs"]) for timed in tracked),
        "keras_s": keras_s,
        "pipeline_s": pipeline_s,
        "pipeline_over_keras": pipeline_s / keras_s,
        "plain_loop_s": plain_s,
        "pipeline_over_plain": pipeline_s / plain_s if plain_s else None,
        "tracking_s": tracking_s,
        "tracking_overhead": pipeline_s / (pipeline_s - tracking_s),
        "roofline_s": limit["roofline_s"],
        "pipeline_over_roofline": pipeline_s / limit["roofline_s"],
        "matmul_gflops": limit["matmul_gflops"],
        "test_accuracy": tracked[0]["test_accuracy"],  # the same every round: the seed fixes it
    }


def end_to_end(data_dir: str) -> dict:
    """Wall time of the default `mlflow run .`, then the serving speed of its champion:
    pyfunc, both REST servers, the load test, and the server following the champion's alias
    under load (serving.py)."""
    if not (PROJECT_ROOT / "MLproject").is_file():
        raise FileNotFoundError(f"{PROJECT_ROOT}/MLproject: end-to-end timing needs a source checkout")
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k not in store.ISOLATED_ENV}
        env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db", MNIST_DATA_DIR=str(data_dir))
        start = time.perf_counter()
        done = subprocess.run(
            ["mlflow", "run", str(PROJECT_ROOT), "--env-manager", "local"],
            cwd=tmp,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"`mlflow run .` failed in the benchmark: {done.stderr[-2000:]}")
        wall = time.perf_counter() - start
        images = data.load(data_dir).x_test
        with store.isolated_store(tmp):  # the store `mlflow run` wrote
            phases = phase_rows(wall)
            speeds = serving.pyfunc_speed(images)
            speeds |= serving.rest_speed(images, env)
            speeds |= serving.follow_speed(images, env, f"{tmp}/broken")  # moves the alias: last
    return {"mlflow_run_s": wall, **speeds, "phases": phases}


def phase_rows(wall: float) -> list[dict]:
    """Seconds per phase of the `mlflow run .` that took ``wall`` seconds, from the phases its
    runs logged. The variants' rows overlap where they trained side by side: only their wall
    time (the `variants` phase) counts towards the rest. The last rows are the wall time over
    the sum of the epochs and over the epochs of the process that trained longest."""
    main, *children = readback.phases_of_last_main()
    top = main.phases
    rows = [{"phase": "mlflow run: its start, the project, the run", "seconds": wall - top["total"]}]
    rows += [{"phase": name, "seconds": top[name]} for name in ("start and imports", "data and store checks")]
    rows.append({"phase": "variants (wall time)", "seconds": top["variants"]})
    rows += [{"phase": name, "seconds": top[name]} for name in ("comparison", "registration and model card")]
    rows.append({"phase": "the rest", "seconds": wall - sum(r["seconds"] for r in rows)})
    busy, epochs = {}, {}  # per process: its runs' seconds, its epochs' seconds
    for child in children:
        busy[child.process] = busy.get(child.process, 0.0) + child.run_seconds
        epochs[child.process] = epochs.get(child.process, 0.0) + child.epoch_seconds
        rows += _child_rows(child)
    rows.append({"phase": "variants: processes starting, and waiting", "seconds": top["variants"] - max(busy.values())})
    rows.append({"phase": "wall / sum of epochs", "seconds": wall / sum(epochs.values())})
    rows.append({"phase": "wall / the longest process's epochs", "seconds": wall / max(epochs.values())})
    return rows


def _child_rows(child: readback.RunPhases) -> list[dict]:
    """A training run's phases, inside the variants' wall time."""
    phases = dict(child.phases)
    phases["logging and printing of epochs"] = phases.pop("epochs") - child.epoch_seconds
    rows = [{"phase": f"{child.name}: epochs", "seconds": child.epoch_seconds}]
    rows += [{"phase": f"{child.name}: {name}", "seconds": value} for name, value in phases.items()]
    own = child.run_seconds - sum(phases.values()) - child.epoch_seconds  # params, tags, summary, ending
    return [*rows, {"phase": f"{child.name}: the run's own logging", "seconds": own}]
