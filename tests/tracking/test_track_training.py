"""Training runs and comparison runs as MLflow records them, on tiny synthetic data."""

import dataclasses

import mlflow
import numpy as np
import pandas as pd
import pytest

from helpers.checks import artifact_paths, check_training_run, tiny
from helpers.stores import all_runs
from mnist_pipeline import names
from mnist_pipeline.core.commands import MainParams
from mnist_pipeline.flows import main
from mnist_pipeline.tracking import epoch_logger, logged_model, track_training

SYSTEM_METRICS = ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes")


def test_training_run_logs_params_epochs_artifacts_and_model(tracking_store, tiny_mnist, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # tiny runs last seconds
    cfg = tiny("final", epochs=3)
    run_id = track_training.track_training(cfg, tiny_mnist)
    check_training_run(run_id, cfg, tiny_mnist.digest)
    assert mlflow.active_run() is None
    client = mlflow.MlflowClient()
    for name in SYSTEM_METRICS:  # MLflow's own system metrics, several points per run
        assert len(client.get_metric_history(run_id, name)) >= 2, name


def test_system_metrics_are_off_when_mlflow_s_variable_says_so(tracking_store, tiny_mnist, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    run_id = track_training.track_training(tiny("baseline", epochs=1), tiny_mnist)
    assert not [name for name in mlflow.get_run(run_id).data.metrics if name.startswith("system/")]


def test_a_dataset_another_process_inserted_first_is_linked_on_the_second_try(tracking_store, tiny_mnist, monkeypatch):
    """Two sweep workers logging the same dataset at once: the store refuses the later insert
    (its unique key). The training goes on, and its run has all three datasets."""
    from mlflow.exceptions import MlflowException

    log_input, refused = mlflow.log_input, []

    def refuse_once(dataset, context=None, **kwargs):
        if not refused:
            refused.append(context)
            raise MlflowException('duplicate key value violates unique constraint "dataset_pk"')
        return log_input(dataset, context=context, **kwargs)

    monkeypatch.setattr(mlflow, "log_input", refuse_once)
    run_id = track_training.track_training(tiny("baseline", epochs=1), tiny_mnist)
    run = mlflow.get_run(run_id)
    assert refused == ["training"] and run.info.status == "FINISHED"
    contexts = {tag.value for dataset in run.inputs.dataset_inputs for tag in dataset.tags}
    assert contexts == {"training", "validation", "test"}


def test_mlflow_keras_input_example_bug_still_needs_the_workaround(tracking_store):
    """On every MLflow version: fails once MLflow fixes the bug (then drop the folder made first
    in logged_model._save_keras_model, and this test); the workaround logs the example."""
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    example = np.zeros((1, 2), np.float32)
    with mlflow.start_run():
        with pytest.raises(FileNotFoundError):  # no raise: MLflow fixed it
            mlflow.keras.log_model(model, name="m", input_example=example)
        info = logged_model.log_keras_model(model, example)
    assert mlflow.models.Model.load(info.model_uri).load_input_example().shape == (1, 2)


def test_failure_during_training_ends_the_run_failed_with_epochs_kept(tracking_store, tiny_mnist, monkeypatch):
    real_train = track_training.train

    def crash_after_first_epoch(cfg, data, on_epoch=None):
        def on_epoch_then_crash(epoch, row):
            on_epoch(epoch, row)
            raise RuntimeError("disk on fire")

        return real_train(cfg, data, on_epoch=on_epoch_then_crash)

    monkeypatch.setattr(track_training, "train", crash_after_first_epoch)
    with pytest.raises(RuntimeError, match="disk on fire"):
        track_training.track_training(tiny("baseline"), tiny_mnist)
    [run] = all_runs(tracking_store)
    assert run.info.status == "FAILED"
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_accuracy")] == [1]


def test_metrics_kept_while_the_server_is_away_fail_in_one_named_line(monkeypatch):
    from helpers.servers import free_port
    from mnist_pipeline.tracking.store import TrackingStoreError

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    mlflow.set_tracking_uri(uri)
    monkeypatch.setenv("MNIST_PIPELINE_RETRY_SECONDS", "0.1")  # read as the logger starts, not at import
    try:
        logger = epoch_logger.EpochLogger("0" * 32)
        assert logger.retry_seconds == 0.1
        monkeypatch.setattr(logger, "FINAL_WAIT_SECONDS", 0.5)
        logger(1, {"val_accuracy": 0.5})  # kept, not raised: training goes on
        logger(2, {"val_accuracy": 0.6})
        assert logger.finished == {1: {"val_accuracy": 0.5}, 2: {"val_accuracy": 0.6}}
        with pytest.raises(TrackingStoreError, match=rf"{uri} did not answer .* metrics of 2 epochs"):
            logger.flush(final=True)
    finally:
        mlflow.set_tracking_uri(None)


def test_main_compares_children_and_reuses_finished_runs(tracking_store, tiny_mnist):
    configs = [tiny("baseline", 2), tiny("final", 1)]
    local = MainParams(model_name="", workers=1)  # no registration, trainings in this process
    table = main.compare(configs, tiny_mnist, local)
    runs = all_runs(tracking_store)
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.data.tags["variant"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"baseline", "final"}
    for cfg in configs:
        check_training_run(children[cfg.variant].info.run_id, cfg, tiny_mnist.digest)
    assert list(table["variant"]) == ["baseline", "final"] and not table["reused"].any()
    assert {names.COMPARISON_CSV, names.COMPARISON_MD, names.OVERLAY} <= artifact_paths(parent.info.run_id)
    logged = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path=names.COMPARISON_CSV)
    )
    assert logged["test_accuracy"].tolist() == pytest.approx(
        [children[v].data.metrics["test_accuracy"] for v in ("baseline", "final")]
    )

    again = main.compare(configs, tiny_mnist, local)
    assert again["reused"].all() and list(again["run_id"]) == list(table["run_id"])
    assert len(all_runs(tracking_store)) == 4  # one more parent, no new child

    changed = main.compare([tiny("baseline", 1)], tiny_mnist, local)
    assert not changed["reused"].any()  # epochs differ: a different run key
    forced = main.compare(configs, tiny_mnist, dataclasses.replace(local, force=True))
    assert not forced["reused"].any()
    statuses = {r.info.status for r in all_runs(tracking_store)}
    assert statuses == {"FINISHED"}
