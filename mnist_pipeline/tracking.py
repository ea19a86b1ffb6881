"""MLflow runs: what a training run, a comparison (`main`) run and an evaluation run log.
The logged model lives in logged_model.py, the registry in registry.py.

Artifact paths, metric names and tag keys below are part of the interface: they are the
same for every variant, so the MLflow UI's compare view lines runs up.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
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
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException

from mnist_pipeline import config, plots, reproduce
from mnist_pipeline.config import TrainConfig
from mnist_pipeline.data import NUM_CLASSES, Mnist, array_digest, split_validation
from mnist_pipeline.errors import RegistrationError, UserError, first_line
from mnist_pipeline.logged_model import log_keras_model, predict_probabilities
from mnist_pipeline.store import ONE_SHOT, TrackingStoreError, environment
from mnist_pipeline.train import TrainResult, train
from mnist_pipeline.variants import VARIANTS

# Artifacts of a training run.
CURVES = "plots/learning_curves.png"
CONFUSION = "plots/confusion_matrix.png"
MISCLASSIFIED = "plots/misclassified.png"
HISTORY = "tables/history.csv"  # one row per epoch, epochs numbered from 1
PER_CLASS = "tables/per_class.csv"  # precision, recall, f1 and support per digit
# Test-set counts: one row per true digit, one column per predicted digit (predicted_0..9).
CONFUSION_COUNTS = "tables/confusion.csv"
# Artifacts of a `main` run.
COMPARISON_CSV = "comparison/comparison.csv"
COMPARISON_MD = "comparison/comparison.md"
OVERLAY = "comparison/validation_curves.png"
# Artifacts of a `reproduce` run.
REPRODUCE_RUNS = "reproduce/runs.csv"  # one row per variant and seed
REPRODUCE_TABLE = "reproduce/seed_table.csv"  # per variant: mean, std, min, max, study
REPRODUCE_PAIRS = "reproduce/pairs.csv"  # per pair of variants: difference against seed noise
REPRODUCE_MD = "reproduce/reproduce.md"  # both tables in markdown
REPRODUCE_PLOT = "reproduce/seed_spread.png"

TRACKING_SECONDS = "tracking_seconds"  # time per-epoch logging took inside training
SUMMARY_METRICS = (
    "best_val_accuracy",
    "best_epoch",
    "test_accuracy",
    "test_loss",
    "train_seconds",
    "samples_per_second",
    TRACKING_SECONDS,
)
# Tags. RUN_KEY identifies (configuration, code, data): a FINISHED run with the same key
# is reused by `main` instead of training again.
TAG_VARIANT, TAG_DESCRIPTION, TAG_RUN_KEY = "variant", "description", "run_key"
TAG_CODE_VERSION, TAG_DATA_DIGEST, TAG_REUSED = "code_version", "data_digest", "reused_run_id"
TAG_ROLE = "role"  # "main" on a comparison parent run
TAG_CHILDREN = "children"  # on a main run: JSON {variant: training run id}, reused ones included
TAG_REGISTRATION_ERROR = "registration_error"  # on a main run whose registration failed
TAG_SEED_RUNS = "seed_runs"  # on a reproduce run: JSON {variant: [training run ids, by seed]}
TAG_STOPPED = "stopped_early"  # why an after_epoch hook stopped the run's training (a pruned trial)


class TrainingStopped(Exception):
    """Raised by a track_training ``after_epoch`` hook to stop training on purpose (e.g. a
    pruned sweep trial): the run ends FINISHED with the epochs done, tagged TAG_STOPPED (the
    message) and ``tags``, without a run key."""

    def __init__(self, message: str, tags: dict[str, str] | None = None):
        super().__init__(message)
        self.tags = tags or {}
        self.run_id: str | None = None  # set by track_training




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


def track_training(
    cfg: TrainConfig,
    data: Mnist,
    nested: bool = False,
    tags: dict[str, str] | None = None,
    after_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> str:
    """Train ``cfg`` inside one MLflow run named after the variant; returns the run id.

    Logs params, per-epoch metrics (step = epoch, from 1), summary metrics, plots,
    tables, the datasets and the Keras model. An interruption (SIGINT, SIGTERM) ends the
    run KILLED, any other exception FAILED; either way the epochs that finished keep their
    metrics, history table and curves.

    ``tags`` go on the run beside its own. ``after_epoch(epoch, metrics)`` is called after
    each epoch's metrics are handed to the logger; if it raises TrainingStopped, the run
    keeps the finished epochs and ends FINISHED without a run key, and TrainingStopped
    (with its ``run_id`` set) goes on up.
    """
    variant = VARIANTS[cfg.variant]
    tags = {
        TAG_VARIANT: cfg.variant,
        TAG_DESCRIPTION: variant.description,
        TAG_RUN_KEY: run_key(cfg, data.digest),
        TAG_CODE_VERSION: code_version(),
        TAG_DATA_DIGEST: data.digest,
        **(tags or {}),
    }
    stopped = None
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
            result = train(cfg, data, on_epoch=_then(epochs, after_epoch))
        except TrainingStopped as stop:
            stopped = stop
            _log_stopped(stop, epochs, cfg.variant)
        except BaseException:
            if epochs.finished:  # best effort: the original error is what the user must see
                with contextlib.suppress(Exception):
                    epochs.flush()
                    _log_history(epochs.history(), cfg.variant)
            raise
        else:
            epochs.flush(final=True)  # anything kept while the server was away
            mlflow.log_param("num_parameters", result.model.count_params())
            mlflow.log_metrics({**_summary_metrics(result), TRACKING_SECONDS: epochs.seconds})
            _log_history(result.history, cfg.variant)
            _log_test_report(data, result.test_probabilities, cfg.variant)
            log_keras_model(result.model, data.x_test[:3])
    if stopped is not None:  # raised only now: the run is FINISHED
        stopped.run_id = run.info.run_id
        raise stopped
    return run.info.run_id


def _then(first: Callable, then: Callable | None) -> Callable:
    """``first(epoch, metrics)``, then ``then(epoch, metrics)`` if there is one."""
    if then is None:
        return first

    def both(epoch: int, metrics: dict[str, float]) -> None:
        first(epoch, metrics)
        then(epoch, metrics)

    return both


def _log_stopped(stop: TrainingStopped, epochs: EpochLogger, title: str) -> None:
    """A run stopped on purpose keeps its finished epochs and loses its run key, so that
    `main` never reuses it and the registry never takes it."""
    epochs.flush(final=True)
    _log_history(epochs.history(), title)
    mlflow.delete_tag(TAG_RUN_KEY)
    mlflow.set_tags({TAG_STOPPED: str(stop), **stop.tags})


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
        self.seconds = 0.0  # spent logging inside the epochs: what tracking costs training
        self._pending: list[Metric] = []
        self._retry_at = 0.0  # monotonic time of the next attempt while the server is away
        self._sent_while_away = 0

    def history(self) -> pd.DataFrame:
        """The finished epochs as a history table (index "epoch"), as train() returns it."""
        return pd.DataFrame.from_dict(self.finished, orient="index").rename_axis("epoch")

    def __call__(self, epoch: int, row: dict[str, float]) -> None:
        start = time.perf_counter()
        self.finished[epoch] = row
        now = int(time.time() * 1000)
        self._pending += [Metric(name, value, now, epoch) for name, value in row.items()]
        if time.monotonic() >= self._retry_at:
            self.flush()
        self.seconds += time.perf_counter() - start

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
    counts = sklearn.metrics.confusion_matrix(data.y_test, y_pred, labels=range(NUM_CLASSES))
    digits = pd.RangeIndex(NUM_CLASSES, name="true_digit")
    columns = [f"predicted_{d}" for d in range(NUM_CLASSES)]
    mlflow.log_text(pd.DataFrame(counts, index=digits, columns=columns).to_csv(), CONFUSION_COUNTS)
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
    register: Callable[[list[str]], object] | None = None,
) -> pd.DataFrame:
    """Train each config as a child run of one parent run, reusing FINISHED runs with the
    same run key unless ``force``; logs and returns the comparison table.

    ``register`` gets the training run ids while the parent run is still active. If it
    fails, the parent still ends FINISHED (its training and comparison are complete and
    kept), tagged ``registration_error``, and RegistrationError says how to retry."""
    failure = None
    with ended_run(run_name="main", tags={TAG_DATA_DIGEST: data.digest, TAG_ROLE: "main"}) as parent:
        _log_missing_params(
            {"variants": ",".join(c.variant for c in configs), "force": str(force).lower()}
        )
        mlflow.set_tag("data_source", data.source)
        children = _train_or_reuse(configs, data, force)
        for child in children:
            if child.reused:
                mlflow.set_tag(f"{TAG_REUSED}.{child.variant}", child.run_id)
        mlflow.set_tag(TAG_CHILDREN, json.dumps({c.variant: c.run_id for c in children}))
        table = comparison_table(children)
        mlflow.log_text(table.to_csv(index=False), COMPARISON_CSV)
        mlflow.log_text(table.to_markdown(index=False, floatfmt=".4g"), COMPARISON_MD)
        _log_figure(plots.validation_overlay({c.variant: metric_history(c.run_id) for c in children}), OVERLAY)
        print(f"main run {parent.info.run_id}:\n{table.to_markdown(index=False, floatfmt='.4g')}")
        if register is not None:
            try:
                register([c.run_id for c in children])
            except Exception as err:  # the store's errors come in many types
                failure = f"{type(err).__name__}: {first_line(err)}"
                with contextlib.suppress(Exception):  # the store may be what failed
                    mlflow.set_tag(TAG_REGISTRATION_ERROR, failure[:5000])
    if failure:
        raise RegistrationError(
            f"registering the best run failed ({failure}); the training runs and main run "
            f"{parent.info.run_id} are FINISHED and kept: retry with "
            f"`mlflow run . -e register -P run_id={parent.info.run_id}`"
        )
    return table


def confusion_counts(run_id: str) -> np.ndarray | None:
    """The (10, 10) test-set counts a run logged (rows: true digit), read back from the
    tracking store; None if it logged none (a run from before they were logged)."""
    folder = CONFUSION_COUNTS.rsplit("/", 1)[0]
    if CONFUSION_COUNTS not in {f.path for f in mlflow.MlflowClient().list_artifacts(run_id, folder)}:
        return None
    text = mlflow.artifacts.load_text(f"runs:/{run_id}/{CONFUSION_COUNTS}")
    return pd.read_csv(io.StringIO(text), index_col="true_digit").to_numpy()


def _train_or_reuse(configs: list[TrainConfig], data: Mnist, force: bool) -> list[ChildRun]:
    """Each config as a child of the active run, or the FINISHED run with its run key."""
    children = []
    for cfg in configs:
        reused = None if force else find_reusable_run(run_key(cfg, data.digest))
        if reused:
            print(f"{cfg.variant} (seed {cfg.seed}): reusing FINISHED run {reused} (same config, code and data)")
        run_id = reused or track_training(cfg, data, nested=True)
        children.append(ChildRun(cfg.variant, run_id, reused is not None))
    return children


def track_reproduce(configs: list[TrainConfig], data: Mnist, force: bool = False) -> pd.DataFrame:
    """The `reproduce` entry point: each config (a variant at one seed) as a child run of
    one parent run, reusing FINISHED runs with the same run key unless ``force``. Logs on
    the parent the seed table (test accuracy mean, std, min, max beside the study), the
    pairwise differences against seed noise, both as CSV and markdown, and a strip plot."""
    with ended_run(run_name="reproduce", tags={TAG_DATA_DIGEST: data.digest, TAG_ROLE: "reproduce"}):
        variants = list(dict.fromkeys(c.variant for c in configs))
        seeds = sorted({c.seed for c in configs})
        _log_missing_params({"variants": ",".join(variants), "seeds": ",".join(map(str, seeds)),
                             "force": str(force).lower()})
        mlflow.set_tag("data_source", data.source)
        children = _train_or_reuse(configs, data, force)
        client = mlflow.MlflowClient()
        results = pd.DataFrame(
            [
                {
                    "variant": cfg.variant,
                    "seed": cfg.seed,
                    "test_accuracy": (m := client.get_run(child.run_id).data.metrics)["test_accuracy"],
                    "val_accuracy": m["val_accuracy"],
                    "run_id": child.run_id,
                    "reused": child.reused,
                }
                for cfg, child in zip(configs, children)
            ]
        )
        mlflow.set_tag(TAG_SEED_RUNS, json.dumps({v: list(results.loc[results["variant"] == v, "run_id"]) for v in variants}))
        study = {name: VARIANTS[name].study_test_accuracy for name in variants}
        table, pairs = reproduce.seed_table(results, study), reproduce.pairwise(results)
        text = reproduce.markdown(table, pairs)
        mlflow.log_text(results.to_csv(index=False), REPRODUCE_RUNS)
        mlflow.log_text(table.to_csv(index=False), REPRODUCE_TABLE)
        mlflow.log_text(pairs.to_csv(index=False), REPRODUCE_PAIRS)
        mlflow.log_text(text, REPRODUCE_MD)
        _log_figure(plots.seed_spread(results, study), REPRODUCE_PLOT)
        for row in table.itertuples():
            mlflow.log_metrics({f"test_accuracy_{stat}.{row.variant}": getattr(row, stat)
                                for stat in ("mean", "std", "min", "max") if pd.notna(getattr(row, stat))})
    print(text)
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
                "conv_filters": run.params["conv_filters"],
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


# Sweeps (sweep.py): one parent run per Optuna study; each trial is a training run under it.
SWEEP_TRIALS_CSV = "sweep/trials.csv"  # one row per trial: number, state, params, scores, run id, worker
SWEEP_TRIALS_MD = "sweep/trials.md"
SWEEP_BEST_PARAMS = "sweep/best_params.json"  # the best COMPLETE trial's hyperparameters


def detach_project_run() -> str | None:
    """Under `mlflow run`, the id of MLflow's own run for the entry point, taken out of the
    environment so that the next runs are new ones beside it rather than resuming it.
    `mlflow run` ends it when the process exits."""
    return os.environ.pop(mlflow.environment_variables.MLFLOW_RUN_ID.name, None)


def create_sweep_parent(name: str, params: dict, tags: dict[str, str]) -> str:
    """The parent of a study's trial runs. It ends FINISHED at once and workers only add tags
    and artifacts to it later: no worker, however it stops, can leave it RUNNING."""
    with ended_run(run_name=name, tags={TAG_ROLE: "sweep", **tags}) as run:
        mlflow.log_params(params)
    return run.info.run_id


def use_sweep_parent(run_id: str) -> None:
    """Start the next runs in the parent's experiment; UserError if this store lacks it."""
    try:
        experiment_id = mlflow.get_run(run_id).info.experiment_id
    except MlflowException:
        raise UserError(f"the study's parent run {run_id} is not in tracking store {mlflow.get_tracking_uri()}: "
                        "all workers of a study must use the same MLFLOW_TRACKING_URI") from None
    mlflow.set_experiment(experiment_id=experiment_id)


