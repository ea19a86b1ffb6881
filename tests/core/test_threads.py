"""How many trainings run at once, and on how many threads each; and that TensorFlow's ops run
on the count a process sets before its first op (seen in a fresh process: the threads that
op starts)."""

import json
import os
import subprocess
import sys
from pathlib import Path

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


# A fresh process: its thread count set (or not) as the test says, then TensorFlow's first op.
# That op starts TensorFlow's pools: the intra-op pool's threads keep the process's name, the
# inter-op pool's are "tf_Compute"; each is counted as the threads of that name the op added.
_FIRST_OP = """
import collections, json, os, sys
from mnist_pipeline.core import threads

def names():
    return collections.Counter(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))

if sys.argv[1] == "one core":
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
elif sys.argv[1] != "default":
    threads.use(int(sys.argv[1]))
import tensorflow as tf

before = names()
tf.constant(1.0) + 1
started = names() - before
me = open("/proc/self/comm").read().strip()
print(json.dumps({"intra": started[me], "inter": started["tf_Compute"], "current": threads.current()}))
"""


def _first_op(setting: str, **env) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _FIRST_OP, setting],
        env={k: v for k, v in os.environ.items() if k != "TF_NUM_INTRAOP_THREADS"} | env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="threads are counted in /proc (Linux)")
@pytest.mark.parametrize(
    ("setting", "env", "intra"),
    [
        ("1", {}, 1),  # a worker of `main` on 2 cores
        ("default", {"TF_NUM_INTRAOP_THREADS": "3"}, 3),  # TensorFlow's own variable, read as it starts
        ("one core", {}, 1),  # left alone: one per core this process may run on (its affinity, not the machine's)
    ],
)
def test_the_threads_set_before_the_first_op_are_those_tensorflow_runs_on(setting, env, intra):
    seen = _first_op(setting, **env)
    assert (seen["intra"], seen["current"]) == (intra, intra)
    if setting == "1":  # one thread: one op at a time too
        assert seen["inter"] == 1
