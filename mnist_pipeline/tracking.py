"""MLflow runs: what a training run, a comparison (`main`) run and an evaluation run log.
The logged model lives in logged_model.py, the registry in registry.py.

Artifact paths, metric names and tag keys below are part of the interface: they are the
same for every variant, so the MLflow UI's compare view lines runs up.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import sklearn.metrics
from mlflow.entities import Metric

from mnist_pipeline import config, plots
from mnist_pipeline.config import TrainConfig
from mnist_pipeline.data import NUM_CLASSES, Mnist, array_digest, split_validation
from mnist_pipeline.store import ONE_SHOT, TrackingStoreError, environment
from mnist_pipeline.logged_model import log_keras_model, predict_probabilities
from mnist_pipeline.train import TrainResult, train
from mnist_pipeline.variants import VARIANTS

# Artifacts of a training run.
CURVES = "plots/learning_curves.png"
CONFUSION = "plots/confusion_matrix.png"
MISCLASSIFIED = "plots/misclassified.png"
HISTORY = "tables/history.csv"  # one row per epoch, epochs numbered from 1
PER_CLASS = "tables/per_class.csv"  # precision, recall, f1 and support per digit
# Artifacts of a `main` run.
COMPARISON_CSV = "comparison/comparison.csv"
COMPARISON_MD = "comparison/comparison.md"
OVERLAY = "comparison/validation_curves.png"

SUMMARY_METRICS = (
    "best_val_accuracy",
    "best_epoch",
    "test_accuracy",
    "test_loss",
    "train_seconds",
    "samples_per_second",
)
# Tags. RUN_KEY identifies (configuration, code, data): a FINISHED run with the same key
# is reused by `main` instead of training again.
TAG_VARIANT, TAG_DESCRIPTION, TAG_RUN_KEY = "variant", "description", "run_key"
TAG_CODE_VERSION, TAG_DATA_DIGEST, TAG_REUSED = "code_version", "data_digest", "reused_run_id"
TAG_ROLE = "role"  # "main" on a comparison parent run
TAG_CHILDREN = "children"  # on a main run: JSON {variant: training run id}, reused ones included




@dataclass(frozen=True)
class ChildRun:
    variant: str
    run_id: str
    reused: bool


@functools.cache  # the source does not change while the process runs
def code_version() -> str:
    """Digest of the package's source files: changes whenever the training code does."""
    md5 = hashlib.md5()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        md5.update(path.name.encode() + path.read_bytes())
    return md5.hexdigest()[:12]


def run_key(cfg: TrainConfig, data_digest: str) -> str:
    identity = {"config": cfg.as_params(), "code": code_version(), "data": data_digest}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def track_training(cfg: TrainConfig, data: Mnist, nested: bool = False) -> str:
    """Train ``cfg`` inside one MLflow run named after the variant; returns the run id.

    Logs params, per-epoch metrics (step = epoch, from 1), summary metrics, plots,
    tables, the datasets and the Keras model. An interruption (SIGINT, SIGTERM) ends the
    run KILLED, any other exception FAILED; either way the epochs that finished keep their
    metrics, history table and curves.
    """
    variant = VARIANTS[cfg.variant]
    tags = {
        TAG_VARIANT: cfg.variant,
        TAG_DESCRIPTION: variant.description,
        TAG_RUN_KEY: run_key(cfg, data.digest),
        TAG_CODE_VERSION: code_version(),
        TAG_DATA_DIGEST: data.digest,
    }
    with ended_run(
        run_name=cfg.variant, nested=nested, tags=tags, description=variant.description
    ) as run:
        mlflow.log_params(
            {
                **cfg.as_params(),
                "optimizer": config.OPTIMIZER,
                "loss": config.LOSS,
                "data_source": data.source,
                "data_digest": data.digest,
            }
        )
        _log_datasets(data, cfg.validation_split)
        epochs = EpochLogger(run.info.run_id)
        try:
            result = train(cfg, data, on_epoch=epochs)
        except BaseException:
            if epochs.finished:  # best effort: the original error is what the user must see
                with contextlib.suppress(Exception):
                    epochs.flush()
                    history = pd.DataFrame.from_dict(epochs.finished, orient="index").rename_axis("epoch")
                    _log_history(history, cfg.variant)
            raise
        epochs.flush(final=True)  # anything kept while the server was away
        mlflow.log_param("num_parameters", result.model.count_params())
        mlflow.log_metrics(_summary_metrics(result))
        _log_history(result.history, cfg.variant)
        _log_test_report(data, result.test_probabilities, cfg.variant)
        log_keras_model(result.model, data.x_test[:3])
    return run.info.run_id