def set_run_tags(run_id: str, tags: dict[str, str]) -> None:
    mlflow.MlflowClient().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def tag_last_run(expected: dict[str, str], tags: dict[str, str]) -> None:
    """Best effort, while an error is on its way out: ``tags`` on the run this process ended
    last, if it carries the ``expected`` tags."""
    with contextlib.suppress(Exception):
        run = mlflow.last_active_run()
        if run is not None and all(run.data.tags.get(k) == v for k, v in expected.items()):
            set_run_tags(run.info.run_id, tags)


def child_runs(parent_id: str, tags: dict[str, str] | None = None, status: str = "") -> list:
    """Runs of the active experiment under ``parent_id`` with ``tags`` (and ``status``)."""
    filters = [f"tags.mlflow.parentRunId = '{parent_id}'"] + [f"tags.{k} = '{v}'" for k, v in (tags or {}).items()]
    filters += [f"attributes.status = '{status}'"] if status else []
    return mlflow.search_runs(filter_string=" and ".join(filters), output_format="list")


def end_running_children(parent_id: str, tags: dict[str, str], status: str = "KILLED") -> list[str]:
    """End the RUNNING runs under ``parent_id`` with ``tags`` (their process is gone)."""
    client = mlflow.MlflowClient()
    ended = [run.info.run_id for run in child_runs(parent_id, tags, status="RUNNING")]
    for run_id in ended:
        client.set_terminated(run_id, status)
    return ended


def log_sweep_summary(parent_id: str, table: pd.DataFrame, best_params: dict, tags: dict[str, str]) -> None:
    """The trials table, the best trial's params and ``tags`` on the (FINISHED) parent run."""
    client = mlflow.MlflowClient()
    client.log_text(parent_id, table.to_csv(index=False), SWEEP_TRIALS_CSV)
    client.log_text(parent_id, table.to_markdown(index=False, floatfmt=".4g"), SWEEP_TRIALS_MD)
    client.log_dict(parent_id, best_params, SWEEP_BEST_PARAMS)
    set_run_tags(parent_id, tags)
