"""Where the project and the real MNIST files are, and reading every run of a store."""

from __future__ import annotations

import os
from pathlib import Path

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
