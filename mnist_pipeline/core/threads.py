"""How many trainings run at once, and on how many threads each.

On these 2-core machines one training at one thread does about 80% of the work it does at
two (its matmuls are too small to keep two cores busy), so two trainings side by side, one
core each, finish a `main` sooner than the same two in turns (docs/speed.md#concurrency).
A seed fixes every number only for a given thread count: TensorFlow splits a matmul's sums
between its threads, and float32 sums in another order round differently. So the count a
run trained on is recorded with it, and `verify` trains on the same count.
"""

import os


def cores() -> int:
    """The CPU cores this process may run on (a container's or taskset's limit included)."""
    # sched_getaffinity (Linux only) counts the cores this process may use; cpu_count every core
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def plan(trainings: int, workers: int) -> tuple[int, int]:
    """(processes, threads each) for ``trainings`` to train, at most ``workers`` at once (0:
    one per core). One process means this one, on TensorFlow's default threads (every core)."""
    processes = min(trainings, workers or cores())
    if processes <= 1:
        return 1, 0
    return processes, max(1, cores() // processes)


def use(threads: int) -> None:
    """Train on ``threads`` threads (0: TensorFlow's default), before TensorFlow's first op;
    ``threads`` 1 also runs one op at a time (no second thread for independent ops)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1 if threads == 1 else 0)


def current() -> int:
    """The threads TensorFlow's ops run on in this process: the count set, else its default
    (TF_NUM_INTRAOP_THREADS, else one per core)."""
    import tensorflow as tf

    value = os.environ.get("TF_NUM_INTRAOP_THREADS", "")
    return tf.config.threading.get_intra_op_parallelism_threads() or (int(value) if value.isdigit() else 0) or cores()
