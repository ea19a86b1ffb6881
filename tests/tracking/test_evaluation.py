"""MLflow's own evaluation of a registered version: the consumer's documented call, the
`evaluate` command with and without `--log`, and a version logged before the model took a
model_config still loading."""

import shutil
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from helpers.stores import all_runs
from mnist_pipeline import cli, names

# A loader with the signature of every version logged before `model_config`: the data folder alone.
OLD_LOADER = """
import keras, os
from digits_pyfunc_now import DigitClassifier

def _load_pyfunc(data_path):
    return DigitClassifier(keras.models.load_model(os.path.join(data_path, "model.keras"), compile=False))
"""


def _consumer_frame(mnist) -> pd.DataFrame:
    """What a consumer builds: a column `image` of flat 784-pixel rows and a column `label`."""
    return pd.DataFrame({"image": list(mnist.x_test.reshape(len(mnist.x_test), -1)), "label": mnist.y_test})


def _champion_run():
    version = mlflow.MlflowClient().get_model_version_by_alias(names.MODEL_NAME, names.CHAMPION)
    return version, mlflow.get_run(version.run_id)


def _correct(accuracy: float, count: int) -> int:
    """How many of ``count`` predictions an accuracy says were right: equal counts are equal
    accuracies to the last digit (MLflow logs a float64, the project TensorFlow's float32)."""
    return round(accuracy * count)


def test_the_documented_consumer_call_scores_as_the_project(registered_once, tiny_mnist):
    _, trained = _champion_run()
    n = len(tiny_mnist.y_test)
    result = mlflow.models.evaluate(
        names.CHAMPION_URI,
        _consumer_frame(tiny_mnist),
        targets="label",
        model_type="classifier",
        model_config={"output": "label"},
    )
    assert _correct(result.metrics["accuracy_score"], n) == _correct(trained.data.metrics["test_accuracy"], n)
    assert result.metrics["example_count"] == n
    # per digit, MLflow's recall and precision are the project's test report's
    theirs = pd.read_csv(result.artifacts["per_class_metrics"].uri).set_index("positive_class")
    ours = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=trained.info.run_id, artifact_path=names.PER_CLASS))
    ours = ours.set_index("digit").loc[theirs.index]
    np.testing.assert_allclose(theirs["recall_score"], ours["recall"])
    np.testing.assert_allclose(theirs["precision_score"], ours["precision"])
    assert "confusion_matrix" in result.artifacts
    # today's consumers: 10 probabilities a row by default
    probabilities = mlflow.pyfunc.load_model(names.CHAMPION_URI).predict(tiny_mnist.x_test.astype(np.float32))
    assert probabilities.shape == (n, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


def test_an_unknown_output_is_one_line(registered_once):
    with pytest.raises(ValueError, match=r"output='digits': must be one of probabilities, label"):
        mlflow.pyfunc.load_model(names.CHAMPION_URI, model_config={"output": "digits"})


def test_a_version_logged_before_model_config_still_loads(registered_once, tiny_mnist, tmp_path, monkeypatch):
    """Its MLmodel has no config and its loader takes the data folder alone: MLflow ignores a
    consumer's model_config, and the model loads and predicts probabilities."""
    folder = Path(mlflow.artifacts.download_artifacts(names.CHAMPION_URI, dst_path=str(tmp_path / "model")))
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    del mlmodel["flavors"]["python_function"]["config"]
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    code = folder / "code"
    shutil.move(code / "digits_pyfunc.py", code / "digits_pyfunc_now.py")  # its class, under another name
    (code / "digits_pyfunc.py").write_text(OLD_LOADER)

    monkeypatch.delitem(sys.modules, "digits_pyfunc", raising=False)  # import this copy's loader, not a cached one
    model = mlflow.pyfunc.load_model(str(folder), model_config={"output": "label"})
    assert sys.modules["digits_pyfunc"].__file__ == str(code / "digits_pyfunc.py")
    assert model.predict(tiny_mnist.x_test.astype(np.float32)).shape == (len(tiny_mnist.y_test), 10)


def test_evaluate_logs_a_run_only_when_asked(registered_once, tiny_mnist, tiny_mnist_dir, capsys):
    version, trained = _champion_run()
    before = len(all_runs(registered_once))
    assert cli.run(["evaluate", "--data-dir", str(tiny_mnist_dir)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert len(all_runs(registered_once)) == before

    assert cli.run(["evaluate", "--data-dir", str(tiny_mnist_dir), "--log", "true"]) == 0
    [evaluation] = [r for r in all_runs(registered_once) if r.data.tags.get(names.TAG_ROLE) == names.ROLE_EVALUATE]
    metrics, n = evaluation.data.metrics, len(tiny_mnist.y_test)
    assert evaluation.info.status == "FINISHED" and evaluation.data.params["model_uri"] == names.CHAMPION_URI
    assert _correct(metrics["accuracy_score"], n) == _correct(metrics["test_accuracy"], n)
    assert _correct(metrics["test_accuracy"], n) == _correct(trained.data.metrics["test_accuracy"], n)
    assert {"precision_score", "recall_score", "f1_score"} <= set(metrics)
    artifacts = {f.path for f in mlflow.MlflowClient().list_artifacts(evaluation.info.run_id)}
    assert {"per_class_metrics.csv", "confusion_matrix.png"} <= artifacts
    plots = {f.path for f in mlflow.MlflowClient().list_artifacts(evaluation.info.run_id, "plots")}
    assert names.CONFUSION in plots

    # the evaluation is on the same test dataset as the training run's, and on the version's model
    [test_set] = [i.dataset for i in trained.inputs.dataset_inputs if i.dataset.name == names.DATASETS["test"]]
    [evaluated] = [i.dataset for i in evaluation.inputs.dataset_inputs]
    assert (evaluated.name, evaluated.digest) == (test_set.name, test_set.digest)
    model_id = evaluation.data.tags[names.TAG_MODEL_ID]
    assert version.source == f"models:/{model_id}"
    linked = mlflow.get_logged_model(model_id).metrics
    assert any(
        m.key == "accuracy_score" and m.run_id == evaluation.info.run_id and m.dataset_digest == test_set.digest
        for m in linked
    )