class EpochLogger:
    """Logs each epoch's metrics (step = epoch) as it ends. If the tracking server stops
    answering, training goes on: the metrics are kept, with the time they were measured,
    and sent when it answers again. ``flush(final=True)`` at the end waits up to
    FINAL_WAIT_SECONDS for the server, then raises."""

    # While the server is away, try again at most this often (seconds).
    RETRY_SECONDS = float(os.environ.get("MNIST_PIPELINE_RETRY_SECONDS", "20"))
    FINAL_WAIT_SECONDS = 120.0
    BATCH = 1000  # metrics per request: MLflow's log_batch limit

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.finished: dict[int, dict[str, float]] = {}  # epoch -> metrics, for the history
        self._pending: list[Metric] = []
        self._retry_at = 0.0  # monotonic time of the next attempt while the server is away
        self._sent_while_away = 0

    def __call__(self, epoch: int, row: dict[str, float]) -> None:
        self.finished[epoch] = row
        now = int(time.time() * 1000)
        self._pending += [Metric(name, value, now, epoch) for name, value in row.items()]
        if time.monotonic() >= self._retry_at:
            self.flush()

    def flush(self, final: bool = False) -> None:
        give_up_at = time.monotonic() + self.FINAL_WAIT_SECONDS
        self._send()
        while final and self._pending:
            if time.monotonic() > give_up_at:
                raise TrackingStoreError(
                    f"tracking server {mlflow.get_tracking_uri()} did not answer for "
                    f"{self.FINAL_WAIT_SECONDS:.0f} s after training: metrics of "
                    f"{len({m.step for m in self._pending})} epochs could not be logged"
                )
            time.sleep(self.RETRY_SECONDS)
            self._send()

    def _send(self) -> None:
        if not self._pending:
            return
        try:
            client = mlflow.MlflowClient()
            # no retries here: a server that is away must not stall training for seconds
            with environment(ONE_SHOT):
                while self._pending:
                    client.log_batch(self.run_id, metrics=self._pending[: self.BATCH])
                    sent, self._pending = self._pending[: self.BATCH], self._pending[self.BATCH :]
                    self._sent_while_away += len({m.step for m in sent}) if self._retry_at else 0
        except Exception as err:  # the server's errors reach us in many types
            if not self._retry_at:
                print(f"warning: tracking server {mlflow.get_tracking_uri()} did not take the metrics "
                      f"of epoch {self._pending[-1].step} ({type(err).__name__}); training goes on and "
                      "they are sent when it answers again", file=sys.stderr)
            self._retry_at = time.monotonic() + self.RETRY_SECONDS
            return
        if self._retry_at:
            print(f"tracking server answers again: sent the metrics of {self._sent_while_away} kept epochs",
                  file=sys.stderr)
        self._retry_at, self._sent_while_away = 0.0, 0


@contextlib.contextmanager
def ended_run(**start_run_kwargs):
    """``mlflow.start_run`` that always ends its run: FINISHED, KILLED on KeyboardInterrupt
    (the CLI turns SIGTERM into one), FAILED on any other exception."""
    run = mlflow.start_run(**start_run_kwargs)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if status == "FINISHED":
            mlflow.end_run(status)
        else:  # an error is on its way out: ending the run must not replace it
            try:
                mlflow.end_run(status)
            except Exception as err:
                print(f"warning: could not mark run {run.info.run_id} {status}: {err}", file=sys.stderr)


