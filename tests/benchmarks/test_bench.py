"""The benchmark: its tables from timings fed in (each measuring function replaced by one that
returns known epoch times), and one real run on tiny synthetic data for what it measures,
writes and logs. No wall-clock assertion: speed is reported by `python -m benchmarks bench`,
not tested."""

import contextlib
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import mlflow
import pytest

import benchmarks
from benchmarks import bench, report, shadow, speed
from helpers.stores import PROJECT_ROOT, all_runs
from mnist_pipeline import cli

SYSTEM_METRICS = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"


@pytest.fixture
def fed(monkeypatch):
    """The benchmark's measuring functions, returning these epoch times (seconds) in turn, and
    the system-metrics setting each tracked training of that table ran with."""
    keras_fit = iter([[1.0, 2.0], [3.0, 10.0]])  # rounds 1 and 2; median of all four 2.5 (of the rounds' medians 4.0)
    keras_tuned = iter([[2.0, 2.0], [1.0, 3.0]])  # median 2.0
    plain = iter([[0.5, 0.5], [1.0, 3.0]])  # median 0.75
    tracked = iter(
        [
            {"epochs": [1.0, 1.0], "tracking_s_per_epoch": 0.2, "test_accuracy": 0.9},
            {"epochs": [1.0, 3.0], "tracking_s_per_epoch": 0.3, "test_accuracy": 0.9},
        ]
    )  # median 1.0 s/epoch, of which 0.25 s tracking
    flags = []

    def pipeline(cfg, mnist):
        if os.environ.get(SYSTEM_METRICS) is None:  # the variant's row
            return next(tracked)
        flags.append(os.environ[SYSTEM_METRICS])
        return {"epochs": {"false": [2.0, 2.0], "true": [2.5, 2.5]}[os.environ[SYSTEM_METRICS]]}

    def loop_epochs(cfg, mnist):
        if cfg.epochs == 2:  # a scaling point
            return [cfg.batch_size / 100]
        return [1.0, 1.0] if cfg.fused_rmsprop else [1.2, 1.6]

    monkeypatch.delenv(SYSTEM_METRICS, raising=False)
    fits = {False: keras_fit, True: keras_tuned}
    monkeypatch.setattr(speed, "keras_fit_epochs", lambda cfg, mnist, tuned=False: next(fits[tuned]))
    monkeypatch.setattr(speed, "plain_loop_epochs", lambda cfg, mnist: next(plain))
    monkeypatch.setattr(speed, "loop_epochs", loop_epochs)
    monkeypatch.setattr(speed, "roofline", lambda cfg, mnist: {"roofline_s": 0.5, "matmul_gflops": 100.0})
    monkeypatch.setattr(bench, "pipeline", pipeline)
    monkeypatch.setattr(bench, "isolated_store", lambda folder: contextlib.nullcontext())  # nothing is tracked
    return flags


def test_tables_are_the_medians_and_ratios_of_the_times_fed_in(fed):
    mnist = SimpleNamespace(digest="fed")
    measured = bench.run_benchmark(mnist, ("final",), epochs=3, widths=(1, 2), batches=(64, 128))
    [row] = measured["variants"]
    assert row.pop("variant") == "final"
    assert row == pytest.approx(
        {
            "epochs_timed": 4,
            "keras_s": 2.5,
            "pipeline_s": 1.0,
            "pipeline_over_keras": 0.4,
            "keras_tuned_s": 2.0,
            "pipeline_over_keras_tuned": 0.5,
            "plain_loop_s": 0.75,
            "pipeline_over_plain": 4 / 3,
            "tracking_s": 0.25,
            "tracking_overhead": 4 / 3,  # 1.0 s against the 0.75 s it would take untracked
            "roofline_s": 0.5,
            "pipeline_over_roofline": 2.0,
            "matmul_gflops": 100.0,
            "test_accuracy": 0.9,
        }
    )
    assert measured["knobs"] == [
        {"variant": "final", "knob": "fused_rmsprop=false", "loop_s": pytest.approx(1.4)},
        {"variant": "final", "knob": "fused_rmsprop=true", "loop_s": pytest.approx(1.0)},
    ]
    # off and on in mirrored turns, twice the rounds of the other tables
    assert fed == ["false", "true", "true", "false"] * 2
    assert measured["system_metrics"] == {"variant": "final", "off_s": 2.0, "on_s": 2.5, "cost": pytest.approx(0.25)}
    scaling = measured["scaling"]
    assert [(r["width"], r["hidden_units"], r["batch_size"]) for r in scaling] == [
        ("x1", "512,256,128", 64),
        ("x1", "512,256,128", 128),
        ("x2", "1024,512,256", 64),
        ("x2", "1024,512,256", 128),
    ]
    assert [r["loop_s"] for r in scaling] == pytest.approx([0.64, 1.28, 0.64, 1.28])
    assert [r["roofline_fraction"] for r in scaling] == pytest.approx([0.78125, 0.390625, 0.78125, 0.390625])
    assert measured["end_to_end"] is None and measured["data_digest"] == "fed"


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """One real run: the final variant, 3 epochs (1 warm-up), 1 round, on tiny images."""
    from helpers.data import tiny_arrays, write_idx_folder
    from mnist_pipeline.core import data

    mnist = data.load(write_idx_folder(tmp_path_factory.mktemp("bench") / "tiny", tiny_arrays()))
    return bench.run_benchmark(mnist, variants=("final",), epochs=3, widths=(1, 2), batches=(64,), rounds=1)


