"""Runs made by hand, with just what the registry reads."""

import keras
import mlflow
import numpy as np

from mnist_pipeline import names
from mnist_pipeline.core.data import IMAGE_SHAPE
from mnist_pipeline.tracking import logged_model


def scored_run(
    val_accuracy: float,
    val_loss: float = 0.1,
    variant: str = "final",
    recalls: dict[int, float] | None = None,
    config_key: str = "",
    seed: int = 42,
) -> str:
    """A FINISHED run with the metrics selection and the promotion gates read, and a small
    logged Keras model. Every digit's val recall is ``val_accuracy`` but those in ``recalls``;
    runs with one ``config_key`` are seeds of one configuration."""
    model = keras.Sequential(
        [keras.Input(IMAGE_SHAPE), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")]
    )
    tags = {names.TAG_VARIANT: variant, names.TAG_DATA_DIGEST: "d1"}
    if config_key:
        tags[names.TAG_CONFIG_KEY] = config_key
    per_digit = {names.VAL_RECALL.format(digit=d): (recalls or {}).get(d, val_accuracy) for d in range(10)}
    with mlflow.start_run(tags=tags) as run:
        mlflow.log_param("seed", seed)
        mlflow.log_metrics({"val_accuracy": val_accuracy, "val_loss": val_loss, "test_accuracy": val_accuracy - 0.01})
        mlflow.log_metrics(per_digit)
        logged_model.log_keras_model(model, np.zeros((1, *IMAGE_SHAPE), np.uint8))
    return run.info.run_id
