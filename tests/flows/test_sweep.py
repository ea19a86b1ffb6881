"""The Optuna sweep: trials as child runs of one sweep parent, pruning, registration, and
two workers sharing one study on PostgreSQL and a tracking server. Tiny search space."""

import collections
import os
import socket
import subprocess
import sys
import time

import mlflow
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from helpers.checks import check_training_run
from helpers.stores import all_runs
from mnist_pipeline import cli, names
from mnist_pipeline.core.commands import SweepParams
from mnist_pipeline.flows import study as studies
from mnist_pipeline.flows import sweep
from mnist_pipeline.tracking import registry
from mnist_pipeline.tracking import run_lifecycle as tracking_runs

TINY_SPACE = studies.SearchSpace(hidden_units=("16,8,8", "32,16,8"), epochs=(1, 3), batch_size=(64,))


class PruneTrial(optuna.pruners.BasePruner):
    """Prunes trial ``number`` at its first report, no other: a pruned trial on demand."""

    def __init__(self, number: int):
        self.number = number

    def prune(self, study, trial) -> bool:
        return trial.number == self.number


def test_local_sweep_children_of_one_parent_pruned_trial_kept_but_never_registered(
    tracking_store, tiny_mnist, tiny_mnist_dir, tmp_path
):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    params = SweepParams.from_strings(
        {
            "n_trials": "3",
            "timeout": "",
            "storage": storage,
            "study_name": "tiny",
            "model_name": "sweep-digits",
            "seed": "",
            "data_dir": str(tiny_mnist_dir),
        }
    )
    parent_id = sweep.run(params, space=TINY_SPACE, pruner=PruneTrial(1))

    runs = all_runs(tracking_store)
    assert {r.info.status for r in runs} == {"FINISHED"}  # nothing left RUNNING, nothing failed
    [parent] = [r for r in runs if r.data.tags.get(names.TAG_ROLE) == "sweep"]
    assert parent.info.run_id == parent_id
    trials = {int(r.data.tags[names.TAG_TRIAL]): r for r in runs if r is not parent}
    assert sorted(trials) == [0, 1, 2]
    assert all(
        r.data.tags["mlflow.parentRunId"] == parent_id and r.data.tags[names.TAG_STUDY] == "tiny"
        for r in trials.values()
    )
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]

    client = mlflow.MlflowClient()
    pruned = trials[1]
    assert pruned.data.tags[names.TAG_TRIAL_STATE] == "PRUNED" and names.TAG_STOPPED in pruned.data.tags
    assert names.TAG_RUN_KEY not in pruned.data.tags  # `main` can never reuse it
    assert [m.step for m in client.get_metric_history(pruned.info.run_id, "val_accuracy")] == [1]
    assert "test_accuracy" not in pruned.data.metrics
    history = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=pruned.info.run_id, artifact_path=names.HISTORY))
    assert list(history["epoch"]) == [1]
    with pytest.raises(registry.RegistryError):
        registry.best_run([pruned.info.run_id])

    for number in (0, 2):  # what `train` logs, under train's names
        run, trial = trials[number], study.trials[number]
        check_training_run(run.info.run_id, sweep.trial_config(trial.params, params.training_seed), tiny_mnist.digest)
        assert run.data.tags[names.TAG_TRIAL_STATE] == "COMPLETE"
        assert trial.value == run.data.metrics["val_accuracy"]  # the last epoch's

    best = max((trials[0], trials[2]), key=registry.selection_key)
    [version] = client.search_model_versions("name = 'sweep-digits'")
    assert version.tags["run_id"] == best.info.run_id
    assert client.get_model_version_by_alias("sweep-digits", names.CHAMPION).version == version.version

    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent_id, artifact_path=names.SWEEP_TRIALS_CSV))
    assert list(table["trial"]) == [0, 1, 2] and list(table["state"]) == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert list(table["run_id"]) == [trials[n].info.run_id for n in (0, 1, 2)]
    best_number = int(best.data.tags[names.TAG_TRIAL])
    best_params = mlflow.artifacts.load_dict(f"{parent.info.artifact_uri}/{names.SWEEP_BEST_PARAMS}")
    assert best_params == study.trials[best_number].params

    # The same command again: the study holds its 3 trials, so it only summarizes and
    # registers, which finds the existing version.
    assert sweep.run(params, space=TINY_SPACE) == parent_id
    assert len(all_runs(tracking_store)) == len(runs)
    assert len(client.search_model_versions("name = 'sweep-digits'")) == 1


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--n-trials", "0"], "n_trials='0' is not allowed: must be an integer >= 1"),
        (["--n-trials", "many"], "n_trials='many' is not allowed: must be an integer >= 1"),
        (["--timeout", "-5"], "timeout='-5' is not allowed: must be a number of seconds >= 0"),
        (["--storage", "optuna.db"], "storage='optuna.db' is not allowed: must be a SQLAlchemy database URL"),
        (
            ["--storage", "sqlite:////nonexistent/dir/optuna.db"],
            "Optuna storage sqlite:////nonexistent/dir/optuna.db cannot be opened",
        ),
        (["--study-name", "my study"], "study_name='my study' is not allowed"),
        (["--seed", "-1"], "seed='-1' is not allowed: must be an integer in [0, 2**32)"),
        (["--model-name", "a/b"], "model_name='a/b' is not allowed"),
        (["--data-dir", "/nonexistent/mnist"], "/nonexistent/mnist: no such data folder"),
    ],
)
def test_bad_sweep_parameters_exit_2_before_any_run_or_study(
    argv, expected, tracking_store, tiny_mnist_dir, tmp_path, capsys
):
    if "--data-dir" not in argv:
        argv = [*argv, "--data-dir", str(tiny_mnist_dir)]
    assert cli.run(["sweep", *argv]) == cli.USAGE_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mnist-pipeline: error: ")
    assert expected in err
    assert all_runs(tracking_store) == []
    assert not (tmp_path / "optuna.db").exists()  # the default storage: no study either


