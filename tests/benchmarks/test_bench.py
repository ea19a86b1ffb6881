"""The benchmark machinery on tiny synthetic data: structure and self-consistent ratios.
No wall-clock assertion: speed is reported by `mnist-pipeline bench`, not tested."""

import json

import mlflow
import pytest

import benchmarks
from benchmarks import bench
from mnist_pipeline import cli


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from helpers.data import tiny_arrays, write_idx_folder
    from mnist_pipeline.core import data

    mnist = data.load(write_idx_folder(tmp_path_factory.mktemp("bench") / "tiny", tiny_arrays()))
    return bench.run_benchmark(
        mnist, variants=("final",), epochs=3, widths=(1, 2), batches=(64,), scaling_epochs=2, rounds=1
    )


def test_variant_rows_compute_their_ratios_from_their_own_timings(report):
    assert [row["variant"] for row in report["variants"]] == ["final"]
    for row in report["variants"]:
        assert row["epochs_timed"] == 2  # 3 epochs, 1 of them warm-up, in one round
        assert all(row[key] > 0 for key in ("keras_s", "pipeline_s", "roofline_s", "matmul_gflops", "tracking_s"))
        assert row["pipeline_over_keras"] == pytest.approx(row["pipeline_s"] / row["keras_s"])
        assert row["tracking_overhead"] == pytest.approx(row["pipeline_s"] / (row["pipeline_s"] - row["tracking_s"]))
        assert row["pipeline_over_roofline"] == pytest.approx(row["pipeline_s"] / row["roofline_s"])
        assert row["plain_loop_s"] > 0  # the dense nets' reference row
        assert row["pipeline_over_plain"] == pytest.approx(row["pipeline_s"] / row["plain_loop_s"])
        assert 0 <= row["test_accuracy"] <= 1


def test_the_plain_loop_is_a_dense_network_s_reference():
    from benchmarks import speed
    from mnist_pipeline.core import config

    with pytest.raises(ValueError, match="convnet: the plain loop is a dense network's"):
        speed.plain_loop_epochs(config.resolve("convnet"), None)


def test_knobs_and_scaling_tables(report):
    assert [k["knob"] for k in report["knobs"]] == ["fused_rmsprop=false", "fused_rmsprop=true"]
    assert all(k["loop_s"] > 0 for k in report["knobs"])
    monitor = report["system_metrics"]  # the tracked pipeline with MLflow's system metrics off and on, in turns
    assert monitor["off_s"] > 0 and monitor["on_s"] > 0
    assert monitor["cost"] == pytest.approx(monitor["on_s"] / monitor["off_s"] - 1)
    grid = [(r["width"], r["batch_size"]) for r in report["scaling"]]
    assert grid == [("x1", 64), ("x2", 64)]
    x2 = report["scaling"][1]
    assert x2["hidden_units"] == "1024,512,256"
    for row in report["scaling"]:
        assert row["roofline_fraction"] == pytest.approx(row["roofline_s"] / row["loop_s"])
    assert report["end_to_end"] is None


def test_report_files_and_logging(report, tracking_store, tmp_path):
    paths = bench.write_report(report, tmp_path / "out")
    assert [p.name for p in paths] == ["bench.json", "bench.md", "scaling.png"]
    assert json.loads(paths[0].read_text()) == json.loads(json.dumps(report))
    text = paths[1].read_text()
    assert "## Variants" in text and "| final" in text and "fused_rmsprop=true" in text
    with mlflow.start_run() as run:
        bench.log_report(report, paths)
    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert logged["final.pipeline_over_keras"] == pytest.approx(report["variants"][0]["pipeline_over_keras"])
    artifacts = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "bench")}
    assert artifacts == {"bench/bench.json", "bench/bench.md", "bench/scaling.png"}


def test_bench_refuses_too_few_epochs(capsys, tiny_mnist_dir):
    for bad in ("1", "two", "-3", "²"):
        assert (
            cli.run(
                ["bench", "--bench-epochs", bad, "--data-dir", str(tiny_mnist_dir)], benchmarks.parser(), "benchmarks"
            )
            == cli.USAGE_ERROR
        )
        assert f"bench_epochs={bad!r} is not allowed: must be an integer >= 2" in capsys.readouterr().err
