"""A real training process stopped by SIGINT or SIGTERM mid-training ends its run KILLED,
keeps the epochs it finished, and leaves nothing RUNNING."""

import signal
import subprocess
import sys
import time

import mlflow
import pandas as pd
import pytest

from helpers.stores import all_runs
from mnist_pipeline import names


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_training_ends_the_run_killed_with_finished_epochs_kept(signum, tracking_store, tiny_mnist_dir):
    command = [
        sys.executable,
        "-m",
        "mnist_pipeline",
        "train",
        "--variant",
        "final",
        "--epochs",
        "500",
        "--batch-size",
        "16",
        "--data-dir",
        str(tiny_mnist_dir),
    ]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = mlflow.MlflowClient()
    deadline = time.monotonic() + 120
    try:
        while True:  # wait for two finished epochs, then stop it in the middle of training
            assert child.poll() is None, child.stderr.read()
            assert time.monotonic() < deadline, "training never reached epoch 2"
            runs = all_runs(tracking_store)
            if runs and len(client.get_metric_history(runs[0].info.run_id, "val_accuracy")) >= 2:
                break
            time.sleep(0.3)
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
