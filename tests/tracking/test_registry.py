"""Registration, aliases, the model card a version carries, and the model's consumers
(pyfunc, Keras, predict; MLflow's evaluation in test_evaluation.py)."""

import dataclasses
import gzip
import json
import zipfile
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from PIL import Image

from helpers.checks import check_training_run, tiny
from helpers.data import idx_bytes
from helpers.runs import scored_run
from helpers.stores import all_runs
from mnist_pipeline import cli, names
from mnist_pipeline.core import data as data_module
from mnist_pipeline.core import promotion_rule
from mnist_pipeline.tracking import logged_model, readback, registry, track_training


def champion_and_challenger(name=names.MODEL_NAME):
    client = mlflow.MlflowClient()
    aliases = client.get_registered_model(name).aliases
    return str(aliases.get(names.CHAMPION)), str(aliases.get(names.CHALLENGER))


def _decisions(run_id: str):
    import pandas as pd

    return pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=names.DECISIONS))


def test_gates_refuse_noise_and_a_digit_that_got_worse(tracking_store, capsys):
    """Each gate refuses once, a clear gain passes; every decision is a printed line, a
    version tag and a row of registry/decisions.csv on the run that decided."""
    rule = promotion_rule.Gates(min_improvement=0.15, max_class_drop=1.0)
    champion = scored_run(0.980)
    steps = [  # (challenger, promoted, gate)
        (scored_run(0.981), False, "min_improvement"),  # +0.10 pp: within seed noise
        (scored_run(0.985, recalls={7: 0.960}), False, "max_class_drop"),  # +0.50 pp on average, digit 7 -2.00
        (scored_run(0.986), True, "passed"),
    ]
    with mlflow.start_run() as decider:
        first = registry.register_best([champion], gates=rule)
    assert first.champion and first.decision.gate == "first"
    for number, (run_id, promoted, gate) in enumerate(steps, start=2):
        with mlflow.start_run() as decider:
            registration = registry.register_best([run_id], gates=rule)
        assert (registration.champion, registration.decision.gate) == (promoted, gate)
        line = f"mnist-digits version {number} (final): {registration.reason}"
        assert line in capsys.readouterr().out.splitlines()
        version = mlflow.MlflowClient().get_model_version(names.MODEL_NAME, str(number))
        assert version.tags[names.TAG_CHAMPION_DECISION] == registration.reason
        [row] = _decisions(decider.info.run_id).to_dict("records")
        assert (row["version"], row["promoted"], row["gate"], row["champion_before"]) == (number, promoted, gate, 1)
    decision = mlflow.MlflowClient().get_model_version(names.MODEL_NAME, "3").tags[names.TAG_CHAMPION_DECISION]
    assert decision == "refused by max_class_drop: +0.500 pp over version 1; digit 7 recall -2.00 pp"
    assert champion_and_challenger() == ("4", "4")


def test_seeds_of_both_configurations_are_compared_by_their_means(tracking_store):
    """Where champion and challenger each have several seeds in the store, the gates read
    the means over seeds and Welch's test: a challenger whose one run is far ahead but whose
    seeds are not is refused."""
    rule = promotion_rule.Gates(min_improvement=0.15, max_class_drop=1.0)
    old = [scored_run(a, config_key="old", seed=s) for s, a in enumerate((0.980, 0.981, 0.979))]
    lucky = [scored_run(a, config_key="lucky", seed=s) for s, a in enumerate((0.990, 0.978, 0.980))]
    good = [scored_run(a, config_key="good", seed=s) for s, a in enumerate((0.985, 0.986, 0.984))]
    registry.register_best([old[0]], gates=rule)
    refused = registry.register_best([lucky[0]], gates=rule)
    assert not refused.champion and refused.decision.gate == "welch"
    assert "means of 3 and 3 seeds, Welch p=" in refused.reason
    taken = registry.register_best([good[0]], gates=rule)
    assert taken.champion and taken.decision.p_value < promotion_rule.ALPHA
    assert taken.decision.gain == pytest.approx(0.5, abs=1e-6)


