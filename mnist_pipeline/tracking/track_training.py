"""What a training run logs: params, per-epoch metrics, summary metrics, plots, tables,
the datasets and the Keras model. The same for every variant and every command that
trains (train, main, reproduce, sweep, bench), so runs line up in the compare view.
"""

import contextlib
from collections.abc import Callable

import mlflow
from mlflow.exceptions import MlflowException

from mnist_pipeline import names
from mnist_pipeline.core import config, console, threads
from mnist_pipeline.core.data import Mnist, array_digest, split_validation
from mnist_pipeline.core.phases import Phases
from mnist_pipeline.core.training import TrainResult, train
from mnist_pipeline.core.variants import VARIANTS
from mnist_pipeline.tracking import store
from mnist_pipeline.tracking.epoch_logger import EpochLogger
from mnist_pipeline.tracking.logged_model import log_keras_model
from mnist_pipeline.tracking.reports import log_history, log_test_report, log_validation_report
from mnist_pipeline.tracking.run_keys import code_version, config_key, run_key
from mnist_pipeline.tracking.run_lifecycle import ended_run, make_dataset, system_metrics


class TrainingStopped(Exception):
    """Raised by a track_training ``after_epoch`` hook to stop training on purpose (e.g. a
    pruned sweep trial): the run ends FINISHED with the epochs done, tagged TAG_STOPPED (the
    message) and ``tags``, without a run key."""

    def __init__(self, message: str, tags: dict[str, str] | None = None):
        super().__init__(message)
        self.tags = tags or {}
        self.run_id: str | None = None  # set by track_training


def track_training(
    cfg: config.TrainConfig,
    data: Mnist,
    tags: dict[str, str] | None = None,
    after_epoch: Callable[[int, dict[str, float]], None] | None = None,
    parent_run_id: str | None = None,
    label: str = "",
) -> str:
    """Train ``cfg`` inside one MLflow run named after the variant; returns the run id.

    Logs params, per-epoch metrics (step = epoch, from 1), summary metrics, plots,
    tables, the datasets and the Keras model. An interruption (SIGINT, SIGTERM) ends the
    run KILLED, any other exception FAILED; either way the epochs that finished keep their
    metrics, history table and curves.

    A child of ``parent_run_id`` if given (the active run, if there is one; a worker's parent
    run, tracking/training_dispatch.py); ``label`` (default: the variant) names it on the console.
    ``tags`` go on the run beside its own. ``after_epoch(epoch, metrics)`` is called after
    each epoch's metrics are handed to the logger; if it raises TrainingStopped, the run
    keeps the finished epochs and ends FINISHED without a run key, and TrainingStopped
    (with its ``run_id`` set) goes on up.
    """
    stopped, description = None, VARIANTS[cfg.variant].description
    # nested: MLflow starts a run under the active run, which must be parent_run_id, or refuses it
    start = {"nested": True, "parent_run_id": parent_run_id, "tags": _tags(cfg, data, tags)}
    phases, label = Phases(), label or cfg.variant
    with ended_run(run_name=cfg.variant, description=description, log_system_metrics=system_metrics(), **start) as run:
        print(console.header(label, run.info.run_id, cfg.epochs), flush=True)
        with phases("datasets"):
            datasets = _log_inputs(cfg, data)
        epochs = EpochLogger(run.info.run_id, parent_run_id)
        try:
            result = train(cfg, data, on_epoch=_on_epoch(label, cfg.epochs, epochs, after_epoch))
        except TrainingStopped as stop:
            stopped = stop
            _log_stopped(stop, epochs, cfg.variant)
        except BaseException:
            if epochs.finished:  # best effort: the original error is what the user must see
                with contextlib.suppress(Exception):
                    epochs.flush()
                    log_history(epochs.history(), cfg.variant)
            raise
        else:
            epochs.flush(final=True)  # anything kept while the server was away
            _log_result(result, epochs, data, datasets, cfg.variant, phases)
    if stopped is not None:  # raised only now: the run is FINISHED
        stopped.run_id = run.info.run_id
        raise stopped
    return run.info.run_id


