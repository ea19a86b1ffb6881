"""Which process trains: `main`'s and `reproduce`'s runs (reused, trained here, or trained
side by side in worker processes), and one training on a given thread count (`verify`).

Workers (tracking/training_worker.py) come from tracking/worker_context.py's fork server.
Each takes this process's environment, sets its thread count before its first op, then trains
the trainings this process hands it, one at a time, costliest first, and logs each as a child
of the parent run itself, as a run trained here is logged (track_training.track_training).
Their lines come here over each worker's own pipe and are printed as they come, every line
naming its run's label. A run records the thread count it trained on (core/threads.py: why).

- A failed training stops the handing out: the trainings under way finish, then its error
  is raised here.
- An interrupt (Ctrl-C reaches every process of the group; SIGTERM reaches this one and is
  passed on) ends each worker's run KILLED, its finished epochs kept, then this process's.
- A worker killed hard, at any moment (even halfway through a message: no lock or queue is
  shared), ends its pipe: its run, RUNNING still, is ended KILLED here at once (liveness),
  and the handing out stops as for a failed training.
"""

import contextlib
import math
import sys
import time
from multiprocessing.connection import wait

import mlflow

from mnist_pipeline.core import macs, threads
from mnist_pipeline.core.config import TrainConfig
from mnist_pipeline.core.data import Mnist
from mnist_pipeline.core.errors import WorkerDied
from mnist_pipeline.tracking import liveness, training_worker
from mnist_pipeline.tracking.readback import ChildRun
from mnist_pipeline.tracking.run_keys import find_reusable_run, run_key
from mnist_pipeline.tracking.run_lifecycle import ended_run, launched_by_mlflow_run
from mnist_pipeline.tracking.training_worker import Job, Setup
from mnist_pipeline.tracking.worker_context import CONTEXT

STOP_SECONDS = 120  # an interrupted worker's time to end its run KILLED, history and plots logged


def train_or_reuse(configs: list[TrainConfig], data: Mnist, force: bool, workers: int = 0) -> list[ChildRun]:
    """Each config as a child of the active run, or the FINISHED run with its run key
    (unless ``force``). Those to train go ``workers`` at a time (0: one per core)."""
    reused = [None if force else find_reusable_run(run_key(cfg, data.digest)) for cfg in configs]
    for cfg, run_id in zip(configs, reused):
        if run_id:
            print(f"{cfg.variant} (seed {cfg.seed}): reusing FINISHED run {run_id} (same config, code and data)")
    todo = [Job(cfg, label) for cfg, label, run_id in zip(configs, _labels(configs), reused) if run_id is None]
    processes, per_worker = threads.plan(len(todo), workers)
    parent = mlflow.active_run().info
    trained = _train(todo, data, processes, Setup(parent.experiment_id, parent.run_id, per_worker))
    return [ChildRun(cfg.variant, run_id or trained[cfg], run_id is not None) for cfg, run_id in zip(configs, reused)]


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
    with ended_run() if launched_by_mlflow_run() else contextlib.nullcontext() as run:
        where = (run.info.experiment_id, run.info.run_id) if run else (experiment_id, None)
        return _train([Job(cfg, cfg.variant)], data, 1, Setup(*where, on_threads, tags or {}))[cfg]


def _train(jobs: list[Job], data: Mnist, processes: int, setup: Setup) -> dict[TrainConfig, str]:
    """Train ``jobs`` as ``setup`` says; returns {job.cfg: run id}. Here, unless in more than
    one process, or on a thread count (``setup.threads``, 0: any) this process does not run on:
    then in ``processes`` workers, and the first failure is raised once every worker has stopped."""
    if processes == 1 and (not setup.threads or setup.threads == threads.current()):
        return {job.cfg: setup.train(job, data) for job in jobs}
    workers = {}  # this process's end of each worker's pipe -> the worker
    for n in range(processes):
        ours, theirs = CONTEXT.Pipe()
        workers[ours] = CONTEXT.Process(
            target=training_worker.work, args=(setup, data, theirs), name=f"trainer-{n}", daemon=True
        )
        workers[ours].start()
        theirs.close()  # the worker holds the only other end: the pipe ends when the worker does
    try:
        return _collect(jobs, workers, setup.experiment_id)
    finally:  # an interrupt or an error here: every worker ends its run KILLED first (none is left after the last)
        _stop(workers)


