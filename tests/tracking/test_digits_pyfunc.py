"""The pyfunc loader every logged model ships: a process that loads many models is not warned
of retracing that never happens."""

import keras
import numpy as np

from helpers.checks import tensorflow_log_lines
from mnist_pipeline.core.data import IMAGE_SHAPE, NUM_CLASSES
from mnist_pipeline.tracking import digits_pyfunc


def test_many_models_in_one_process_warn_of_no_retracing():
    """Six models loaded in one process (as `serve` loads each version the alias names): each
    traces its forward pass once, and TensorFlow's retracing warning, which counts all
    instances of one function's code together, does not reach the console."""
    with tensorflow_log_lines() as seen:
        for _ in range(6):
            network = keras.Sequential(
                [
                    keras.Input(IMAGE_SHAPE),
                    keras.layers.Flatten(),
                    keras.layers.Dense(NUM_CLASSES, activation="softmax"),
                ]
            )
            classifier = digits_pyfunc.DigitClassifier(network)
            assert classifier.predict(np.zeros((3, *IMAGE_SHAPE))).shape == (3, NUM_CLASSES)
            assert classifier._forward.experimental_get_tracing_count() == 1
    assert not [message for message in seen if "retracing" in message]
