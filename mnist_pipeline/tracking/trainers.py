"""Which process trains: `main`'s and `reproduce`'s runs (reused, trained here, or trained
side by side in worker processes), and one training on a given thread count (`verify`).

Workers (tracking/worker_process.py) are forked from multiprocessing's fork server, a process
that imported the training code (TensorFlow too) but never ran an op. Each takes this
process's environment, sets its thread count before its first op, then takes trainings from
one queue, costliest first, and logs each as a child of the parent run itself, as a run
trained here is logged (training_run.track_training). Their lines come here and are printed
as they come, every line naming its run's label. A run records the thread count it trained
on (core/threads.py: why).

- A failed training stops the queue: the trainings under way finish, then its error is
  raised here.
- An interrupt (Ctrl-C reaches every process of the group; SIGTERM reaches this one and is
  passed on) ends each worker's run KILLED, its finished epochs kept, then this process's.
- A worker killed hard leaves its run RUNNING: it is ended KILLED here at once (liveness),
  and the queue stops as for a failed training.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import time
from dataclasses import dataclass

import mlflow

from mnist_pipeline.core import macs, threads
from mnist_pipeline.core.config import TrainConfig
from mnist_pipeline.core.data import Mnist
from mnist_pipeline.core.errors import WorkerDied
from mnist_pipeline.tracking import liveness, worker_process
from mnist_pipeline.tracking.identity import find_reusable_run, run_key
from mnist_pipeline.tracking.readback import ChildRun
from mnist_pipeline.tracking.runs import ended_run, launched_by_mlflow_run

POLL_SECONDS = 0.5  # how often a waiting parent looks for workers that died without a word
STOP_SECONDS = 120  # an interrupted worker's time to end its run KILLED, history and plots logged


@dataclass(frozen=True)
class Job:
    index: int  # the training's place in the caller's list
    cfg: TrainConfig
    label: str  # names the run on the console: the variant, with its seed if a variant repeats


def train_or_reuse(configs: list[TrainConfig], data: Mnist, force: bool, workers: int = 0) -> list[ChildRun]:
    """Each config as a child of the active run, or the FINISHED run with its run key
    (unless ``force``). Those to train go ``workers`` at a time (0: one per core)."""
    labels = _labels(configs)
    reused = [None if force else find_reusable_run(run_key(cfg, data.digest)) for cfg in configs]
    for cfg, run_id in zip(configs, reused):
        if run_id:
            print(f"{cfg.variant} (seed {cfg.seed}): reusing FINISHED run {run_id} (same config, code and data)")
    todo = [Job(i, cfg, labels[i]) for i, (cfg, run_id) in enumerate(zip(configs, reused)) if run_id is None]
    processes, per_worker = threads.plan(len(todo), workers)
    parent = mlflow.active_run()
    if processes > 1:
        trained = in_workers(todo, data, processes, per_worker, parent.info.run_id, parent.info.experiment_id)
    else:
        from mnist_pipeline.tracking.training_run import track_training  # TensorFlow: only to train here

        trained = {job.index: track_training(job.cfg, data, nested=True, label=job.label) for job in todo}
    return [
        ChildRun(cfg.variant, run_id or trained[i], run_id is not None)
        for i, (cfg, run_id) in enumerate(zip(configs, reused))
    ]


def prepare(trainings: int, workers: int) -> None:
    """If ``trainings`` will go to workers, start the fork server now: it imports the training
    code while this process loads the data and checks the store."""
    if threads.plan(trainings, workers)[0] > 1 and _context().get_start_method() == "forkserver":
        import multiprocessing.forkserver

        multiprocessing.forkserver.ensure_running()


def track_alone(
    cfg: TrainConfig,
    data: Mnist,
    tags: dict[str, str] | None = None,
    on_threads: int = 0,
    experiment_id: str | None = None,
) -> str:
    """One training as an entry point's whole work: under `mlflow run`, nested in the run it
    made for the entry point; otherwise a run of its own (in ``experiment_id``, if given).
    ``on_threads``: trained on that many threads, in a worker if this process runs on
    another count; 0: here. Returns the training run's id."""
    if launched_by_mlflow_run():
        with ended_run() as run:
            return _track_one(cfg, data, tags, on_threads, run.info.run_id, run.info.experiment_id)
    return _track_one(cfg, data, tags, on_threads, None, experiment_id)


def _track_one(cfg, data, tags, on_threads: int, parent_run_id: str | None, experiment_id: str | None) -> str:
    if on_threads and on_threads != threads.current():
        job = Job(0, cfg, cfg.variant)
        return in_workers([job], data, 1, on_threads, parent_run_id, experiment_id, tags)[0]
    from mnist_pipeline.tracking.training_run import track_training

    return track_training(cfg, data, nested=parent_run_id is not None, tags=tags)


