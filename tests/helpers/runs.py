"""Runs made by hand, with just what the registry reads."""

import keras
import mlflow
import numpy as np

from mnist_pipeline import names
from mnist_pipeline.core.data import IMAGE_SHAPE
from mnist_pipeline.tracking import logged_model


def scored_run(val_accuracy: float, val_loss: float = 0.1, variant: str = "final") -> str:
    """A FINISHED run with the metrics selection reads and a small logged Keras model."""
    model = keras.Sequential(
        [keras.Input(IMAGE_SHAPE), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")]
    )
    with mlflow.start_run(tags={names.TAG_VARIANT: variant, names.TAG_DATA_DIGEST: "d1"}) as run:
        mlflow.log_metrics({"val_accuracy": val_accuracy, "val_loss": val_loss, "test_accuracy": val_accuracy - 0.01})
        logged_model.log_keras_model(model, np.zeros((1, *IMAGE_SHAPE), np.uint8))
    return run.info.run_id
