"""How many trainings run at once, and on how many threads each."""

import pytest

from mnist_pipeline.core import threads


@pytest.mark.parametrize(
    ("cores", "trainings", "workers", "planned"),
    [
        (2, 3, 0, (2, 1)),  # `main` on these machines: two at once, one core each
        (2, 1, 0, (1, 0)),  # one training: here, on every core
        (2, 3, 1, (1, 0)),  # workers=1: one at a time, here
        (2, 0, 0, (1, 0)),  # all reused: nothing to start
        (8, 3, 0, (3, 2)),  # fewer trainings than cores: the cores shared out
        (8, 15, 0, (8, 1)),
        (2, 15, 4, (4, 1)),  # more workers than cores: still one thread each
    ],
)
def test_plan_runs_one_training_per_core_at_most_one_per_run(monkeypatch, cores, trainings, workers, planned):
    monkeypatch.setattr(threads, "cores", lambda: cores)
    assert threads.plan(trainings, workers) == planned


def test_a_process_left_alone_runs_its_ops_on_every_core(monkeypatch):
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)  # the suite sets no thread count
    assert threads.current() == threads.cores()
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "3")  # TensorFlow's own variable, read at its start
    assert threads.current() == 3