def _tags(cfg: config.TrainConfig, data: Mnist, extra: dict[str, str] | None) -> dict[str, str]:
    return {
        names.TAG_VARIANT: cfg.variant,
        names.TAG_DESCRIPTION: VARIANTS[cfg.variant].description,
        names.TAG_RUN_KEY: run_key(cfg, data.digest),
        names.TAG_CONFIG_KEY: config_key(cfg, data.digest),
        names.TAG_CODE_VERSION: code_version(),
        names.TAG_DATA_DIGEST: data.digest,
        names.TAG_THREADS: str(threads.current()),
        **(extra or {}),
    }


def _on_epoch(label: str, total: int, logger: EpochLogger, after_epoch: Callable | None) -> Callable:
    """Where each epoch's metrics go as the epoch ends: its console line, the logger, then
    ``after_epoch`` if there is one."""

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        print(console.epoch_line(label, epoch, total, metrics), flush=True)
        logger(epoch, metrics)
        if after_epoch is not None:
            after_epoch(epoch, metrics)

    return on_epoch


def _log_result(
    result: TrainResult, epochs: EpochLogger, data: Mnist, datasets: dict, title: str, phases: Phases
) -> None:
    """The summary metrics, tables, plots and model; the metrics about a split after the model,
    linked to both (MLflow links the metrics logged before a model to it, without a dataset)."""
    mlflow.log_param(names.NUM_PARAMETERS, result.model.count_params())
    summary = {name: getattr(result, name, None) for name in names.SUMMARY_METRICS}  # TrainResult's, by name
    summary[names.TRACKING_SECONDS] = epochs.seconds  # but the logger's own time
    linked = {
        context: {name: summary.pop(name) for name in metrics} for context, metrics in names.DATASET_METRICS.items()
    }
    mlflow.log_metrics(summary)
    with phases("plots and tables"):
        log_history(result.history, title)
        log_test_report(data, result.test_probabilities, title)
    with phases("model"):
        model_id = log_keras_model(result.model, data.x_test[:3]).model_id
    for context, metrics in linked.items():
        mlflow.log_metrics(metrics, dataset=datasets[context], model_id=model_id)
    with phases("plots and tables"):
        log_validation_report(
            result.val_labels, result.val_probabilities, dataset=datasets["validation"], model_id=model_id
        )
    mlflow.log_dict({**result.phases, **phases.seconds}, names.PHASES)


def _log_stopped(stop: TrainingStopped, epochs: EpochLogger, title: str) -> None:
    """A run stopped on purpose keeps its finished epochs and loses its run key, so that
    `main` never reuses it and the registry never takes it."""
    epochs.flush(final=True)
    log_history(epochs.history(), title)
    mlflow.delete_tag(names.TAG_RUN_KEY)
    mlflow.set_tags({names.TAG_STOPPED: str(stop), **stop.tags})


def _log_inputs(cfg: config.TrainConfig, data: Mnist) -> dict:
    """The configuration and where the data came from as params, and the three splits as
    datasets, which it returns by context."""
    mlflow.log_params(
        {
            **cfg.as_params(),
            "optimizer": config.OPTIMIZER,
            "loss": config.LOSS,
            "data_source": data.source,
            "data_digest": data.digest,
        }
    )
    fit, validation = split_validation(data.x_train, data.y_train, cfg.validation_split)
    splits = {"training": fit, "validation": validation, "test": (data.x_test, data.y_test)}
    datasets = {
        context: make_dataset(
            mlflow.data.from_numpy,
            x,
            targets=y,
            source=data.source,
            name=names.DATASETS[context],
            digest=array_digest(x, y),
        )
        for context, (x, y) in splits.items()
    }
    for context, dataset in datasets.items():
        _log_input(dataset, context)
    return datasets


def _log_input(dataset, context: str) -> None:
    """mlflow.log_input, once more if it lost a race. Two processes logging one dataset (same
    experiment, name and digest) at the same moment both find it missing and both insert it:
    the store refuses the later insert by its key (`dataset_pk`; seen with two sweep workers on
    one server), and the second try finds the dataset and links it."""
    try:
        mlflow.log_input(dataset, context=context)
    except MlflowException as err:
        if not store.lost_race(err):
            raise
        mlflow.log_input(dataset, context=context)