def _log_history(history: pd.DataFrame, title: str) -> None:
    mlflow.log_text(history.to_csv(), HISTORY)
    _log_figure(plots.learning_curves(history, title), CURVES)


def _summary_metrics(result: TrainResult) -> dict[str, float]:
    return {
        "best_val_accuracy": result.best_val_accuracy,
        "best_epoch": result.best_epoch,
        "test_accuracy": result.test_accuracy,
        "test_loss": result.test_loss,
        "train_seconds": result.train_seconds,
        "samples_per_second": result.samples_per_second,
    }


def _log_datasets(data: Mnist, validation_split: float) -> None:
    (x_fit, y_fit), (x_val, y_val) = split_validation(data.x_train, data.y_train, validation_split)
    splits = {
        "training": ("mnist-train", x_fit, y_fit),
        "validation": ("mnist-validation", x_val, y_val),
        "test": ("mnist-test", data.x_test, data.y_test),
    }
    for context, (name, x, y) in splits.items():
        with warnings.catch_warnings():
            # MLflow registers its local-file source twice and warns that a path is
            # ambiguous between the two identical candidates.
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
            dataset = mlflow.data.from_numpy(
                x, targets=y, source=data.source, name=name, digest=array_digest(x, y)
            )
        mlflow.log_input(dataset, context=context)


def _log_test_report(data: Mnist, probabilities: np.ndarray, title: str) -> None:
    """Per-class table, confusion matrix and misclassified digits of the test set."""
    y_pred = probabilities.argmax(axis=1)
    report = sklearn.metrics.classification_report(
        data.y_test, y_pred, labels=range(NUM_CLASSES), output_dict=True, zero_division=0
    )
    per_class = pd.DataFrame({str(d): report[str(d)] for d in range(NUM_CLASSES)}).T
    per_class.index.name = "digit"
    mlflow.log_text(per_class.to_csv(), PER_CLASS)
    figures = {
        CONFUSION: plots.confusion_matrix(data.y_test, y_pred, title),
        MISCLASSIFIED: plots.misclassified(data.x_test, data.y_test, probabilities, title),
    }
    for path, fig in figures.items():
        _log_figure(fig, path)


def _log_figure(fig, path: str) -> None:
    mlflow.log_figure(fig, path)
    plots.close(fig)


def track_train_entry(cfg: TrainConfig, data: Mnist) -> str:
    """The `train` entry point. Launched by `mlflow run`, whose run already holds the
    entry point's raw parameters ('' for "the variant's value", and MLflow forbids changing
    a logged param), the training run is a child of that run; otherwise it is top-level."""
    if mlflow.environment_variables.MLFLOW_RUN_ID.get():
        with ended_run():
            return track_training(cfg, data, nested=True)
    return track_training(cfg, data)


def _log_missing_params(params: dict[str, str]) -> None:
    """Log ``params`` except keys already on the active run (`mlflow run` logs its own)."""
    logged = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in logged})