def test_an_impossible_min_improvement_never_moves_the_alias(tracking_store, capsys):
    """`register -P min_improvement=50` on a main run whose best child is far better than the
    champion: registered, refused, and the decision row on the register command's own run."""
    registry.register_best([scored_run(0.50)])
    children = {"final": scored_run(0.99), "baseline": scored_run(0.60, variant="baseline")}
    with mlflow.start_run(tags={names.TAG_ROLE: names.ROLE_MAIN, names.TAG_CHILDREN: json.dumps(children)}) as main:
        pass
    assert cli.run(["register", "--run-id", main.info.run_id, "--min-improvement", "50"]) == 0
    assert champion_and_challenger() == ("1", "2")
    reason = mlflow.MlflowClient().get_model_version(names.MODEL_NAME, "2").tags[names.TAG_CHAMPION_DECISION]
    assert reason == "refused by min_improvement: +49.000 pp over version 1; needs +50.00"
    assert f"mnist-digits version 2 (final): {reason}" in capsys.readouterr().out.splitlines()
    [register] = [r for r in all_runs(tracking_store) if r.data.tags.get(names.TAG_ROLE) == names.ROLE_REGISTER]
    assert register.info.status == "FINISHED" and register.data.params["main_run_id"] == main.info.run_id
    [row] = _decisions(register.info.run_id).to_dict("records")
    assert (row["promoted"], row["gate"], row["min_improvement"]) == (False, "min_improvement", 50.0)


def test_with_require_shadow_a_passing_version_becomes_challenger_only(tracking_store):
    shadowed, runs = promotion_rule.Gates(require_shadow=True), [scored_run(0.980), scored_run(0.990)]
    assert registry.register_best(runs[:1], gates=shadowed).champion  # the first takes it
    with mlflow.start_run() as decider:
        second = registry.register_best(runs[1:], gates=shadowed)
    assert not second.champion and second.decision.gate == "require_shadow"
    assert champion_and_challenger() == ("1", "2")
    client = mlflow.MlflowClient()
    assert [client.get_model_version(names.MODEL_NAME, v).tags[names.TAG_OFFLINE_GATE] for v in "12"] == [
        "first",
        "require_shadow",
    ]
    assert _decisions(decider.info.run_id)["require_shadow"].tolist() == [True]


