"""The roofline's arithmetic, and that it counts the matmuls TensorFlow really runs."""

from mnist_pipeline.core import speed


def test_roofline_arithmetic():
    from mnist_pipeline.core.config import resolve

    cfg = resolve("baseline")
    macs = 784 * 128 + 128 * 10
    assert speed.layer_shapes(cfg) == [(784, 128), (128, 10)]
    # training: forward + weight gradients of both layers, input gradient of the second only
    assert speed.epoch_flops(cfg, 100, 10) == 2 * (2 * macs + 128 * 10) * 100 + 2 * macs * 10
    # epoch ends at 5 s (the warm-up), 6, 8 and 9.5 s: epochs of 1, 2 and 1.5 s
    assert speed.epoch_times([5.0, 6.0, 8.0, 9.5]) == [1.0, 2.0, 1.5]


def test_roofline_counts_the_matmuls_tensorflow_runs():
    """The roofline's arithmetic is the MatMuls in the traced training step, no more, no less."""
    import keras
    import tensorflow as tf

    from mnist_pipeline.core.config import resolve
    from mnist_pipeline.core.models import build_model

    cfg = resolve("final", {"hidden_units": (64, 32, 16)})
    model, loss = build_model(cfg), keras.losses.CategoricalCrossentropy()

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        return tape.gradient(value, model.trainable_variables)

    batch = 8
    graph = step.get_concrete_function(tf.TensorSpec((batch, 28, 28)), tf.TensorSpec((batch, 10))).graph
    macs = 0
    for op in graph.get_operations():
        if op.type == "MatMul":
            a, b = (tuple(t.shape) for t in op.inputs)
            m, k = a[::-1] if op.get_attr("transpose_a") else a
            n = b[0] if op.get_attr("transpose_b") else b[1]
            macs += m * k * n
    assert macs == speed.training_macs(cfg) * batch