def _collect(jobs: list[Job], workers: dict, experiment_id: str | None) -> dict[TrainConfig, str]:
    """Hand the jobs out, costliest first, a job to each worker as it asks, and take each run
    id as its worker reports it, until every worker has ended. The first failure, or a
    worker's death, stops the handing out, and is raised then."""
    todo = sorted(jobs, key=lambda j: -j.cfg.epochs * macs.training_macs(j.cfg))
    trained, running, failure = {}, {}, None  # running: {pipe: its worker's job}
    for pipe, (kind, value) in _reports(set(workers)):  # each worker's first "done" (None): it is ready
        job = running.pop(pipe, None)  # the training the worker has ended, if any
        if kind == "done":
            if job is not None:
                trained[job.cfg] = value
            if todo and failure is None:
                running[pipe] = todo.pop(0)
            with contextlib.suppress(OSError):  # a worker that has died: its pipe's end says so
                pipe.send(running.get(pipe))  # None: no more, the worker ends
        elif kind == "failed":
            failure = failure or value
        elif job is not None:  # "ended" in a training, killed hard: not a word from it, its run RUNNING still
            workers[pipe].join()
            died = f"the process training {job.label} died (exit code {workers[pipe].exitcode})"
            failure = failure or WorkerDied(f"{died} before its run ended")
            liveness.end_dead_runs("", experiment_id)  # a line for its run (this process reads the experiment)
    for worker in workers.values():
        worker.join()  # its pipe has ended: it is exiting
    if failure is not None:
        raise failure
    if len(trained) < len(jobs):
        codes = ", ".join(str(w.exitcode) for w in workers.values())
        raise WorkerDied(f"the training processes ended (exit codes {codes}) before training every run")
    return trained


def _reports(pipes: set, seconds: float = math.inf):
    """(pipe, report) for each report on ``pipes`` as it comes, and (pipe, ("ended", None)) as a
    pipe ends (its worker ended; a message its death cut short is dropped), until every pipe
    has ended or ``seconds`` have passed. A line a worker printed is printed here instead."""
    deadline = time.monotonic() + seconds
    while pipes and (left := deadline - time.monotonic()) > 0:
        for pipe in wait(pipes, None if left == math.inf else left):
            try:
                kind, value = pipe.recv()
            except (EOFError, OSError):
                pipes.discard(pipe)
                kind, value = "ended", None
            if kind in ("out", "err"):  # a line the worker printed
                print(value, file=sys.stderr if kind == "err" else sys.stdout, flush=True)
            else:
                yield pipe, (kind, value)


def _stop(workers: dict) -> None:
    """Pass the interrupt on (a worker that has it already takes no second one) and wait for
    the workers to end their runs, printing what they print; one that has not ended in
    STOP_SECONDS is killed."""
    for worker in workers.values():
        if worker.is_alive():
            worker.terminate()  # SIGTERM: its run ends KILLED
    pipes = set(workers)
    for _ in _reports(pipes, STOP_SECONDS):
        pass  # lines are printed as they come; the rest is dropped: the interrupt goes on up
    for pipe in pipes:
        workers[pipe].kill()


def _labels(configs: list[TrainConfig]) -> list[str]:
    """Each run's name on the console: its variant, with the seed where a variant repeats."""
    variants = [cfg.variant for cfg in configs]
    return [cfg.variant if variants.count(cfg.variant) == 1 else f"{cfg.variant} seed {cfg.seed}" for cfg in configs]