def test_champion_moves_only_when_val_accuracy_improves(tracking_store):
    a, b, c, d = scored_run(0.90), scored_run(0.95), scored_run(0.93), scored_run(0.95, val_loss=0.01)
    first = registry.register_best([a])
    assert (str(first.version.version), first.created, first.champion) == ("1", True, True)
    assert champion_and_challenger() == ("1", "1")

    assert registry.register_best([b]).champion
    assert champion_and_challenger() == ("2", "2")

    worse = registry.register_best([c])
    assert not worse.champion and worse.reason.startswith("refused by min_improvement: -2.000 pp over version 2")
    assert champion_and_challenger() == ("2", "3")

    tie = registry.register_best([d])  # equal val_accuracy does not beat
    assert not tie.champion and champion_and_challenger() == ("2", "4")

    again = registry.register_best([c])
    assert not again.created and str(again.version.version) == "3"
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name = '{names.MODEL_NAME}'")
    assert len(versions) == 4
    v2 = client.get_model_version(names.MODEL_NAME, "2")
    assert {k: v2.tags[k] for k in names.VERSION_TAGS} == {
        "variant": "final",
        "run_id": b,
        "val_accuracy": "0.950000",
        "test_accuracy": "0.940000",
        "data_digest": "d1",
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
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{names.MODEL_NAME}'")
    assert [v.version for v in versions] == [first.version.version]
    assert champion_and_challenger() == ("1", "1")


def test_an_alias_write_lost_to_a_concurrent_writer_is_read_again(tracking_store, monkeypatch):
    """PostgreSQL refuses the second of two simultaneous inserts of one alias (seen against a
    real server): the loser reads the store again instead of failing its registration."""
    real, refused = mlflow.MlflowClient.set_registered_model_alias, []

    def first_write_loses(self, name, alias, version):
        if not refused:
            refused.append(alias)
            raise mlflow.exceptions.MlflowException(
                'duplicate key value violates unique constraint "registered_model_alias_pk"'
            )
        return real(self, name, alias, version)

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", first_write_loses)
    first = registry.register_best([scored_run(0.9)])
    assert refused == [names.CHALLENGER] and first.champion
    assert champion_and_challenger() == ("1", "1")

    def store_down(self, name, alias, version):
        raise mlflow.exceptions.MlflowException("connection refused")

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", store_down)
    with pytest.raises(mlflow.exceptions.MlflowException, match="connection refused"):
        registry.register_best([scored_run(0.95)])


def test_failed_registration_keeps_main_finished_and_says_how_to_retry(
    tracking_store, tiny_mnist_dir, monkeypatch, capsys
):
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
    [parent] = [r for r in runs if r.data.tags.get(names.TAG_ROLE) == "main"]
    assert f"-P run_id={parent.info.run_id}" in err
    assert "registry is read-only" in parent.data.tags[names.TAG_REGISTRATION_ERROR]
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


def test_main_registers_its_best_child_and_register_does_not_duplicate(registered_once, tiny_mnist_dir):
    runs = all_runs(registered_once)
    [parent] = [r for r in runs if r.data.tags.get(names.TAG_ROLE) == "main"]
    children = json.loads(parent.data.tags[names.TAG_CHILDREN])
    best = registry.best_run(list(children.values()))
    champion = mlflow.MlflowClient().get_model_version_by_alias(names.MODEL_NAME, names.CHAMPION)
    assert champion.tags["run_id"] == best.info.run_id
    assert parent.data.tags["registered_version"] == str(champion.version)
    assert parent.data.tags["champion_decision"]

    assert cli.run(["register"]) == 0  # the latest main run, again
    assert len(mlflow.MlflowClient().search_model_versions(f"name = '{names.MODEL_NAME}'")) == 1


def test_a_consumer_s_pyfunc_is_the_shipped_loader_quiet_and_the_keras_model_is_kept(
    registered_once, tiny_mnist, capfd
):
    """pyfunc (and so both REST servers) loads with the loader shipped in the model; it
    prints nothing per call; the keras flavor still gives the Keras model, compiled without
    the training's steps_per_execution."""
    info = mlflow.models.get_model_info(names.CHAMPION_URI)
    pyfunc_flavor = info.flavors["python_function"]
    assert (pyfunc_flavor["loader_module"], pyfunc_flavor["code"]) == ("digits_pyfunc", "code")
    folder = Path(mlflow.artifacts.download_artifacts(names.CHAMPION_URI))
    assert (folder / "code" / "digits_pyfunc.py").read_text() == logged_model.LOADER.read_text()

    model = mlflow.pyfunc.load_model(names.CHAMPION_URI)
    capfd.readouterr()
    images = tiny_mnist.x_test.astype(np.float32)
    one = [model.predict(images[i : i + 1]) for i in range(5)]
    probabilities = model.predict(images)
    assert capfd.readouterr() == ("", "")  # no progress bar, no log line
    np.testing.assert_allclose(np.concatenate(one), probabilities[:5], rtol=1e-5, atol=1e-7)

    keras_model = mlflow.keras.load_model(names.CHAMPION_URI)
    assert isinstance(keras_model, keras.Model)
    assert keras_model.get_compile_config()["steps_per_execution"] == 1
    np.testing.assert_allclose(keras_model.predict(images, verbose=0), probabilities, rtol=1e-5, atol=1e-7)


def test_champion_through_pyfunc_and_keras(registered_once, tiny_mnist):
    champion = mlflow.MlflowClient().get_model_version_by_alias(names.MODEL_NAME, names.CHAMPION)
    trained = mlflow.get_run(champion.tags["run_id"]).data.metrics
    model = mlflow.pyfunc.load_model(names.CHAMPION_URI)
    probabilities = model.predict(tiny_mnist.x_test.astype(np.float32))  # raw 0-255 pixels
    assert probabilities.shape == (len(tiny_mnist.x_test), 10)
    accuracy = (probabilities.argmax(1) == tiny_mnist.y_test).mean()
    assert accuracy == pytest.approx(trained["test_accuracy"], abs=1e-6)

    # What a consumer loads: one native .keras file (JSON config + HDF5 weights, nothing
    # pickled), which Keras loads with safe mode on to the same predictions.
    [keras_file] = Path(mlflow.artifacts.download_artifacts(names.CHAMPION_URI)).rglob("*.keras")
    with zipfile.ZipFile(keras_file) as archive:
        assert set(archive.namelist()) == {"metadata.json", "config.json", "model.weights.h5"}
    safe = keras.models.load_model(keras_file, safe_mode=True)
    np.testing.assert_allclose(safe.predict(tiny_mnist.x_test.astype(np.float32), verbose=0), probabilities, rtol=1e-5)


def test_predict_pictures_and_idx_files(registered_once, tiny_mnist, tmp_path, capsys):
    # a test digit as a black-on-white picture, 3x larger: predict must undo both
    picture = tmp_path / "digit.png"
    Image.fromarray(255 - tiny_mnist.x_test[0]).resize((84, 84)).save(picture)
    idx = tmp_path / "few-images-idx3-ubyte.gz"
    idx.write_bytes(gzip.compress(idx_bytes(tiny_mnist.x_test[:3])))
    capsys.readouterr()
    assert cli.run(["predict", str(picture), str(idx)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith(f"{picture}: ") and lines[1].startswith(f"{idx}[0]: ")
    model = mlflow.pyfunc.load_model(names.CHAMPION_URI)
    expected = model.predict(tiny_mnist.x_test[:3].astype(np.float32)).argmax(1)
    assert [int(line.split(": ")[1].split()[0]) for line in lines[1:]] == list(expected)


def test_bad_files_and_uris_are_one_line_errors(registered_once, tiny_mnist_dir, tmp_path, capsys):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    a_digit = tmp_path / "digit.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(a_digit)  # readable: the URI is what is wrong
    runs_before = len(all_runs(registered_once))
    cases = [
        (["predict", str(not_an_image)], f"{not_an_image}: not a readable image"),
        (["predict", str(tmp_path / "missing.png")], "missing.png: no such file"),
        (
            ["predict", "--model-uri", "models:/no-such-model@champion", str(a_digit)],
            "model_uri='models:/no-such-model@champion' cannot be loaded",
        ),
        (
            ["evaluate", "--model-uri", "models:/no-such-model@champion", "--data-dir", str(tiny_mnist_dir)],
            "model_uri='models:/no-such-model@champion' cannot be loaded",
        ),
    ]
    for argv, expected in cases:
        capsys.readouterr()
        assert cli.run(argv) == cli.USAGE_ERROR, argv
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
    assert len(all_runs(registered_once)) == runs_before


def test_convnet_is_tracked_like_the_dense_nets_and_its_version_carries_a_card(tracking_store, tiny_mnist):
    # a convnet reads every synthetic test digit right: wrong labels plant mistakes to report
    y_test = tiny_mnist.y_test.copy()
    y_test[np.flatnonzero(y_test == 4)[:5]] = 9
    y_test[np.flatnonzero(y_test == 7)[:2]] = 1
    arrays = {key: getattr(tiny_mnist, key) for key in data_module.NPZ_KEYS} | {"y_test": y_test}
    data = dataclasses.replace(tiny_mnist, y_test=y_test, digest=data_module.array_digest(*arrays.values()))
    cfg = tiny("convnet", epochs=1)
    run_id = track_training.track_training(cfg, data)
    check_training_run(run_id, cfg, data.digest)  # same params, metrics, artifacts, signature
    run = mlflow.get_run(run_id)
    assert run.data.params["conv_filters"] == "32,64" and run.data.params["dropout"] == "0.25"
    moves = {"augment_shift": "0.1", "augment_rotation": "10.0", "augment_zoom": "0.1"}
    assert moves.items() <= run.data.params.items()

    number = registry.register_run(run, chosen_from="a test").version.version
    version = mlflow.MlflowClient().get_model_version(names.MODEL_NAME, number)
    uri = version.tags[names.MODEL_CARD_TAG]
    assert uri == f"runs:/{run_id}/model_card/{names.MODEL_NAME}-v{number}.md"
    assert "highest last-epoch validation accuracy" in version.description
    assert version.description.endswith(f"Model card: {uri}")
    card = mlflow.artifacts.load_text(uri)

    # the logged counts are the registered model's own test predictions
    this = f"models:/{names.MODEL_NAME}/{number}"
    predicted = mlflow.pyfunc.load_model(this).predict(data.x_test.astype(np.float32)).argmax(1)
    counts = np.zeros((10, 10), int)
    np.add.at(counts, (data.y_test, predicted), 1)
    np.testing.assert_array_equal(readback.confusion_counts(run_id), counts)
    mistakes = [(counts[t, p], -t, -p) for t in range(10) for p in range(10) if t != p and counts[t, p]]
    assert len(mistakes) >= 2, "the planted labels should leave mistakes to report"
    count, t, p = max(mistakes)
    [first, *_] = [line for line in card.splitlines() if line.startswith("- ") and " read as " in line]
    assert first.startswith(f"- {-t} read as {-p}: {count} images")
    for digit in range(10):
        assert f"| {digit} | {counts[digit].sum()} | {counts[digit, digit]} |" in card

    metrics = run.data.metrics
    for name in ("val_accuracy", "test_accuracy", "test_loss"):
        assert f"| {name} | {metrics[name]:.4g} |" in card
    for text in (
        data.digest,
        data.source,
        "| conv_filters | `32,64` |",
        "| variant | `convnet` |",
        *(f"| {name} | `{value}` |" for name, value in moves.items()),
        f'mlflow.pyfunc.load_model("{this}")',
        f'"models:/{names.MODEL_NAME}@champion"',
        f'mlflow.keras.load_model("{this}")',
        f"mnist-pipeline serve --model-uri {this}",
    ):
        assert text in card, text
    keras_model = mlflow.keras.load_model(this)
    assert keras_model.count_params() == int(run.data.params["num_parameters"])
    # the augmentation was the training's: the registered network is the layers a consumer expects
    kinds = {type(layer).__name__ for layer in keras_model.layers}
    assert kinds == {"Rescaling", "Reshape", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dropout"}