def test_a_trial_whose_worker_went_silent_is_failed_and_its_run_killed(tracking_store, tmp_path, monkeypatch):
    monkeypatch.setattr(studies, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(studies, "GRACE_SECONDS", 1)
    storage = studies.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(storage=storage, study_name="silent")
    parent_id = tracking_runs.create_finished_run("silent", {}, {names.TAG_ROLE: "sweep"})
    study.set_user_attr(names.PARENT_ATTR, parent_id)
    trial = study.ask()
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("silent"), trial.number)
    storage.record_heartbeat(trial_id)  # then its worker is killed: no more heartbeats
    client = mlflow.MlflowClient()
    orphan = client.create_run("0", tags={"mlflow.parentRunId": parent_id, names.TAG_TRIAL: str(trial.number)})
    time.sleep(2.5)  # past the 1 s grace period, in the whole seconds SQLite keeps
    optuna.storages.fail_stale_trials(study)  # what the next worker does before each trial
    assert study.trials[0].state == TrialState.FAIL
    run = client.get_run(orphan.info.run_id)
    assert run.info.status == "KILLED" and run.data.tags[names.TAG_TRIAL_STATE] == "FAIL"


# A `mnist-pipeline sweep` process with the tiny search space, in which every trial is
# pruned at its first epoch (fast: no test report, no model); it starts when both workers
# are ready.
WORKER = """
import os, sys, time
from pathlib import Path
import optuna
from mnist_pipeline import cli, names
from mnist_pipeline.flows import study, sweep

class PruneAll(optuna.pruners.BasePruner):
    def prune(self, study, trial):  # first wait (up to 120 s) until both workers hold a trial
        deadline = time.monotonic() + 120
        while len({t.user_attrs.get(names.WORKER_ATTR) for t in study.get_trials(deepcopy=False)} - {None}) < 2:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        return True

study.SEARCH_SPACE = study.SearchSpace(hidden_units=("16,8,8", "32,16,8"), epochs=(1, 3), batch_size=(64,))
study.median_pruner = PruneAll
ready = Path(sys.argv[1])
(ready / str(os.getpid())).touch()
while len(list(ready.iterdir())) < 2:
    time.sleep(0.02)
sys.argv = ["mnist-pipeline", *sys.argv[2:]]
cli.main()
"""


def test_two_workers_started_at_once_share_one_study_one_parent_and_the_budget(
    server_store, postgres, tiny_mnist_dir, tmp_path, request
):
    from helpers.servers import postgres_bin, stop_group

    database = f"optuna_{os.getpid()}"
    subprocess.run(
        [postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "mlflow", database],
        check=True,
        capture_output=True,
    )
    storage = f"{postgres.url.rsplit('/', 1)[0]}/{database}"
    ready = tmp_path / "ready"
    ready.mkdir()
    budget, name = 3, f"digits-{request.node.name[:40]}-{os.getpid()}"
    argv = [
        "sweep",
        "--n-trials",
        str(budget),
        "--storage",
        storage,
        "--study-name",
        "shared",
        "--model-name",
        name,
        "--data-dir",
        str(tiny_mnist_dir),
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(ready), *argv],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for _ in range(2)
    ]
    try:
        outputs = [w.communicate(timeout=400) for w in workers]
    finally:
        for worker in workers:
            stop_group(worker)  # only if still running (a timeout)
    assert [w.returncode for w in workers] == [0, 0], [_last_error(err) for _, err in outputs]

    study = optuna.load_study(study_name="shared", storage=storage)
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == budget
    hostname = socket.gethostname()
    assert {t.user_attrs[names.WORKER_ATTR] for t in done} == {f"{hostname}:{w.pid}" for w in workers}
    split = collections.Counter(t.user_attrs[names.WORKER_ATTR] for t in done)
    print(f"trials per worker: {dict(split)}")  # reported (pytest -s), the assertion is above

    experiment = mlflow.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    runs = mlflow.MlflowClient().search_runs([experiment.experiment_id], max_results=1000)
    assert {r.info.status for r in runs} == {"FINISHED"}
    [parent] = [r for r in runs if r.data.tags.get(names.TAG_ROLE) == "sweep"]
    assert parent.info.run_id == study.user_attrs[names.PARENT_ATTR]
    children = [r for r in runs if r is not parent]
    numbers = sorted(int(r.data.tags[names.TAG_TRIAL]) for r in children)
    assert numbers == sorted(t.number for t in done)  # every trial ran, none twice
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    by_number = {t.number: t for t in done}
    for run in children:
        trial = by_number[int(run.data.tags[names.TAG_TRIAL])]
        assert run.info.run_id == trial.user_attrs[names.RUN_ATTR]
        assert run.data.tags[names.TAG_WORKER] == trial.user_attrs[names.WORKER_ATTR]
        assert run.data.tags[names.TAG_TRIAL_STATE] == trial.state.name
    assert mlflow.MlflowClient().search_registered_models(f"name = '{name}'") == []  # pruned: never


def _last_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    return "\n".join(lines[-5:]) or stderr[-1000:]
