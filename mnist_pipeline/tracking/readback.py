"""Reading runs back from the tracking store: histories, comparison rows, logged tables."""

import io
from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from mnist_pipeline import names
from mnist_pipeline.core.errors import UserError
from mnist_pipeline.core.variants import VARIANTS


@dataclass(frozen=True)
class ChildRun:
    """A training run under a main or reproduce run: trained there, or reused."""

    variant: str
    run_id: str
    reused: bool


def training_run_of(version, then: str = "") -> Run:
    """The training run a registered version came from; UserError if the store lacks it, its
    line ending with ``then`` (what that stops)."""
    run_id = version.tags.get("run_id") or version.run_id
    try:
        return mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        raise UserError(
            f"{version.name} version {version.version}: its training run {run_id} is not in this store{then}"
        ) from None


def metrics_of(run_id: str) -> dict[str, float]:
    return mlflow.MlflowClient().get_run(run_id).data.metrics


def metric_history(run_id: str) -> pd.DataFrame:
    """Per-epoch validation metrics of a run, read back from the tracking store."""
    client = mlflow.MlflowClient()
    columns = {
        name: {m.step: m.value for m in client.get_metric_history(run_id, name)}
        for name in ("val_accuracy", "val_loss")
    }
    return pd.DataFrame(columns).sort_index().rename_axis("epoch")


# what the comparison shows of each variant's run, in its columns' order, beside the variant
_COMPARED_PARAMS = {"conv_filters": str, "hidden_units": str, "dropout": float, "l2": float, "epochs": int}
_COMPARED_SCORES = ("best_val_accuracy", "best_epoch", "val_accuracy", "test_accuracy", "test_loss")


def comparison_table(children: list[ChildRun]) -> pd.DataFrame:
    """One row per variant: its params and scores, read from the tracking store
    (val_accuracy: the last epoch's, what selection uses)."""
    runs = [mlflow.MlflowClient().get_run(child.run_id).data for child in children]
    params = pd.DataFrame([run.params for run in runs])[list(_COMPARED_PARAMS)].astype(_COMPARED_PARAMS)
    scores = pd.DataFrame([run.metrics for run in runs])[[*_COMPARED_SCORES, "train_seconds"]]
    study = [VARIANTS[child.variant].study_test_accuracy for child in children]
    table = pd.DataFrame(children).join(params).join(scores.astype({"best_epoch": int}))
    columns = ["variant", *_COMPARED_PARAMS, *_COMPARED_SCORES, "study_test_accuracy", "train_seconds"]
    return table.assign(study_test_accuracy=study)[[*columns, "run_id", "reused"]]


def seed_results(seeds: list[int], children: list[ChildRun]) -> pd.DataFrame:
    """One row per training run of a reproduce run (``seeds[i]`` is ``children[i]``'s seed)."""
    scores = pd.DataFrame([metrics_of(child.run_id) for child in children])[["test_accuracy", "val_accuracy"]]
    table = pd.DataFrame(children).join(scores).assign(seed=seeds)
    return table[["variant", "seed", "test_accuracy", "val_accuracy", "run_id", "reused"]]


def confusion_counts(run_id: str) -> np.ndarray | None:
    """The (10, 10) test-set counts a run logged (rows: true digit), read back from the
    tracking store; None if it logged none (a run from before they were logged)."""
    folder = names.CONFUSION_COUNTS.rsplit("/", 1)[0]
    if names.CONFUSION_COUNTS not in {f.path for f in mlflow.MlflowClient().list_artifacts(run_id, folder)}:
        return None
    text = mlflow.artifacts.load_text(f"runs:/{run_id}/{names.CONFUSION_COUNTS}")
    return pd.read_csv(io.StringIO(text), index_col="true_digit").to_numpy()


def validation_predicted(run_id: str | None) -> np.ndarray | None:
    """How many validation images a training run's model classed as each digit (its
    tables/val_per_class.csv); None if it recorded none or cannot be read (a run from before,
    or a user who may not read it)."""
    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/{names.VAL_PER_CLASS}")
        return pd.read_csv(io.StringIO(text))["predicted"].to_numpy(np.int64)
    except Exception:  # the store's errors come in many types; no such column: KeyError
        return None


def runs_tagged(tags: dict[str, str], status: str = "", everywhere: bool = False, max_results: int = 100_000) -> list:
    """Runs with ``tags`` (and ``status``), newest first, in the active experiment (``everywhere``:
    in every experiment this user may read)."""
    filters = [f"tags.{k} = '{v}'" for k, v in tags.items()] + ([f"attributes.status = '{status}'"] if status else [])
    return mlflow.search_runs(
        filter_string=" and ".join(filters),
        search_all_experiments=everywhere,
        order_by=["attributes.start_time DESC"],
        max_results=max_results,
        output_format="list",
    )


def child_runs(parent_id: str, tags: dict[str, str] | None = None, status: str = "") -> list:
    """Runs of the active experiment under ``parent_id`` with ``tags`` (and ``status``)."""
    return runs_tagged({names.TAG_PARENT_RUN: parent_id, **(tags or {})}, status)


def completed(run: Run) -> bool:
    """Whether a training run ran to its end: FINISHED, not stopped early (a pruned trial has
    no test scores, no model), with its validation scores."""
    return (
        run.info.status == "FINISHED" and names.TAG_STOPPED not in run.data.tags and "val_accuracy" in run.data.metrics
    )


def seed_runs(run) -> list:
    """``run`` and the other seeds of its configuration in the store (same config key,
    completed): one run per seed, ``run`` first."""
    runs, key = [run], run.data.tags.get(names.TAG_CONFIG_KEY)
    if not key:
        return runs
    seeds = {run.data.params.get("seed")}
    for other in runs_tagged({names.TAG_CONFIG_KEY: key}, "FINISHED", everywhere=True):
        seed = other.data.params.get("seed")
        if seed not in seeds and completed(other):
            seeds.add(seed)
            runs.append(other)
    return runs
