"""The benchmark machinery on tiny synthetic data: structure and self-consistent ratios.
No wall-clock assertion: speed is reported by `mnist-pipeline bench`, not tested."""

import json

import mlflow
import pytest

from mnist_pipeline import bench, cli, speed


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from conftest import tiny_arrays, write_idx_folder
    from mnist_pipeline import data

    mnist = data.load(write_idx_folder(tmp_path_factory.mktemp("bench") / "tiny", tiny_arrays()))
    return bench.run_benchmark(
        mnist, variants=("final",), epochs=3, widths=(1, 2), batches=(64,), scaling_epochs=2, rounds=1
    )


def test_variant_rows_compute_their_ratios_from_their_own_timings(report):
    assert [row["variant"] for row in report["variants"]] == ["final"]
    for row in report["variants"]:
        assert row["epochs_timed"] == 2  # 3 epochs, 1 of them warm-up, in one round
        assert all(row[key] > 0 for key in ("bare_s", "pipeline_s", "roofline_s", "matmul_gflops", "tracking_s"))
        assert row["overhead"] == pytest.approx(row["pipeline_s"] / row["bare_s"])
        assert row["tracking_overhead"] == pytest.approx(1 + row["tracking_s"] / row["bare_s"])
        assert row["tracking_s"] < row["pipeline_s"]  # a part of the epoch, not more
        assert row["roofline_fraction"] == pytest.approx(row["roofline_s"] / row["pipeline_s"])
        assert row["pipeline_over_roofline"] == pytest.approx(1 / row["roofline_fraction"])
        assert 0 <= row["test_accuracy"] <= 1


def test_knobs_and_scaling_tables(report):
    assert [k["knob"] for k in report["knobs"]] == [
        "steps_per_execution=1", "steps_per_execution=128", "fused_rmsprop=false", "fused_rmsprop=true",
        "threads=TensorFlow's default (one per core)", "threads=1",
    ]
    assert all(k["bare_s"] > 0 for k in report["knobs"])
    grid = [(r["width"], r["batch_size"]) for r in report["scaling"]]
    assert grid == [("x1", 64), ("x2", 64)]
    x2 = report["scaling"][1]
    assert x2["hidden_units"] == "1024,512,256"
    for row in report["scaling"]:
        assert row["roofline_fraction"] == pytest.approx(row["roofline_s"] / row["bare_s"])
    assert report["end_to_end"] is None


def test_roofline_arithmetic():
    from mnist_pipeline.config import resolve

    cfg = resolve("baseline")
    macs = 784 * 128 + 128 * 10
    assert speed.layer_shapes(cfg) == [(784, 128), (128, 10)]
    # training: forward + weight gradients of both layers, input gradient of the second only
    assert speed.epoch_flops(cfg, 100, 10) == 2 * (2 * macs + 128 * 10) * 100 + 2 * macs * 10
    # epoch ends at 5 s (the warm-up), 6, 8 and 9.5 s: epochs of 1, 2 and 1.5 s
    assert speed.epoch_times([5.0, 6.0, 8.0, 9.5]) == [1.0, 2.0, 1.5]


def test_report_files_and_logging(report, tracking_store, tmp_path):
    paths = bench.write_report(report, tmp_path / "out")
    assert [p.name for p in paths] == ["bench.json", "bench.md", "scaling.png"]
    assert json.loads(paths[0].read_text()) == json.loads(json.dumps(report))
    text = paths[1].read_text()
    assert "## Variants" in text and "| final" in text and "steps_per_execution=1" in text
    with mlflow.start_run() as run:
        bench.log_report(report, paths)
    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert logged["final.overhead"] == pytest.approx(report["variants"][0]["overhead"])
    artifacts = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "bench")}
    assert artifacts == {"bench/bench.json", "bench/bench.md", "bench/scaling.png"}


def test_bench_refuses_too_few_epochs(capsys, tiny_mnist_dir):
    for bad in ("1", "two", "-3", "²"):
        assert cli.run(["bench", "--bench-epochs", bad, "--data-dir", str(tiny_mnist_dir)]) == cli.USAGE_ERROR
        assert f"bench_epochs={bad!r} is not allowed: must be an integer >= 2" in capsys.readouterr().err


def test_roofline_counts_the_matmuls_tensorflow_runs():
    """The roofline's arithmetic is the MatMuls in the traced training step, no more, no less."""
    import keras
    import tensorflow as tf

    from mnist_pipeline.config import resolve
    from mnist_pipeline.models import build_model

    cfg = resolve("final", {"hidden_units": (64, 32, 16)})
    model, loss = build_model(cfg), keras.losses.CategoricalCrossentropy()

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        return tape.gradient(value, model.trainable_variables)

    batch = 8
    graph = step.get_concrete_function(tf.TensorSpec((batch, 28, 28)), tf.TensorSpec((batch, 10))).graph
    macs = 0
    for op in graph.get_operations():
        if op.type == "MatMul":
            a, b = (tuple(t.shape) for t in op.inputs)
            m, k = a[::-1] if op.get_attr("transpose_a") else a
            n = b[0] if op.get_attr("transpose_b") else b[1]
            macs += m * k * n
    assert macs == speed.training_macs(cfg) * batch
