"""Each version served runs the loader its own model ships, whatever was loaded before it, and
loading one leaves sys.path and the module cache as they were; a version that takes another
input signature than the serving one's is refused."""

from __future__ import annotations

import sys
import types

import keras
import mlflow
import numpy as np
import pytest
from mlflow.types import Schema, TensorSpec

from mnist_pipeline import names
from mnist_pipeline.core.data import IMAGE_SHAPE, NUM_CLASSES
from mnist_pipeline.tracking import follower, logged_model, serving_model

# Appended to a copy of the shipped loader: its model answers 1/10 for every digit.
MARKED = """
DigitClassifier.predict = lambda self, data, params=None: np.full((len(data), 10), 0.1, np.float32)
"""


def register(loader) -> str:
    """A version of a small untrained network, logged with ``loader`` as its pyfunc loader."""
    model = keras.Sequential(
        [keras.Input(IMAGE_SHAPE), keras.layers.Flatten(), keras.layers.Dense(NUM_CLASSES, activation="softmax")]
    )
    with mlflow.start_run() as run:
        real, logged_model.LOADER = logged_model.LOADER, loader
        try:
            info = logged_model.log_keras_model(model, np.zeros((1, *IMAGE_SHAPE), np.uint8))
        finally:
            logged_model.LOADER = real
    version = mlflow.MlflowClient().create_model_version(names.MODEL_NAME, info.model_uri, run_id=run.info.run_id)
    return str(version.version)


def loaders() -> set[tuple[str, str]]:
    """Every module in the cache that is a pyfunc loader or comes from a downloaded model."""
    return {
        (name, str(getattr(module, "__file__", "")))
        for name, module in list(sys.modules.items())
        if "digits_pyfunc" in name or "mnist-serve-" in str(getattr(module, "__file__", ""))
    }


def test_each_version_served_answers_with_its_own_loader(tracking_store, tmp_path):
    marked = tmp_path / "marked" / logged_model.LOADER.name
    marked.parent.mkdir()
    marked.write_text(logged_model.LOADER.read_text() + MARKED)
    client = mlflow.MlflowClient()
    client.create_registered_model(names.MODEL_NAME)
    plain, uniform = register(logged_model.LOADER), register(marked)
    client.set_registered_model_alias(names.MODEL_NAME, names.CHAMPION, plain)
    images = np.random.default_rng(0).uniform(0, 255, (4, *IMAGE_SHAPE)).astype(np.float32)
    path, cached = list(sys.path), loaders()

    holder = follower.Follower(names.CHAMPION_URI, serving_model.load_first(names.CHAMPION_URI), refresh_seconds=30)
    answers = {holder.current.version: holder.current.model.predict(images)}
    for version in (uniform, plain):  # each loaded after the other's loader ran
        client.set_registered_model_alias(names.MODEL_NAME, names.CHAMPION, version)
        holder.poll()
        assert holder.current.version == version and holder.refused is None
        answers[f"{version} again" if version in answers else version] = holder.current.model.predict(images)

    uniformly = np.full((4, NUM_CLASSES), 0.1, np.float32)
    np.testing.assert_array_equal(answers[uniform], uniformly, "the marked version answered with another loader")
    for answer in (answers[plain], answers[f"{plain} again"]):
        assert not np.allclose(answer, 0.1), "the plain version answered with the marked loader"
        np.testing.assert_allclose(answer.sum(axis=1), 1, rtol=1e-5)
    assert sys.path == path, "a load changed sys.path"
    assert loaders() == cached, "a load left a loader in the module cache"


class Answering:
    """A loaded model that takes ``inputs`` and answers its input example with 1/10 for each digit."""

    def __init__(self, inputs: Schema):
        self.metadata = types.SimpleNamespace(get_input_schema=lambda: inputs)
        self.input_example = np.zeros((1, *IMAGE_SHAPE), np.float32)

    def predict(self, data):
        return np.full((len(data), NUM_CLASSES), 0.1, np.float32)


def test_a_version_that_takes_another_input_signature_is_refused():
    serving = Answering(logged_model.SIGNATURE.inputs)
    serving_model.check(Answering(logged_model.SIGNATURE.inputs), serving)  # the same signature: it may serve
    flat = Schema([TensorSpec(np.dtype("float32"), (-1, 784))])
    with pytest.raises(serving_model.Refused, match="input signature .* differs from the serving one's"):
        serving_model.check(Answering(flat), serving)
