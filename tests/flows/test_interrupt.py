"""A real training process stopped by SIGINT or SIGTERM mid-training ends its run KILLED,
keeps the epochs it finished, and leaves nothing RUNNING. One killed hard (SIGKILL) cannot:
the next command ends its run KILLED."""

import signal
import subprocess
import sys
import time

import mlflow
import pandas as pd
import pytest

from helpers.stores import all_runs
from mnist_pipeline import cli, names


def _train(tiny_mnist_dir, variant: str, epochs: int, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "mnist_pipeline", "train", "--variant", variant, "--epochs", str(epochs)]
    command += ["--batch-size", "16", "--data-dir", str(tiny_mnist_dir)]
    return subprocess.Popen(command, text=True, **popen)


def _wait_for_epochs(child, tracking_store, epochs: int) -> str:
    """The id of ``child``'s training run once it has finished ``epochs`` epochs."""
    client, deadline = mlflow.MlflowClient(), time.monotonic() + 120
    while True:
        assert child.poll() is None, child.stderr.read()
        assert time.monotonic() < deadline, f"training never reached epoch {epochs}"
        runs = all_runs(tracking_store)
        if runs and len(client.get_metric_history(runs[0].info.run_id, "val_accuracy")) >= epochs:
            return runs[0].info.run_id
        time.sleep(0.3)


def test_a_run_killed_hard_is_ended_killed_by_the_next_command(tracking_store, tiny_mnist_dir, capsys):
    dead = _train(tiny_mnist_dir, "final", 500, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        run_id = _wait_for_epochs(dead, tracking_store, 2)
        dead.kill()  # SIGKILL: no handler runs, the run stays RUNNING
        dead.wait(timeout=30)
    finally:
        if dead.poll() is None:
            dead.kill()
    client = mlflow.MlflowClient()
    assert client.get_run(run_id).info.status == "RUNNING"
    kept = len(client.get_metric_history(run_id, "val_accuracy"))
    # the next command, in this process: a training like any other, its first step the check
    argv = ["train", "--variant", "baseline", "--epochs", "1", "--batch-size", "16", "--data-dir", str(tiny_mnist_dir)]
    assert cli.run(argv) == 0
    out = capsys.readouterr().out
    gone = f"its process {dead.pid} on this host is gone"
    assert f"run {run_id} (final) was RUNNING, {gone}: ended KILLED, {kept} epochs kept" in out.splitlines(), out
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.info.end_time >= run.info.start_time
    assert kept >= 2 and [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == list(range(1, kept + 1))
    assert {r.info.status for r in all_runs(tracking_store)} == {"KILLED", "FINISHED"}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_training_ends_the_run_killed_with_finished_epochs_kept(signum, tracking_store, tiny_mnist_dir):
    child = _train(tiny_mnist_dir, "final", 500, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client = mlflow.MlflowClient()
    try:
        _wait_for_epochs(child, tracking_store, 2)  # then stop it in the middle of training
        child.send_signal(signum)
        _, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 128 + signum
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    [run] = all_runs(tracking_store)
    assert run.info.status == "KILLED"
    epochs = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    assert 2 <= len(epochs) < 500 and epochs == list(range(1, len(epochs) + 1))
    history = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=names.HISTORY))
    assert list(history["epoch"]) == epochs
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id, "plots")}
    assert names.CURVES in artifacts
