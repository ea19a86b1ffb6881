"""`mlflow run` of this project, end to end, each with its own tracking store."""

import os
import subprocess

import pytest

from helpers.checks import check_training_run
from helpers.stores import PROJECT_ROOT, REAL_MNIST, all_runs
from mnist_pipeline import names
from mnist_pipeline.core import threads
from mnist_pipeline.core.commands import TrainParams

# Each floor is the mean minus 3 standard deviations of five seeds (42-46), so that a CPU whose
# kernels round differently does not fail a run that is only unlucky. `mnist-pipeline reproduce
# --seeds 5 --data-dir ../shared/data/mnist`, 2-core Intel Xeon (AVX-512), 5 December 2026, the
# loop with its own Dropout masks: baseline 97.300% ± 0.123, regularized 96.906% ± 0.167, final
# 98.074% ± 0.094 (docs/seeds.md).
ACCURACY_FLOORS = {"baseline": 0.9693, "regularized": 0.9640, "final": 0.9779}


def mlflow_run(tmp_path, *params: str, entry_point: str = "main") -> subprocess.CompletedProcess:
    """`mlflow run <project> -e <entry_point> --env-manager local -P ...` from ``tmp_path``."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = uri
    command = ["mlflow", "run", str(PROJECT_ROOT), "-e", entry_point, "--env-manager", "local"]
    for param in params:
        command += ["-P", param]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    result.uri = uri
    return result


def test_train_entry_point(tmp_path, tiny_mnist_dir, tiny_mnist, monkeypatch):
    params = {"variant": "baseline", "epochs": "2", "batch_size": "64", "dropout": "0.25"}
    result = mlflow_run(
        tmp_path, f"data_dir={tiny_mnist_dir}", *(f"{k}={v}" for k, v in params.items()), entry_point="train"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "baseline  epoch 2/2  loss " in result.stdout  # one line per epoch on the console
    runs = all_runs(result.uri)
    [project_run] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    [training_run] = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == project_run.info.run_id]
    assert project_run.info.status == "FINISHED"
    assert project_run.data.tags["mlflow.project.entryPoint"] == "train"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", result.uri)
    monkeypatch.chdir(tmp_path)
    [cfg] = TrainParams.from_strings(params).configs()  # what `train` read from MLproject's strings
    check_training_run(training_run.info.run_id, cfg, tiny_mnist.digest)


def test_bad_parameter_through_mlflow_run_fails_before_training(tmp_path, tiny_mnist_dir):
    result = mlflow_run(tmp_path, f"data_dir={tiny_mnist_dir}", "dropout=1.5")
    assert result.returncode != 0
    assert "mnist-pipeline: error: dropout=1.5 is not allowed: must be a number in [0, 1)" in result.stderr
    runs = all_runs(result.uri)
    # only the run `mlflow run` itself creates before it starts our command, ended FAILED
    assert [(r.data.tags["mlflow.project.entryPoint"], r.info.status) for r in runs] == [("main", "FAILED")]


@pytest.mark.slow
def test_default_main_reproduces_the_study_on_real_mnist(tmp_path):
    """The README's run command with the study's epochs: every variant above its floor,
    final above the other two."""
    result = mlflow_run(tmp_path, f"data_dir={REAL_MNIST}")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = all_runs(result.uri)
    assert {r.info.status for r in runs} == {"FINISHED"}
    children = {r.data.tags["variant"]: r.data.metrics for r in runs if "variant" in r.data.tags}
    accuracy = {name: metrics["test_accuracy"] for name, metrics in children.items()}
    print("test accuracy:", accuracy)
    for name, floor in ACCURACY_FLOORS.items():
        assert accuracy[name] >= floor, (name, accuracy[name])
    assert accuracy["final"] > max(accuracy["baseline"], accuracy["regularized"])
    check_console(result, runs)


# What a CPU machine's TensorFlow, absl, Keras and MLflow print when nobody quiets them.
NOISE = ("cuda", "absl", "cpu_feature_guard", "retracing", "━", "Downloading artifacts", "it/s]")


def check_console(result, runs) -> None:
    """`mlflow run .`'s console: per variant a header and one line per epoch, then a summary
    in 100 columns; no start-up noise, no progress bar, no line over 200 characters but
    MLflow's own echo of the command it runs (all the entry point's parameters)."""
    lines = (result.stdout + result.stderr).splitlines()
    for line in lines:
        assert not any(word in line for word in NOISE), line
        assert len(line) <= 200 or "=== Running command" in line, line
    out = result.stdout.splitlines()
    parent = next(r for r in runs if r.data.tags.get("role") == "main")
    children = sorted((r for r in runs if "variant" in r.data.tags), key=lambda r: r.info.start_time)
    for run in children:  # trained side by side: their lines come mixed, each naming its run
        epochs, variant = int(run.data.params["epochs"]), run.data.tags["variant"]
        header = out.index(f"{variant}: run {run.info.run_id}, {epochs} epochs")
        lines = [line for line in out[header + 1 :] if line.startswith(f"{variant}  epoch ")]
        assert len(lines) == epochs, lines
        for epoch, line in enumerate(lines, start=1):
            assert line.startswith(f"{variant}  epoch {epoch:>{len(str(epochs))}}/{epochs}  loss "), line
            assert " accuracy " in line and " val_loss " in line and " val_accuracy " in line and line.endswith(" s")
    each = threads.plan(len(children), 0)[1] or threads.cores()  # on 2 cores: two at once, one thread each
    assert {r.data.tags[names.TAG_THREADS] for r in children} == {str(each)}
    summary = out[out.index(f"main run {parent.info.run_id}") :]
    assert summary[1].split() == ["variant", "val_accuracy", "test_accuracy", "seconds"]
    assert [line.split()[0] for line in summary[2:5]] == ["baseline", "regularized", "final"]
    assert summary[5].startswith("mnist-digits version 1 (final): ")
    assert summary[6].startswith("the runs: mlflow ui --backend-store-uri sqlite:///")
    assert all(len(line) <= 100 for line in summary[:6]), summary