def find_reusable_run(key: str) -> str | None:
    """Id of the newest FINISHED run in the active experiment with ``key``, if any."""
    runs = mlflow.search_runs(
        filter_string=f"tags.{TAG_RUN_KEY} = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


def track_main(
    configs: list[TrainConfig],
    data: Mnist,
    force: bool = False,
    finish: Callable[[list[str]], object] | None = None,
) -> pd.DataFrame:
    """Train each config as a child run of one parent run, reusing FINISHED runs with the
    same run key unless ``force``; logs and returns the comparison table. ``finish`` gets
    the training run ids while the parent run is still active (registration uses it)."""
    with ended_run(run_name="main", tags={TAG_DATA_DIGEST: data.digest, TAG_ROLE: "main"}) as parent:
        _log_missing_params(
            {"variants": ",".join(c.variant for c in configs), "force": str(force).lower()}
        )
        mlflow.set_tag("data_source", data.source)
        children = []
        for cfg in configs:
            reused = None if force else find_reusable_run(run_key(cfg, data.digest))
            if reused:
                print(f"{cfg.variant}: reusing FINISHED run {reused} (same config, code and data)")
                mlflow.set_tag(f"{TAG_REUSED}.{cfg.variant}", reused)
            run_id = reused or track_training(cfg, data, nested=True)
            children.append(ChildRun(cfg.variant, run_id, reused is not None))
        mlflow.set_tag(TAG_CHILDREN, json.dumps({c.variant: c.run_id for c in children}))
        table = comparison_table(children)
        mlflow.log_text(table.to_csv(index=False), COMPARISON_CSV)
        mlflow.log_text(table.to_markdown(index=False, floatfmt=".4g"), COMPARISON_MD)
        _log_figure(plots.validation_overlay({c.variant: metric_history(c.run_id) for c in children}), OVERLAY)
        if finish is not None:
            finish([c.run_id for c in children])
    print(f"main run {parent.info.run_id}:\n{table.to_markdown(index=False, floatfmt='.4g')}")
    return table


def metric_history(run_id: str) -> pd.DataFrame:
    """Per-epoch validation metrics of a run, read back from the tracking store."""
    client = mlflow.MlflowClient()
    columns = {
        name: {m.step: m.value for m in client.get_metric_history(run_id, name)}
        for name in ("val_accuracy", "val_loss")
    }
    return pd.DataFrame(columns).sort_index().rename_axis("epoch")


def comparison_table(children: list[ChildRun]) -> pd.DataFrame:
    """One row per variant: its params and scores, read from the tracking store."""
    client = mlflow.MlflowClient()
    rows = []
    for child in children:
        run = client.get_run(child.run_id).data
        rows.append(
            {
                "variant": child.variant,
                "hidden_units": run.params["hidden_units"],
                "dropout": float(run.params["dropout"]),
                "l2": float(run.params["l2"]),
                "epochs": int(run.params["epochs"]),
                "best_val_accuracy": run.metrics["best_val_accuracy"],
                "best_epoch": int(run.metrics["best_epoch"]),
                "val_accuracy": run.metrics["val_accuracy"],  # last epoch: what selection uses
                "test_accuracy": run.metrics["test_accuracy"],
                "test_loss": run.metrics["test_loss"],
                "study_test_accuracy": VARIANTS[child.variant].study_test_accuracy,
                "train_seconds": run.metrics["train_seconds"],
                "run_id": child.run_id,
                "reused": child.reused,
            }
        )
    return pd.DataFrame(rows)


def track_evaluation(model_uri: str, model: mlflow.pyfunc.PyFuncModel, data: Mnist) -> dict[str, float]:
    """One run named "evaluate": ``model`` through pyfunc on the test set."""
    with ended_run(run_name="evaluate", tags={TAG_ROLE: "evaluate", "model_uri": model_uri}):
        _log_missing_params({"model_uri": model_uri, "data_source": data.source, "data_digest": data.digest})
        if getattr(model.metadata, "model_id", None):
            mlflow.set_tag("model_id", model.metadata.model_id)
        probabilities = predict_probabilities(model, data.x_test)
        metrics = {
            "test_accuracy": float((probabilities.argmax(axis=1) == data.y_test).mean()),
            "test_loss": float(
                sklearn.metrics.log_loss(data.y_test, probabilities, labels=range(NUM_CLASSES))
            ),
        }
        mlflow.log_metrics(metrics)
        _log_test_report(data, probabilities, model_uri)
    print(f"{model_uri}: test accuracy {metrics['test_accuracy']:.4f}, loss {metrics['test_loss']:.4f}")
    return metrics
