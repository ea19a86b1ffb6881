"""The model card: its pure functions on made-up counts, and the card a registered convnet
version carries, checked against the model's own predictions on the test images."""

import dataclasses

import mlflow
import numpy as np
import pytest
from checks import check_training_run, tiny

from mnist_pipeline import data as mnist_data
from mnist_pipeline import model_card, registry, tracking


def test_confused_pairs_are_the_largest_off_diagonal_cells():
    confusion = np.diag([50] * 10)
    confusion[4, 9], confusion[9, 4], confusion[7, 1], confusion[3, 5] = 6, 2, 6, 3
    assert model_card.confused_pairs(confusion) == [(4, 9, 6), (7, 1, 6), (3, 5, 3)]  # ties: lower digit first
    assert model_card.confused_pairs(np.diag([5] * 10)) == []
    accuracy = model_card.per_class_accuracy(confusion)
    assert accuracy[4] == pytest.approx(50 / 56) and accuracy[0] == 1.0


def test_card_of_a_run_without_confusion_counts_says_so():
    card = model_card.build(
        model_name="m", version="2", chosen="Chosen by hand.", params={"conv_filters": ""}, metrics={"val_accuracy": 0.9},
        confusion=None, run_id="r1", model_uri="models:/m-1",
    )
    assert "Not known: the training run logged no confusion counts" in card
    assert "| val_accuracy | 0.9 |" in card and " read as " not in card
    assert "| conv_filters | none |" in card  # a dense net's empty value


def test_convnet_is_tracked_like_the_dense_nets_and_its_version_carries_a_card(tracking_store, tiny_mnist):
    # a convnet reads every synthetic test digit right: wrong labels plant mistakes to report
    y_test = tiny_mnist.y_test.copy()
    y_test[np.flatnonzero(y_test == 4)[:5]] = 9
    y_test[np.flatnonzero(y_test == 7)[:2]] = 1
    arrays = {key: getattr(tiny_mnist, key) for key in mnist_data.NPZ_KEYS} | {"y_test": y_test}
    data = dataclasses.replace(tiny_mnist, y_test=y_test, digest=mnist_data.content_digest(arrays))
    cfg = tiny("convnet", epochs=1)
    run_id = tracking.track_training(cfg, data)
    check_training_run(run_id, cfg, data.digest)  # same params, metrics, artifacts, signature
    run = mlflow.get_run(run_id)
    assert run.data.params["conv_filters"] == "32,64" and run.data.params["augment_shift"] == "0.1"

    number = registry.register_run(run, chosen_from="a test").version.version
    version = mlflow.MlflowClient().get_model_version(registry.MODEL_NAME, number)
    uri = version.tags[registry.MODEL_CARD_TAG]
    assert uri == f"runs:/{run_id}/model_card/{registry.MODEL_NAME}-v{number}.md"
    assert "highest last-epoch validation accuracy" in version.description
    assert version.description.endswith(f"Model card: {uri}")
    card = mlflow.artifacts.load_text(uri)

    # the logged counts are the registered model's own test predictions
    this = f"models:/{registry.MODEL_NAME}/{number}"
    predicted = mlflow.pyfunc.load_model(this).predict(data.x_test.astype(np.float32)).argmax(1)
    counts = np.zeros((10, 10), int)
    np.add.at(counts, (data.y_test, predicted), 1)
    np.testing.assert_array_equal(tracking.confusion_counts(run_id), counts)
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
    for text in (data.digest, data.source, "| conv_filters | `32,64` |", "| variant | `convnet` |",
                 f'mlflow.pyfunc.load_model("{this}")', f'"models:/{registry.MODEL_NAME}@champion"',
                 f'mlflow.keras.load_model("{this}")', f"mnist-pipeline serve --model-uri {this}"):
        assert text in card, text
    assert mlflow.keras.load_model(this).count_params() == int(run.data.params["num_parameters"])
