"""The logged Keras model: how it is logged, found, loaded, asked for predictions and served.

In MLflow 3 a logged model is its own object (``models:/<model_id>``), linked to the run
that logged it and listed on the experiment's Models tab. Keras (and so TensorFlow) is
imported only when a model is saved or loaded: the commands that read the registry check
their input first.
"""

import importlib.metadata
import os
import shutil
import types
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types import Schema, TensorSpec

from mnist_pipeline.core.data import IMAGE_SHAPE, NUM_CLASSES, Mnist, array_digest
from mnist_pipeline.core.errors import UserError, first_line
from mnist_pipeline.names import DATASETS, MODEL
from mnist_pipeline.tracking.run_lifecycle import make_dataset

SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype("float32"), (-1, *IMAGE_SHAPE))]),
    outputs=Schema([TensorSpec(np.dtype("float32"), (-1, NUM_CLASSES))]),
)


LOADER = Path(__file__).with_name("digits_pyfunc.py")  # shipped in every model's code/ folder


def _save_keras_model(path, mlflow_model: Model, **kwargs):
    """mlflow.keras.save_model, then the model's python_function flavor pointed at LOADER."""
    import mlflow.keras  # imports TensorFlow

    # MLflow 3.17 and 3.18: mlflow.keras.save_model writes input_example.json before it
    # creates the model folder, so mlflow.keras.log_model(..., input_example=...) raises
    # FileNotFoundError. Creating the folder first is the whole fix; save_model itself is
    # unchanged. tests/tracking/test_track_training.py checks both the bug and this workaround.
    os.makedirs(path, exist_ok=True)
    mlflow.keras.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
    # pyfunc (and so both REST servers) loads with LOADER instead of mlflow.keras, whose
    # predict() per call costs 60-90 ms; the keras flavor and its .keras file stay as saved.
    code = Path(path, "code")
    code.mkdir(exist_ok=True)
    shutil.copy(LOADER, code / LOADER.name)
    pyfunc = mlflow_model.flavors[mlflow.pyfunc.FLAVOR_NAME]
    pyfunc.update(
        loader_module=LOADER.stem,
        code="code",
        data=mlflow_model.flavors["keras"]["data"],
        # the model_config (MLmodel's key: config) that MLflow passes to LOADER, merging into it
        # a consumer's model_config={"output": "label"}; undeclared, MLflow would ignore that
        config={"output": "probabilities"},
    )
    mlflow_model.save(os.path.join(path, "MLmodel"))


# The `mlflow.keras` flavor, as Model.log calls it: the folder created first, our pyfunc loader.
_KERAS_FLAVOR = types.SimpleNamespace(__name__="mlflow.keras", save_model=_save_keras_model)


def _tensorflow_distribution() -> str:
    """The installed TensorFlow's package: tensorflow-cpu (this project's) or tensorflow (a GPU user's)."""
    try:
        importlib.metadata.version("tensorflow-cpu")
        return "tensorflow-cpu"
    except importlib.metadata.PackageNotFoundError:
        return "tensorflow"


def pip_requirements() -> list[str]:
    """What a serving environment needs; given explicitly, so MLflow does not spend
    seconds re-importing the model in a subprocess to infer them."""
    import keras
    import tensorflow as tf

    return [
        f"mlflow=={mlflow.__version__}",
        f"{_tensorflow_distribution()}=={tf.__version__}",
        f"keras=={keras.__version__}",
        f"numpy=={np.__version__}",
    ]


def log_keras_model(model, example_images: np.ndarray):
    """Log ``model`` in Keras' native .keras format with signature and input example, for
    consumers, served by LOADER."""
    return Model.log(
        artifact_path=None,
        name=MODEL,
        flavor=_KERAS_FLAVOR,
        model=model,
        signature=SIGNATURE,
        input_example=example_images.astype("float32"),
        pip_requirements=pip_requirements(),
    )


def logged_model_uri(run_id: str) -> str:
    """``models:/<model_id>`` of the model a training run logged."""
    models = mlflow.search_logged_models(
        experiment_ids=[mlflow.get_run(run_id).info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL}'",
        output_format="list",
    )
    if not models:
        raise LookupError(f"run {run_id} has no logged model named {MODEL!r}")
    return models[0].model_uri


class ModelURIError(UserError, LookupError):
    """A model URI that does not resolve to a model; the message is one line."""


def load_pyfunc(model_uri: str) -> mlflow.pyfunc.PyFuncModel:
    """The model at ``model_uri`` (``models:/name@alias``, ``models:/<id>``, ``runs:/...``)."""
    import keras

    keras.utils.disable_interactive_logging()  # no progress bar per predict() call
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as err:
        reason = first_line(err) or type(err).__name__
        raise ModelURIError(f"model_uri={model_uri!r} cannot be loaded: {reason}") from None


def predict_probabilities(model: mlflow.pyfunc.PyFuncModel, images: np.ndarray) -> np.ndarray:
    """Class probabilities (n, 10) for raw uint8/float pixels (n, 28, 28)."""
    return np.asarray(model.predict(images.astype("float32")))


def evaluate_classifier(model_uri: str, data: Mnist, model_id: str | None) -> dict[str, float]:
    """MLflow's classifier evaluation of the model at ``model_uri`` on the test set, called as a
    consumer calls it (a row an image, one digit a row out), logged to the active run and linked
    to logged model ``model_id`` and to the test dataset the training runs log (same name and digest)."""
    images = data.x_test.reshape(len(data.x_test), -1)
    frame = pd.DataFrame({"image": list(images), "label": data.y_test.astype("int64")})
    digest = array_digest(data.x_test, data.y_test)
    dataset = make_dataset(
        mlflow.data.from_pandas, frame, source=data.source, targets="label", name=DATASETS["test"], digest=digest
    )
    result = mlflow.models.evaluate(
        model_uri,
        dataset,
        model_type="classifier",
        model_config={"output": "label"},
        model_id=model_id,
        evaluator_config={"log_model_explainability": False},  # SHAP takes scalar features, not images
    )
    return result.metrics
