"""`train`: one variant as one MLflow training run.

Logs what tracking/track_training.py lists (params, per-epoch metrics, plots, tables, the
datasets, the Keras model) and prints Keras' epoch lines. Launched by `mlflow run -e
train`, whose run already holds the entry point's raw parameters ('' for "the variant's
value", and MLflow forbids changing a logged param), the training run is a child of that
run; otherwise it is top-level.
"""

from mnist_pipeline.core.commands import TrainParams
from mnist_pipeline.tracking import run_lifecycle


def run(params: TrainParams) -> str:
    """Returns the training run's id."""
    [cfg] = params.configs()
    data = run_lifecycle.preflight("train", params.data_dir, [cfg.validation_split])
    from mnist_pipeline.tracking.training_dispatch import track_alone

    return track_alone(cfg, data)