def test_a_real_run_times_each_training_it_names(measured):
    [row] = measured["variants"]
    assert row["variant"] == "final" and row["epochs_timed"] == 2  # 3 epochs, 1 of them warm-up, in one round
    timed = ("keras_s", "keras_tuned_s", "pipeline_s", "plain_loop_s", "roofline_s", "matmul_gflops")
    assert all(row[key] > 0 for key in timed)
    assert 0 < row["tracking_s"] < row["pipeline_s"] and 0 <= row["test_accuracy"] <= 1
    assert [k["knob"] for k in measured["knobs"]] == ["fused_rmsprop=false", "fused_rmsprop=true"]
    assert all(k["loop_s"] > 0 for k in measured["knobs"])
    assert measured["system_metrics"]["off_s"] > 0 and measured["system_metrics"]["on_s"] > 0
    assert [(r["width"], r["hidden_units"], r["batch_size"]) for r in measured["scaling"]] == [
        ("x1", "512,256,128", 64),
        ("x2", "1024,512,256", 64),
    ]
    assert all(r["loop_s"] > 0 and r["roofline_s"] > 0 for r in measured["scaling"])
    assert measured["end_to_end"] is None


def test_report_files_and_logging(measured, tracking_store, tmp_path):
    paths = report.write_report(measured, tmp_path / "out")
    assert [p.name for p in paths] == ["bench.json", "bench.md", "scaling.png"]
    assert json.loads(paths[0].read_text()) == json.loads(json.dumps(measured))
    text = paths[1].read_text()
    assert "## Variants" in text and "| final" in text and "fused_rmsprop=true" in text
    assert not report.log_report(measured, paths)  # no run to log to
    with mlflow.start_run() as run:
        assert report.log_report(measured, paths)
    logged = mlflow.get_run(run.info.run_id).data.metrics
    for ratio in ("pipeline_over_keras", "pipeline_over_keras_tuned"):
        assert logged[f"final.{ratio}"] == pytest.approx(measured["variants"][0][ratio])
    artifacts = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "bench")}
    assert artifacts == {"bench/bench.json", "bench/bench.md", "bench/scaling.png"}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--bench-epochs", "1"], "bench_epochs='1' is not allowed: must be an integer >= 2"),
        (["--bench-epochs", "two"], "bench_epochs='two' is not allowed: must be an integer >= 2"),
        (["--bench-epochs", "-3"], "bench_epochs='-3' is not allowed: must be an integer >= 2"),
        (["--bench-epochs", "²"], "bench_epochs='²' is not allowed: must be an integer >= 2"),
        (["--end-to-end", "maybe"], "end_to_end='maybe' is not allowed: must be true or false"),
        (["--out", "README.md"], "out='README.md' is not allowed: must be a folder"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_run(
    argv, expected, tracking_store, tiny_mnist_dir, capsys, monkeypatch
):
    monkeypatch.chdir(PROJECT_ROOT)  # README.md: an existing file
    argv = ["bench", *argv, "--data-dir", str(tiny_mnist_dir)]
    assert cli.run(argv, benchmarks.parser(), "benchmarks") == cli.USAGE_ERROR
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("benchmarks: error: ") and expected in line
    assert all_runs(tracking_store) == []


def test_python_m_benchmarks_is_the_command_mlproject_runs():
    """From the project folder, as `mlflow run . -e bench` runs it: a bad value ends it in one line."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "bench", "--bench-epochs", "1"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == cli.USAGE_ERROR
    assert done.stderr.strip().splitlines()[-1].startswith("benchmarks: error: bench_epochs='1' is not allowed")


def test_the_shadow_summary_is_each_open_loop_pair_s_ratio():
    timings = {0: ((2, 10), (3, 20)), 1: ((2, 10), (2, 10)), 2: ((4, 10), (5, 30))}  # repeat: (off, on) p50, p99
    rows = [
        {"load": "open loop, 100/s", "shadow": shadow, "repeat": repeat, "p50_ms": p50, "p99_ms": p99}
        | {"dropped_requests": 0.01 * repeat}
        for repeat, pair in timings.items()
        for shadow, (p50, p99) in zip(("off", "on"), pair)
    ]
    rows.append(
        {"load": "saturation", "shadow": "on", "repeat": 0, "p50_ms": 99, "p99_ms": 999, "dropped_requests": 0.5}
    )
    summary = shadow.shadow_summary(rows)
    assert (summary["shadow_p50_ratio"], summary["shadow_p50_ratio_min"], summary["shadow_p50_ratio_max"]) == (
        1.25,
        1,
        1.5,
    )
    assert (summary["shadow_p99_ratio"], summary["shadow_p99_ratio_max"]) == (2, 3)
    assert summary["shadow_open_loop_max_dropped"] == 0.02  # saturation's drops are its own row's
