import contextlib

import keras
import numpy as np
import pandas as pd
import pytest

from mnist_pipeline.core.config import resolve
from mnist_pipeline.core.models import build_model
from mnist_pipeline.core.training import best_epoch, train
from mnist_pipeline.core.variants import VARIANTS
from mnist_pipeline.names import EPOCH_METRICS


def _dense(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]


@pytest.mark.parametrize("name", VARIANTS)
def test_models_read_like_the_study_table(name):
    variant = resolve(name)
    model = build_model(variant, steps_per_epoch=10)
    dense = _dense(model)
    assert [d.units for d in dense] == [*variant.hidden_units, 10]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert [c.filters for c in convs] == list(variant.conv_filters) and len(pools) == len(convs)
    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert [d.rate for d in dropouts] == [variant.dropout] * len(variant.hidden_units)
    assert all((d.kernel_regularizer is not None) == (variant.l2 > 0) for d in dense[:-1])
    assert dense[-1].kernel_regularizer is None
    assert isinstance(model.optimizer, keras.optimizers.RMSprop)
    # the study's constant rate; the convnet's decays to 0 over its epochs' steps
    schedule = model.optimizer._learning_rate
    if variant.cosine_decay:
        assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
        assert schedule.decay_steps == variant.epochs * 10
    else:
        assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="needs steps_per_epoch") if variant.cosine_decay else contextlib.nullcontext():
        build_model(resolve(name))


def test_the_most_conv_blocks_config_allows_still_fit_a_28x28_image():
    from mnist_pipeline.core.config import MAX_CONV_BLOCKS

    model = build_model(resolve("convnet", {"conv_filters": (4,) * MAX_CONV_BLOCKS}), steps_per_epoch=1)
    assert model.predict(np.zeros((1, 28, 28), np.float32)).shape == (1, 10)


def test_model_scales_raw_pixels_itself():
    model = build_model(resolve("baseline"))
    raw = np.full((2, 28, 28), 255.0, np.float32)
    probabilities = model.predict(raw)
    assert probabilities.shape == (2, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert isinstance(model.layers[0], keras.layers.Rescaling)


def test_train_returns_history_per_epoch_and_test_scores(tiny_mnist):
    cfg = resolve("baseline", {"epochs": 3, "batch_size": 32})
    seen = []
    result = train(cfg, tiny_mnist, on_epoch=lambda epoch, row: seen.append((epoch, row)))
    assert list(result.history.index) == [1, 2, 3]
    assert list(result.history.columns) == list(EPOCH_METRICS)
    assert [epoch for epoch, _ in seen] == [1, 2, 3]
    assert seen[-1][1] == result.history.loc[3].to_dict()
    assert len(result.val_labels) == len(result.val_probabilities) == 40  # the last 10% of 400
    assert result.samples_per_second * result.train_seconds == pytest.approx(3 * 360)  # 3 epochs of the other 360
    assert result.test_probabilities.shape == (100, 10)
    assert result.test_accuracy == pytest.approx(
        (result.test_probabilities.argmax(1) == tiny_mnist.y_test).mean(), abs=1e-6
    )
    assert result.test_accuracy > 0.5  # the synthetic digits are easy: it must learn


@pytest.mark.parametrize(
    "name, knobs",
    [("baseline", {"epochs": 1}), ("convnet", {"epochs": 2, "conv_filters": (4, 8), "hidden_units": (16,)})],
)
def test_same_seed_same_result(tiny_mnist, name, knobs):
    """What `verify` relies on: a config trains twice to the same weights, optimizer slots
    and scores, the convnet's random rotations, zooms, shifts and Dropout included."""
    cfg = resolve(name, {"batch_size": 64, **knobs})
    first, second = (train(cfg, tiny_mnist) for _ in range(2))
    for a, b in zip(
        first.model.variables + first.model.optimizer.variables,
        second.model.variables + second.model.optimizer.variables,
        strict=True,
    ):
        np.testing.assert_array_equal(np.array(a), np.array(b), err_msg=a.path)
    pd.testing.assert_frame_equal(
        first.history.drop(columns="epoch_seconds"), second.history.drop(columns="epoch_seconds")
    )
    assert first.test_accuracy == second.test_accuracy


def test_best_epoch_breaks_ties_on_lower_val_loss():
    history = pd.DataFrame(
        {"val_accuracy": [0.9, 0.95, 0.95, 0.94], "val_loss": [0.3, 0.2, 0.1, 0.05]},
        index=pd.RangeIndex(1, 5, name="epoch"),
    )
    assert best_epoch(history) == 3
