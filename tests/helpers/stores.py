"""Where the project and the real MNIST files are, reading every run of a store, and a store's
variables set for a block."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from unittest import mock

from mnist_pipeline.core import data

PROJECT_ROOT = Path(__file__).resolve().parents[2]
REAL_MNIST = Path(os.environ.get(data.DATA_DIR_ENV) or PROJECT_ROOT.parent / "shared/data/mnist").resolve()


def all_runs(uri: str):
    """Every run in every experiment of the store at ``uri``."""
    import mlflow

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return []  # MLflow creates the database with the first run: no file, no run
    client = mlflow.MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, max_results=1000) if ids else []


def forget_store() -> None:
    """Forget the tracking URI and the experiment that a command run in this process chose, as a
    new process starts (the experiment is a private attribute of MLflow's fluent API: named here alone)."""
    import mlflow

    mlflow.set_tracking_uri(None)
    mlflow.tracking.fluent._active_experiment_id = None


@contextlib.contextmanager
def environment(values: dict[str, str | None]):
    """Environment variables set (None: unset) for the block; the whole environment is put back after it."""
    with mock.patch.dict(os.environ, {name: value for name, value in values.items() if value is not None}):
        for name in [name for name, value in values.items() if value is None]:
            os.environ.pop(name, None)
        yield
