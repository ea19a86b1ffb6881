"""`mnist-pipeline bench`: the pipeline beside bare Keras and the roofline, in one run.

Writes ``bench.json``, ``bench.md`` and ``scaling.png`` to ``--out``; launched by
``mlflow run -e bench`` (or inside any active run) it logs them to that run too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
from pathlib import Path

import pandas as pd

from mnist_pipeline import config, data, plots, speed
from mnist_pipeline.variants import DEFAULT_VARIANTS

BENCH_EPOCHS = 4  # per timed training: 1 warm-up + 3 timed
SCALING_EPOCHS = 2  # 1 warm-up + 1 timed, for each of the 12 scaling points
FINAL = "final"


def run_benchmark(
    mnist: data.Mnist,
    variants=DEFAULT_VARIANTS,  # the study's dense nets: the roofline counts Dense matmuls only
    epochs: int = BENCH_EPOCHS,
    scaling_epochs: int = SCALING_EPOCHS,
    widths=speed.SCALING_WIDTHS,
    batches=speed.SCALING_BATCHES,
    data_dir: str | None = None,
    rounds: int = speed.ROUNDS,
) -> dict:
    """Every measurement, as one report; ``data_dir`` also times `mlflow run .` and serving."""
    rows, knobs, scaling = [], [], []
    for name in variants:
        cfg = dataclasses.replace(config.resolve(name), epochs=epochs)
        rows.append(speed.variant_row(cfg, mnist, rounds))
        knobs += speed.knob_rows(cfg, mnist, rounds) if name == FINAL else []
    base = config.resolve(FINAL)
    for width in widths:
        for batch in batches:
            cfg = dataclasses.replace(
                base,
                hidden_units=tuple(width * u for u in base.hidden_units),
                batch_size=batch,
                epochs=scaling_epochs,
            )
            scaling.append({"width": f"x{width}", **speed.scaling_row(cfg, mnist)})
    return {
        "machine": {"cpus": _cpus(), "processor": platform.processor() or platform.machine()},
        "data_digest": mnist.digest,
        "variants": rows,
        "knobs": knobs,
        "scaling": scaling,
        "end_to_end": speed.end_to_end(data_dir) if data_dir else None,
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def markdown(report: dict) -> str:
    parts = ["## Variants (s/epoch: median of every epoch after each warm-up, bare and tracked alternating)", _table(report["variants"])]
    if report["knobs"]:
        parts += ["## Speed knobs, before and after in turns (bare Keras; fused_rmsprop changes float rounding only)", _table(report["knobs"])]
    parts += ["## Final variant: cost against width and batch size (bare Keras)", _table(report["scaling"])]
    if report["end_to_end"]:
        parts += ["## End to end", _table([report["end_to_end"]])]
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
    import mlflow

    if mlflow.active_run():
        run = contextlib.nullcontext()
    elif mlflow.environment_variables.MLFLOW_RUN_ID.get():
        run = mlflow.start_run()  # resumes the run `mlflow run -e bench` made
    else:
        return
    with run:
        for row in report["variants"]:
            for key in ("bare_s", "pipeline_s", "overhead", "tracking_overhead", "roofline_s", "roofline_fraction"):
                mlflow.log_metric(f"{row['variant']}.{key}", row[key])
        for key, value in (report["end_to_end"] or {}).items():
            mlflow.log_metric(key, value)
        for path in paths:
            mlflow.log_artifact(str(path), "bench")


def bench(mnist: data.Mnist, epochs: int, out: Path, data_dir: Path | None) -> dict:
    """The `bench` command after its parameters were checked: measure, write, log, print.
    ``data_dir``: the data folder, to also time `mlflow run .` and serving; None skips that."""
    report = run_benchmark(mnist, epochs=epochs, data_dir=str(data_dir) if data_dir else None)
    paths = write_report(report, out)
    log_report(report, paths)
    print(markdown(report))
    return report


if __name__ == "__main__":  # python -m mnist_pipeline.bench [options]: the same as the CLI's
    import sys

    from mnist_pipeline.cli import run

    sys.exit(run(["bench", *sys.argv[1:]]))
