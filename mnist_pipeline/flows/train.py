"""`train`: one variant as one MLflow training run.

Logs what tracking/training_run.py lists (params, per-epoch metrics, plots, tables, the
datasets, the Keras model) and prints Keras' epoch lines. Launched by `mlflow run -e
train`, whose run already holds the entry point's raw parameters ('' for "the variant's
value", and MLflow forbids changing a logged param), the training run is a child of that
run; otherwise it is top-level.
"""

from __future__ import annotations

from mnist_pipeline.core.data import load_for
from mnist_pipeline.core.params import TrainParams
from mnist_pipeline.tracking import access, liveness, store


def run(params: TrainParams) -> str:
    """Returns the training run's id."""
    [cfg] = params.configs()
    data = load_for(params.data_dir, [cfg.validation_split])
    store.check_tracking_store()
    access.require_runs("train")  # refused before any training
    liveness.end_dead_runs("train")  # runs left RUNNING by a process killed hard
    from mnist_pipeline.tracking.trainers import track_alone

    return track_alone(cfg, data)
