"""Assertions shared by the tests that inspect what a run logged."""

import contextlib
import logging
import time

import mlflow
import numpy as np
import pandas as pd
import pytest

from mnist_pipeline import names
from mnist_pipeline.core.config import resolve
from mnist_pipeline.names import EPOCH_METRICS
from mnist_pipeline.tracking import logged_model

TRAINING_ARTIFACTS = {
    names.CURVES,
    names.CONFUSION,
    names.MISCLASSIFIED,
    names.HISTORY,
    names.PER_CLASS,
    names.VAL_PER_CLASS,
    names.CONFUSION_COUNTS,
    names.PHASES,
}


def tiny(variant: str, epochs: int = 2):
    return resolve(variant, {"epochs": epochs, "batch_size": 64})


def artifact_paths(run_id: str) -> set[str]:
    client = mlflow.MlflowClient()
    found = set()
    for folder in client.list_artifacts(run_id):
        found |= {f.path for f in client.list_artifacts(run_id, folder.path)} if folder.is_dir else {folder.path}
    return found


def check_training_run(run_id: str, cfg, data_digest: str) -> None:
    """Everything a training run must hold, whatever launched it."""
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == cfg.variant
    params = run.data.params
    for key, value in cfg.as_params().items():
        assert params[key] == str(value), key
    assert {"optimizer", "loss", "data_source", "num_parameters"} <= set(params)
    assert params["data_digest"] == data_digest
    for name in EPOCH_METRICS:
        steps = [m.step for m in client.get_metric_history(run_id, name)]
        assert steps == list(range(1, cfg.epochs + 1)), name
    assert set(names.SUMMARY_METRICS) <= set(run.data.metrics)
    assert 1 <= run.data.metrics["best_epoch"] <= cfg.epochs
    assert run.data.tags[names.TAG_VARIANT] == cfg.variant
    assert run.data.tags[names.TAG_DESCRIPTION]
    assert artifact_paths(run_id) >= TRAINING_ARTIFACTS
    contexts = {i.tags[0].value for i in run.inputs.dataset_inputs}
    assert contexts == {"training", "validation", "test"}
    history = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=names.HISTORY))
    assert list(history["epoch"]) == list(range(1, cfg.epochs + 1))
    # per digit on the validation split: recalls weighted by each digit's count are the accuracy
    per_digit = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=names.VAL_PER_CLASS))
    recalls = [run.data.metrics[names.VAL_RECALL.format(digit=d)] for d in range(10)]
    np.testing.assert_allclose(recalls, per_digit["recall"], rtol=1e-6)
    assert [names.VAL_PRECISION.format(digit=d) in run.data.metrics for d in range(10)] == [True] * 10
    weighted = float(np.dot(recalls, per_digit["support"]) / per_digit["support"].sum())
    assert weighted == pytest.approx(run.data.metrics["val_accuracy"], abs=1e-6)
    assert {names.TAG_HOST, names.TAG_PID, names.TAG_PROCESS_START, names.TAG_HEARTBEAT} <= set(run.data.tags)
    assert int(run.data.tags[names.TAG_THREADS]) >= 1  # what `verify` trains on again

    uri = logged_model.logged_model_uri(run_id)
    info = mlflow.models.get_model_info(uri)
    assert info.flavors["keras"]["save_exported_model"] is False  # native .keras file
    assert info.signature.inputs.inputs[0].shape == (-1, 28, 28)
    assert info.signature.outputs.inputs[0].shape == (-1, 10)
    example = mlflow.models.Model.load(uri).load_input_example()
    assert example.shape[1:] == (28, 28) and example.dtype == np.float32
    probabilities = mlflow.pyfunc.load_model(uri).predict(example)
    assert probabilities.shape == (len(example), 10)
    # the logged model's figures about a split name it: the run's dataset of that name and digest
    logged = {i.dataset.name: i.dataset.digest for i in run.inputs.dataset_inputs}
    model_metrics = mlflow.get_logged_model(uri.removeprefix("models:/")).metrics
    linked = {m.key: (m.dataset_name, m.dataset_digest) for m in model_metrics if m.dataset_name}
    expected = {**names.DATASET_METRICS, "validation": (*names.DATASET_METRICS["validation"], "val_recall_3")}
    for context, metrics in expected.items():
        name = names.DATASETS[context]
        assert {metric: linked.get(metric) for metric in metrics} == {m: (name, logged[name]) for m in metrics}
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)


@contextlib.contextmanager
def tensorflow_log_lines():
    """The messages TensorFlow's logger writes while the block runs (a list, filled as they come)."""
    import tensorflow as tf

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    tf.get_logger().addHandler(handler)
    try:
        yield seen
    finally:
        tf.get_logger().removeHandler(handler)


def wait_until(condition, seconds: float = 30.0) -> None:
    """Until ``condition()`` is true, asked every 0.01 s; AssertionError after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.01)
