"""Trainings side by side in worker processes (tracking/training_dispatch.py), on tiny synthetic data.
Interrupted and killed workers: tests/flows/test_interrupt.py; a worker's run trained again
to the same numbers: tests/flows/test_verify.py."""

import os

from helpers.checks import check_training_run, tiny
from helpers.stores import all_runs
from mnist_pipeline import names
from mnist_pipeline.core.commands import MainParams
from mnist_pipeline.flows import main


def test_trainings_side_by_side_are_children_on_one_thread_each_and_name_their_lines(tracking_store, tiny_mnist, capfd):
    configs = [tiny("baseline", 2), tiny("final", 3)]
    table = main.compare(configs, tiny_mnist, MainParams(model_name="", workers=2))
    runs = all_runs(tracking_store)
    [parent] = [r for r in runs if r.data.tags.get(names.TAG_ROLE) == names.ROLE_MAIN]
    children = {r.data.tags["variant"]: r for r in runs if r.data.tags.get(names.TAG_PARENT_RUN) == parent.info.run_id}
    assert parent.info.status == "FINISHED" and list(table["variant"]) == ["baseline", "final"]
    for cfg in configs:
        check_training_run(children[cfg.variant].info.run_id, cfg, tiny_mnist.digest)
        assert children[cfg.variant].data.tags[names.TAG_THREADS] == "1"
    pids = {r.data.tags[names.TAG_PID] for r in children.values()}
    assert len(pids) == 2 and str(os.getpid()) not in pids  # two worker processes, not this one
    out = capfd.readouterr().out.splitlines()
    for cfg in configs:  # lines of the two runs come mixed: each names its run
        assert f"{cfg.variant}: run {children[cfg.variant].info.run_id}, {cfg.epochs} epochs" in out
        lines = [line for line in out if line.startswith(f"{cfg.variant}  epoch ")]
        assert [line.split()[2] for line in lines] == [f"{e}/{cfg.epochs}" for e in range(1, cfg.epochs + 1)]


def test_a_single_training_stays_in_this_process_on_every_core(tracking_store, tiny_mnist):
    main.compare([tiny("baseline", 1)], tiny_mnist, MainParams(model_name="", workers=0))
    [child] = [r for r in all_runs(tracking_store) if names.TAG_VARIANT in r.data.tags]
    assert child.data.tags[names.TAG_PID] == str(os.getpid())
    assert child.data.tags[names.TAG_THREADS] == str(len(os.sched_getaffinity(0)))
