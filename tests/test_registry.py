"""Registration, aliases and the model's consumers (pyfunc, evaluate, predict)."""

import gzip
import json
import zipfile
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from conftest import all_runs, idx_bytes
from PIL import Image

from mnist_pipeline import cli, logged_model, registry, tracking
from mnist_pipeline.data import IMAGE_SHAPE


def scored_run(val_accuracy: float, val_loss: float = 0.1, variant: str = "final") -> str:
    """A FINISHED run with the metrics selection reads and a small logged Keras model."""
    model = keras.Sequential([keras.Input(IMAGE_SHAPE), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
    with mlflow.start_run(tags={tracking.TAG_VARIANT: variant, tracking.TAG_DATA_DIGEST: "d1"}) as run:
        mlflow.log_metrics({"val_accuracy": val_accuracy, "val_loss": val_loss, "test_accuracy": val_accuracy - 0.01})
        logged_model.log_keras_model(model, np.zeros((1, *IMAGE_SHAPE), np.uint8))
    return run.info.run_id


def champion_and_challenger(name=registry.MODEL_NAME):
    client = mlflow.MlflowClient()
    aliases = client.get_registered_model(name).aliases
    return str(aliases.get(registry.CHAMPION)), str(aliases.get(registry.CHALLENGER))


def test_champion_moves_only_when_val_accuracy_improves(tracking_store):
    a, b, c, d = scored_run(0.90), scored_run(0.95), scored_run(0.93), scored_run(0.95, val_loss=0.01)
    first = registry.register_best([a])
    assert (str(first.version.version), first.created, first.champion) == ("1", True, True)
    assert champion_and_challenger() == ("1", "1")

    assert registry.register_best([b]).champion
    assert champion_and_challenger() == ("2", "2")

    worse = registry.register_best([c])
    assert not worse.champion and "does not beat champion version 2" in worse.reason
    assert champion_and_challenger() == ("2", "3")

    tie = registry.register_best([d])  # equal val_accuracy does not beat
    assert not tie.champion and champion_and_challenger() == ("2", "4")

    again = registry.register_best([c])
    assert not again.created and str(again.version.version) == "3"
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name = '{registry.MODEL_NAME}'")
    assert len(versions) == 4
    v2 = client.get_model_version(registry.MODEL_NAME, "2")
    assert {k: v2.tags[k] for k in registry.VERSION_TAGS} == {
        "variant": "final", "run_id": b, "val_accuracy": "0.950000", "test_accuracy": "0.940000", "data_digest": "d1",
    }
    assert "highest last-epoch validation accuracy" in v2.description
    assert "not used to choose" in v2.description


def test_a_run_registered_by_two_processes_at_once_keeps_one_version(tracking_store, monkeypatch):
    run_id = scored_run(0.9)
    first = registry.register_run(mlflow.get_run(run_id))
    # The other process's check ran before our create: it saw no version of this run.
    real, calls = registry._existing_version, []

    def check_before_the_other_create(*args):
        calls.append(args)
        return None if len(calls) == 1 else real(*args)

    monkeypatch.setattr(registry, "_existing_version", check_before_the_other_create)
    second = registry.register_run(mlflow.get_run(run_id))
    assert len(calls) == 2  # checked again after creating
    assert (str(second.version.version), second.created) == (str(first.version.version), False)
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{registry.MODEL_NAME}'")
    assert [v.version for v in versions] == [first.version.version]
    assert champion_and_challenger() == ("1", "1")


def test_failed_registration_keeps_main_finished_and_says_how_to_retry(tracking_store, tiny_mnist_dir, monkeypatch, capsys):
    def store_refuses(*args, **kwargs):
        raise mlflow.exceptions.MlflowException("registry is read-only")

    argv = ["main", "--variants", "baseline", "--epochs", "1", "--batch-size", "64", "--data-dir", str(tiny_mnist_dir)]
    with monkeypatch.context() as patched:
        patched.setattr(registry, "register_run", store_refuses)
        assert cli.run(argv) == cli.USAGE_ERROR
    err = capsys.readouterr().err
    assert "Traceback" not in err
    err = err.strip().splitlines()[-1]  # the lines before are MLflow's store creation
    assert err.startswith("mnist-pipeline: error: registering the best run failed") and "registry is read-only" in err
    runs = all_runs(tracking_store)
    assert {r.info.status for r in runs} == {"FINISHED"} and len(runs) == 2
    [parent] = [r for r in runs if r.data.tags.get(tracking.TAG_ROLE) == "main"]
    assert f"-P run_id={parent.info.run_id}" in err
    assert "registry is read-only" in parent.data.tags[tracking.TAG_REGISTRATION_ERROR]
    # the retry the message suggests works
    assert cli.run(["register", "--run-id", parent.info.run_id]) == 0


def test_selection_uses_validation_never_test(tracking_store):
    better_val = scored_run(0.96)
    with mlflow.start_run() as run:  # higher test accuracy, lower validation accuracy
        mlflow.log_metrics({"val_accuracy": 0.95, "val_loss": 0.1, "test_accuracy": 0.99})
    assert registry.best_run([run.info.run_id, better_val]).info.run_id == better_val
    tied = scored_run(0.96, val_loss=0.05)
    assert registry.best_run([better_val, tied]).info.run_id == tied


def test_nothing_to_register_is_a_one_line_error(tracking_store, capsys):
    assert cli.run(["register"]) == cli.USAGE_ERROR
    assert "no FINISHED main run" in capsys.readouterr().err
    assert cli.run(["register", "--run-id", "0123456789abcdef"]) == cli.USAGE_ERROR
    assert "run_id='0123456789abcdef' is not a run" in capsys.readouterr().err


def test_main_registers_its_best_child_and_register_does_not_duplicate(registered, tiny_mnist_dir):
    runs = all_runs(registered)
    [parent] = [r for r in runs if r.data.tags.get(tracking.TAG_ROLE) == "main"]
    children = json.loads(parent.data.tags[tracking.TAG_CHILDREN])
    best = registry.best_run(list(children.values()))
    champion = mlflow.MlflowClient().get_model_version_by_alias(registry.MODEL_NAME, registry.CHAMPION)
    assert champion.tags["run_id"] == best.info.run_id
    assert parent.data.tags["registered_version"] == str(champion.version)
    assert parent.data.tags["champion_decision"]

    assert cli.run(["register"]) == 0  # the latest main run, again
    assert len(mlflow.MlflowClient().search_model_versions(f"name = '{registry.MODEL_NAME}'")) == 1


def test_champion_through_pyfunc_and_evaluate(registered, tiny_mnist):
    champion = mlflow.MlflowClient().get_model_version_by_alias(registry.MODEL_NAME, registry.CHAMPION)
    trained = mlflow.get_run(champion.tags["run_id"]).data.metrics
    model = mlflow.pyfunc.load_model(registry.CHAMPION_URI)
    probabilities = model.predict(tiny_mnist.x_test.astype(np.float32))  # raw 0-255 pixels
    assert probabilities.shape == (len(tiny_mnist.x_test), 10)
    accuracy = (probabilities.argmax(1) == tiny_mnist.y_test).mean()
    assert accuracy == pytest.approx(trained["test_accuracy"], abs=1e-6)

    # What a consumer loads: one native .keras file (JSON config + HDF5 weights, nothing
    # pickled), which Keras loads with safe mode on to the same predictions.
    [keras_file] = Path(mlflow.artifacts.download_artifacts(registry.CHAMPION_URI)).rglob("*.keras")
    with zipfile.ZipFile(keras_file) as archive:
        assert set(archive.namelist()) == {"metadata.json", "config.json", "model.weights.h5"}
    safe = keras.models.load_model(keras_file, safe_mode=True)
    np.testing.assert_allclose(safe.predict(tiny_mnist.x_test.astype(np.float32), verbose=0), probabilities, rtol=1e-5)

    assert cli.run(["evaluate", "--data-dir", str(tiny_mnist.source)]) == 0
    [evaluation] = [r for r in all_runs(registered) if r.data.tags.get(tracking.TAG_ROLE) == "evaluate"]
    assert evaluation.info.status == "FINISHED"
    assert evaluation.data.metrics["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert evaluation.data.params["model_uri"] == registry.CHAMPION_URI
    paths = {f.path for f in mlflow.MlflowClient().list_artifacts(evaluation.info.run_id, "plots")}
    assert tracking.CONFUSION in paths


def test_predict_pictures_and_idx_files(registered, tiny_mnist, tmp_path, capsys):
    # a test digit as a black-on-white picture, 3x larger: predict must undo both
    picture = tmp_path / "digit.png"
    Image.fromarray(255 - tiny_mnist.x_test[0]).resize((84, 84)).save(picture)
    idx = tmp_path / "few-images-idx3-ubyte.gz"
    idx.write_bytes(gzip.compress(idx_bytes(tiny_mnist.x_test[:3])))
    capsys.readouterr()
    assert cli.run(["predict", str(picture), str(idx)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith(f"{picture}: ") and lines[1].startswith(f"{idx}[0]: ")
    model = mlflow.pyfunc.load_model(registry.CHAMPION_URI)
    expected = model.predict(tiny_mnist.x_test[:3].astype(np.float32)).argmax(1)
    assert [int(line.split(": ")[1].split()[0]) for line in lines[1:]] == list(expected)


def test_bad_files_and_uris_are_one_line_errors(registered, tiny_mnist_dir, tmp_path, capsys):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    runs_before = len(all_runs(registered))
    cases = [
        (["predict", str(not_an_image)], f"{not_an_image}: not a readable image"),
        (["predict", str(tmp_path / "missing.png")], "missing.png: no such file"),
        (["predict", "--model-uri", "models:/no-such-model@champion", str(not_an_image)], "not a readable image"),
        (["evaluate", "--model-uri", "models:/no-such-model@champion", "--data-dir", str(tiny_mnist_dir)], "model_uri='models:/no-such-model@champion' cannot be loaded"),
    ]
    for argv, expected in cases:
        capsys.readouterr()
        assert cli.run(argv) == cli.USAGE_ERROR, argv
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
    assert len(all_runs(registered)) == runs_before
