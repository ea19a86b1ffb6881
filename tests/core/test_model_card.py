"""The model card's pure functions, on made-up counts. The card a registered version carries
is checked in tests/tracking/test_registry.py."""

import numpy as np
import pytest

from mnist_pipeline.core import model_card


def test_confused_pairs_are_the_largest_off_diagonal_cells():
    confusion = np.diag([50] * 10)
    confusion[4, 9], confusion[9, 4], confusion[7, 1], confusion[3, 5] = 6, 2, 6, 3
    assert model_card.confused_pairs(confusion) == [(4, 9, 6), (7, 1, 6), (3, 5, 3)]  # ties: lower digit first
    assert model_card.confused_pairs(np.diag([5] * 10)) == []
    accuracy = model_card.per_class_accuracy(confusion)
    assert accuracy[4] == pytest.approx(50 / 56) and accuracy[0] == 1.0


def test_card_of_a_run_without_confusion_counts_says_so():
    card = model_card.build(
        model_name="m",
        version="2",
        chosen="Chosen by hand.",
        params={"conv_filters": ""},
        metrics={"val_accuracy": 0.9},
        confusion=None,
        run_id="r1",
        model_uri="models:/m-1",
    )
    assert "Not known: the training run logged no confusion counts" in card
    assert "| val_accuracy | 0.9 |" in card and " read as " not in card
    assert "| conv_filters | none |" in card  # a dense net's empty value
