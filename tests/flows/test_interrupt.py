"""A real training process stopped by SIGINT or SIGTERM mid-training ends its run KILLED,
keeps the epochs it finished, and leaves nothing RUNNING. One killed hard (SIGKILL) cannot:
the next command ends its run KILLED."""

import os
import signal
import subprocess
import sys
import time

import mlflow
import pandas as pd
import pytest

from helpers.dying import DIED, DIES_AT
from helpers.stores import PROJECT_ROOT, all_runs
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


def _main_side_by_side(tiny_mnist_dir, epochs: int, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "mnist_pipeline", "main", "--variants", "baseline,final", "--workers", "2"]
    command += ["--epochs", str(epochs), "--batch-size", "16", "--model-name", "", "--data-dir", str(tiny_mnist_dir)]
    return subprocess.Popen(command, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)


def _wait_for_children(main, tracking_store, epochs: int) -> list:
    """The two training runs of ``main`` once each has finished ``epochs`` epochs."""
    client, deadline = mlflow.MlflowClient(), time.monotonic() + 120
    while True:
        assert main.poll() is None, main.stderr.read()
        assert time.monotonic() < deadline, f"the trainings never reached epoch {epochs}"
        children = [r for r in all_runs(tracking_store) if names.TAG_VARIANT in r.data.tags]
        done = [len(client.get_metric_history(r.info.run_id, "val_accuracy")) for r in children]
        if len(children) == 2 and min(done) >= epochs:
            return children
        time.sleep(0.3)


@pytest.mark.parametrize("how", ["Ctrl-C to the process group", "SIGTERM to main alone"])
def test_an_interrupt_ends_every_worker_s_run_killed_then_main_s(how, tracking_store, tiny_mnist_dir):
    main = _main_side_by_side(tiny_mnist_dir, 500, start_new_session=True)
    try:
        _wait_for_children(main, tracking_store, 2)
        if how.startswith("Ctrl-C"):  # a terminal's Ctrl-C reaches main and both workers
            os.killpg(main.pid, signal.SIGINT)
        else:  # main passes it on to its workers
            main.send_signal(signal.SIGTERM)
        _, stderr = main.communicate(timeout=120)
    finally:
        if main.poll() is None:
            os.killpg(main.pid, signal.SIGKILL)
    signum = signal.SIGINT if how.startswith("Ctrl-C") else signal.SIGTERM
    assert main.returncode == 128 + signum, stderr
    assert f"interrupted by {signum.name}" in stderr and "Traceback" not in stderr, stderr
    runs = all_runs(tracking_store)
    assert sorted(r.info.status for r in runs) == ["KILLED"] * 3
    client = mlflow.MlflowClient()
    for run in runs:
        if names.TAG_VARIANT in run.data.tags:  # each worker's run keeps its epochs and its history
            epochs = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
            assert 2 <= len(epochs) < 500 and epochs == list(range(1, len(epochs) + 1))
            assert names.HISTORY in {f.path for f in client.list_artifacts(run.info.run_id, "tables")}


def test_a_worker_killed_hard_fails_main_in_one_line_with_its_run_ended(tracking_store, tiny_mnist_dir):
    main = _main_side_by_side(tiny_mnist_dir, 500, start_new_session=True)
    try:
        children = _wait_for_children(main, tracking_store, 1)
        for run in children:  # SIGKILL: no handler runs, no word to main
            os.kill(int(run.data.tags[names.TAG_PID]), signal.SIGKILL)
        _, stderr = main.communicate(timeout=120)
    finally:
        if main.poll() is None:
            os.killpg(main.pid, signal.SIGKILL)
    assert main.returncode == cli.USAGE_ERROR, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("mnist-pipeline: error: the process training ") and " died (exit code -9)" in last
    statuses = {r.info.run_name: r.info.status for r in all_runs(tracking_store)}
    assert statuses == {"main": "FAILED", "baseline": "KILLED", "final": "KILLED"}


def test_a_worker_killed_halfway_through_a_message_ends_main_within_60_s(tracking_store, tiny_mnist_dir, tmp_path):
    """The worst moment to die: halfway through a message to main, holding its channel's lock.
    main reads that worker's end, ends its run KILLED, lets the other training finish and
    fails in one line, all within 60 s of the death."""
    died = tmp_path / "died"
    env = {**os.environ, DIES_AT: "final  epoch 1/", DIED: str(died)}
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "tests"), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "helpers.dying", "main", "--variants", "baseline,final", "--workers", "2"]
    command += ["--epochs", "3", "--batch-size", "16", "--model-name", "", "--data-dir", str(tiny_mnist_dir)]
    main = subprocess.Popen(
        command, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 180
        while not died.exists():  # the dying worker's mark, written just before its death
            assert main.poll() is None, main.communicate()
            assert time.monotonic() < deadline, "the final's worker never reached its first epoch"
            time.sleep(0.2)
        out, err = main.communicate(timeout=60)
    finally:
        if main.poll() is None:
            os.killpg(main.pid, signal.SIGKILL)
    assert main.returncode == cli.USAGE_ERROR, err
    pid = died.read_text()
    assert err.strip().splitlines()[-1] == (
        "mnist-pipeline: error: the process training final died (exit code -9) before its run ended"
    ), err
    statuses = {r.info.run_name: r.info.status for r in all_runs(tracking_store)}
    assert statuses == {"main": "FAILED", "baseline": "FINISHED", "final": "KILLED"}
    [final] = [r for r in all_runs(tracking_store) if r.info.run_name == "final"]
    assert final.data.tags[names.TAG_PID] == pid
    assert f"run {final.info.run_id} (final) was RUNNING, its process {pid} on this host is gone: ended KILLED" in out