def in_workers(
    jobs: list[Job],
    data: Mnist,
    processes: int,
    on_threads: int,
    parent_run_id: str | None,
    experiment_id: str | None,
    tags: dict[str, str] | None = None,
) -> dict[int, str]:
    """Train ``jobs`` in ``processes`` workers at ``on_threads`` threads each; returns
    {job.index: run id}. Raises the first failure once every worker has stopped."""
    context = _context()
    tasks, results, stop = context.Queue(), context.Queue(), context.Event()
    for job in sorted(jobs, key=lambda j: -j.cfg.epochs * macs.training_macs(j.cfg)):  # costliest first
        tasks.put(job)
    for _ in range(processes):
        tasks.put(None)  # one end mark per worker
    levels = {
        name: logging.getLogger(name).level for name in logging.root.manager.loggerDict if name.startswith("mlflow")
    }
    setup = worker_process.Setup(
        mlflow.get_tracking_uri(), experiment_id, parent_run_id, on_threads, tags or {}, levels, {**os.environ}
    )
    workers = [
        context.Process(
            target=worker_process.work, args=(setup, data, tasks, results, stop), name=f"trainer-{n}", daemon=True
        )
        for n in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        trained, failure = _collect(jobs, workers, results, stop)
    except BaseException:  # an interrupt here: every worker ends its run KILLED first
        stop.set()
        _stop(workers, results)
        raise
    if failure is not None:
        raise failure
    return trained


def _context():
    """The fork server (Linux, macOS): it imports the training code once, as the first worker
    starts, and forks each worker ready to train; elsewhere each worker is spawned and imports
    it itself (about 5 s here, two workers importing at once on 2 cores: 8 s)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["mnist_pipeline.tracking.training_run"])
    return context


def _collect(jobs, workers, results, stop) -> tuple[dict[int, str], BaseException | None]:
    """Each job's run id as its worker reports it, until every worker has ended; the first
    failure stops the queue."""
    labels = {job.index: job.label for job in jobs}
    trained, running, failure = {}, {}, None
    while True:
        try:
            kind, index, value = results.get(timeout=POLL_SECONDS)
        except queue.Empty:
            if lost := _lost(workers, running):  # killed hard in a training: not a word from it
                liveness.end_dead_runs()  # its run, RUNNING still: a line for each
                for index, code in lost.items():
                    running.pop(index)
                    died = f"the process training {labels[index]} died (exit code {code}) before its run ended"
                    failure = failure or WorkerDied(died)
                stop.set()
            if any(w.is_alive() for w in workers):
                continue
            try:  # every worker has ended: what they said last is in the pipe already
                kind, index, value = results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                break
        if kind in worker_process.STREAMS:
            worker_process.echo(kind, value)
        elif kind == "started":
            running[index] = value
        elif kind == "done":
            trained[index] = value
            running.pop(index)
        else:
            running.pop(index)
            failure = failure or value
            stop.set()
    if failure is None and len(trained) < len(jobs):
        codes = ", ".join(str(w.exitcode) for w in workers)
        failure = WorkerDied(f"the training processes ended (exit codes {codes}) before training every run")
    return trained, failure


def _lost(workers, running: dict[int, int]) -> dict[int, int]:
    """{job index: exit code} of the trainings whose worker has died. A worker that ends on
    its own (done, failed, no job left) reports first and exits with 0."""
    codes = {w.pid: w.exitcode for w in workers if w.exitcode not in (None, 0)}
    return {index: codes[pid] for index, pid in running.items() if pid in codes}


def _stop(workers, results) -> None:
    """Pass the interrupt on (a worker that has it already takes no second one) and wait for
    the workers to end their runs, printing what they print; one that has not ended in
    STOP_SECONDS is killed."""
    for worker in workers:
        if worker.is_alive():
            worker.terminate()  # SIGTERM: its run ends KILLED
    deadline = time.monotonic() + STOP_SECONDS
    while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
        _show_lines(results)
    for worker in workers:
        if worker.is_alive():
            worker.kill()
    _show_lines(results)


def _show_lines(results) -> None:
    """Print the lines the workers sent within POLL_SECONDS (a stopping worker's reports are dropped)."""
    with contextlib.suppress(queue.Empty):
        while True:
            kind, _, value = results.get(timeout=POLL_SECONDS)
            if kind in worker_process.STREAMS:
                worker_process.echo(kind, value)


def _labels(configs: list[TrainConfig]) -> list[str]:
    """Each run's name on the console: its variant, with the seed where a variant repeats."""
    variants = [cfg.variant for cfg in configs]
    return [cfg.variant if variants.count(cfg.variant) == 1 else f"{cfg.variant} seed {cfg.seed}" for cfg in configs]
