"""The roofline's arithmetic, and that it counts the products TensorFlow really runs."""

import pytest

from benchmarks import speed
from mnist_pipeline.core.macs import layer_macs, linear_layers, training_macs


def test_roofline_arithmetic():
    from mnist_pipeline.core.config import resolve

    cfg = resolve("baseline")
    macs = 784 * 128 + 128 * 10
    assert linear_layers(cfg) == [((784,), (784, 128)), ((128,), (128, 10))]
    # training: forward + weight gradients of both layers, input gradient of the second only
    assert speed.epoch_flops(cfg, 100, 10) == 2 * (2 * macs + 128 * 10) * 100 + 2 * macs * 10
    convnet = resolve("convnet")  # 28 -conv-> 26 -pool-> 13 -conv-> 11 -pool-> 5: 5 * 5 * 64 = 1600 inputs
    assert [w for _, w in linear_layers(convnet)] == [(3, 3, 1, 32), (3, 3, 32, 64), (1600, 128), (128, 10)]
    assert layer_macs(convnet) == [26 * 26 * 9 * 32, 11 * 11 * 9 * 32 * 64, 1600 * 128, 1280]
    # epoch ends at 5 s (the warm-up), 6, 8 and 9.5 s: epochs of 1, 2 and 1.5 s
    assert speed.epoch_times([5.0, 6.0, 8.0, 9.5]) == [1.0, 2.0, 1.5]


@pytest.mark.parametrize(
    "variant, overrides",
    [("final", {"hidden_units": (64, 32, 16)}), ("convnet", {"conv_filters": (4, 8), "hidden_units": (16,)})],
)
def test_roofline_counts_the_products_tensorflow_runs(variant, overrides):
    """The roofline's arithmetic is the MatMuls and convolutions in the traced training
    step, no more, no less."""
    import keras
    import numpy as np
    import tensorflow as tf

    from mnist_pipeline.core.config import resolve
    from mnist_pipeline.core.models import build_model

    cfg = resolve(variant, overrides)
    model, loss = build_model(cfg, steps_per_epoch=1), keras.losses.CategoricalCrossentropy()

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        return tape.gradient(value, model.trainable_variables)

    batch = 8
    graph = step.get_concrete_function(tf.TensorSpec((batch, 28, 28)), tf.TensorSpec((batch, 10))).graph
    # the ops the gradients depend on: TensorFlow prunes the rest before running the step
    # (the tape also builds the convnet's first input gradient, which nothing uses)
    needed, stack = set(), [t.op for t in graph.outputs]
    while stack:
        op = stack.pop()
        if op not in needed:
            needed.add(op)
            stack += [t.op for t in op.inputs] + list(op.control_inputs)
    macs = 0
    for op in needed:
        if op.type == "MatMul":
            a, b = (tuple(t.shape) for t in op.inputs)
            m, k = a[::-1] if op.get_attr("transpose_a") else a
            n = b[0] if op.get_attr("transpose_b") else b[1]
            macs += m * k * n
        elif op.type.startswith("Conv2D"):  # (output or its gradient, filter) of each product
            output, kernel = _conv_output_and_kernel(op)
            n, height, width, _ = output.shape
            macs += n * height * width * int(np.prod(kernel.shape))
    assert macs == training_macs(cfg) * batch


def _conv_output_and_kernel(op):
    """(output or its gradient, filter) of a convolution's forward or gradient op."""
    return {
        "Conv2D": lambda: (op.outputs[0], op.inputs[1]),
        "Conv2DBackpropFilter": lambda: (op.inputs[2], op.outputs[0]),
        "Conv2DBackpropInput": lambda: (op.inputs[2], op.inputs[1]),
    }[op.type]()


def test_the_plain_loop_is_a_dense_network_s_reference():
    from mnist_pipeline.core.config import resolve

    assert speed.has_plain_loop(resolve("final")) and not speed.has_plain_loop(resolve("convnet"))


def test_keras_fit_trains_the_convnet_on_images_augmented_as_the_loop_does(tiny_mnist):
    """Keras' reference for the convnet sees what the loop would: each shuffled batch moved by
    augment.py's function with the dataset's seeds, new draws every epoch, labels kept; it
    times the epochs after the warm-up, as written and tuned."""
    import numpy as np
    import tensorflow as tf

    from mnist_pipeline.core import augment
    from mnist_pipeline.core.config import resolve

    x, y = tiny_mnist.x_train[:64].astype("float32"), np.eye(10, dtype="float32")[tiny_mnist.y_train[:64]]
    convnet = resolve("convnet", {"conv_filters": (4,), "hidden_units": (8,), "epochs": 2, "batch_size": 32})
    moves = augment.for_config(convnet)
    dataset = speed.batches(x, y, 32, seed=7, moves=moves)
    shuffled = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(64, seed=7).batch(32)
    seeds = tf.data.Dataset.random(seed=7, rerandomize_each_iteration=True).batch(2)
    drawn = []
    for _ in range(2):  # each epoch iterates all three again
        epoch_seeds = [seed for seed, _ in zip(seeds, range(2), strict=False)]
        for (images, labels), (raw, raw_labels), seed in zip(dataset, shuffled, epoch_seeds, strict=True):
            np.testing.assert_array_equal(labels, raw_labels)
            np.testing.assert_allclose(images, moves(raw, seed), rtol=0, atol=1e-3)
            assert not np.array_equal(images, raw)
        drawn.append(np.array(epoch_seeds))
    assert not np.array_equal(*drawn)  # other draws in the second epoch
    assert len(speed.keras_fit_epochs(convnet, tiny_mnist, tuned=True)) == 1
