"""The pyfunc loader shipped inside every logged model (MLmodel: python_function, loader_module
digits_pyfunc, code/digits_pyfunc.py). It needs Keras, TensorFlow and NumPy, not this package.

`mlflow.pyfunc.load_model(...)`, `mlflow models serve` and `mnist-pipeline serve` call it.
MLflow's own Keras pyfunc calls ``model.predict()`` per request, whose data adapter, iterator
and progress bar cost 60-90 ms whatever the batch; this calls the network's forward pass as
one compiled TensorFlow function (about 0.5 ms for one image here) and prints nothing. The
Keras model itself is the flavor's native ``data/model.keras``: ``mlflow.keras.load_model``
still returns it.
"""

import functools
import os

import keras
import numpy as np
import tensorflow as tf

MODEL_FILE = "model.keras"  # in the flavor's data folder, as mlflow.keras.save_model writes it
# What predict returns, chosen by the model_config a consumer passes to mlflow.pyfunc.load_model
# (or mlflow.models.evaluate): "label" is what MLflow's classifier evaluator takes.
OUTPUTS = ("probabilities", "label")


class DigitClassifier:
    """Class probabilities (n, 10), or the most probable digit (n,), for raw pixels (n, 28, 28),
    as a pyfunc model."""

    def __init__(self, model: keras.Model, output: str = "probabilities"):
        if output not in OUTPUTS:
            raise ValueError(f"model_config output={output!r}: must be one of {', '.join(OUTPUTS)}")
        self.model, self.output = model, output
        spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        # A partial, not a lambda: TensorFlow counts traces per function code, all instances
        # together, and warns of retracing after 5 in 11 calls; a partial has no code, so each
        # model's forward pass, traced once, is counted alone.
        self._forward = tf.function(functools.partial(model, training=False), input_signature=[spec])
        self._forward(tf.zeros((1, *model.input_shape[1:])))  # trace now, not on the first request

    def predict(self, data, params=None):
        """``data``: an array (or DataFrame) of raw 0-255 pixels, (n, 28, 28) or (n, 784)."""
        x = np.asarray(getattr(data, "values", data), dtype=np.float32)
        probabilities = self._forward(x.reshape((-1, *self.model.input_shape[1:]))).numpy()
        return probabilities.argmax(axis=1) if self.output == "label" else probabilities


def _load_pyfunc(data_path: str, model_config: dict | None = None) -> DigitClassifier:
    """Called by mlflow.pyfunc with the model's data folder, and its model_config if the model
    was logged with one (MLflow merges a consumer's ``model_config`` into it)."""
    model = keras.models.load_model(os.path.join(data_path, MODEL_FILE), compile=False, safe_mode=True)
    return DigitClassifier(model, (model_config or {}).get("output", "probabilities"))
