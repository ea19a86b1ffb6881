"""The benchmark's report: bench.json, bench.md (its tables) and scaling.png in a folder, and
the same into the run this process was launched in, if any, with ``<variant>.<ratio>`` metrics."""

import contextlib
import json
from pathlib import Path

import mlflow
import pandas as pd
from matplotlib.figure import Figure

from benchmarks import KERAS_TUNED
from mnist_pipeline.tracking import run_lifecycle

BENCH_DIR = "bench"  # the run's artifact folder: bench.json, bench.md, scaling.png
LOGGED = (
    "keras_s",
    "keras_tuned_s",
    "pipeline_s",
    "pipeline_over_keras",
    "pipeline_over_keras_tuned",
    "tracking_overhead",
    "roofline_s",
    "pipeline_over_roofline",
)


def markdown(report: dict) -> str:
    parts = [
        "## Variants (s/epoch: median of every epoch after each warm-up; Keras' fit as written and tuned "
        f"(a prefetched tf.data pipeline, steps_per_execution={KERAS_TUNED}), the tracked pipeline and the "
        "plain TensorFlow loop, untracked, in turns)",
        _table(report["variants"]),
    ]
    title = "## RMSprop's update in the loop, Keras' ops and the fused kernel in turns (other float rounding only)"
    parts += [title, _table(report["knobs"])]
    title = "## MLflow's system metrics, off and on in turns (tracked pipeline, s/epoch; cost: on / off - 1)"
    parts += [title, _table([report["system_metrics"]])]
    parts += ["## Final variant: the loop against width and batch size (untracked)", _table(report["scaling"])]
    if report["end_to_end"]:
        rows = [{"measure": key, "value": value} for key, value in _measures(report).items()]
        parts += ["## End to end: the default `mlflow run .`, then its champion served", _table(rows)]
        parts += ["## Where the default `mlflow run .` spends its time", _table(report["end_to_end"]["phases"])]
        title = "## The champion's latency with the challenger shadowed (on) and not (off), two servers in turns"
        parts += [title, _table(report["end_to_end"]["shadow"])]
    return "\n\n".join(parts) + "\n"


def _table(rows: list[dict]) -> str:
    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g")


def _measures(report: dict) -> dict[str, float]:
    """The end-to-end numbers (none without that part), its phases' table aside."""
    return {key: value for key, value in (report["end_to_end"] or {}).items() if key not in ("phases", "shadow")}


def write_report(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench.json", out / "bench.md", out / "scaling.png"]
    paths[0].write_text(json.dumps(report, indent=2))
    paths[1].write_text(markdown(report))
    scaling_figure(pd.DataFrame(report["scaling"])).savefig(paths[2], dpi=100)
    return paths


def scaling_figure(table: pd.DataFrame) -> Figure:
    """Seconds per epoch and fraction of the matmul roofline against batch size, per width."""
    fig = Figure(figsize=(10, 4), layout="constrained")  # not pyplot's: nothing to close
    axes = fig.subplots(1, 2)
    for width, rows in table.groupby("width", sort=False):
        axes[0].plot(rows["batch_size"], rows["loop_s"], "o-", label=f"width {width}")
        axes[1].plot(rows["batch_size"], rows["roofline_fraction"], "o-", label=f"width {width}")
    axes[0].set(xlabel="batch size", ylabel="s / epoch", xscale="log", yscale="log", title="epoch time")
    axes[1].set(xlabel="batch size", ylabel="roofline / measured", xscale="log", title="fraction of roofline")
    for ax in axes:
        ax.set_xticks(sorted(table["batch_size"].unique()), labels=map(str, sorted(table["batch_size"].unique())))
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def log_report(report: dict, paths: list[Path]) -> bool:
    """Into the active run, or the run `mlflow run -e bench` launched this process in (resumed);
    False if there is neither."""
    metrics = {f"{row['variant']}.{key}": row[key] for row in report["variants"] for key in LOGGED}
    if not (mlflow.active_run() or run_lifecycle.launched_by_mlflow_run()):
        return False
    with contextlib.nullcontext() if mlflow.active_run() else mlflow.start_run():
        mlflow.log_metrics(metrics | _measures(report))
        for path in paths:
            mlflow.log_artifact(str(path), BENCH_DIR)
    return True
