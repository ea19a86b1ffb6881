"""A training worker process (tracking/training_dispatch.py starts them): it takes the parent's
environment, sets its thread count before TensorFlow's first op, and trains the jobs the parent
sends it, each a run of its own under the parent run. What it prints goes to the parent, line
by line, and the parent prints it: the console stays the parent's.

Everything goes over the worker's own pipe to the parent: no lock or queue is shared with
another worker, so a worker that dies at any moment, even halfway through a message, stops
no other, and the parent reads its death as the end of that pipe."""

import contextlib
import io
import logging
import os
import pickle
import signal
import sys
import threading
import traceback
from dataclasses import dataclass, field

import mlflow

from mnist_pipeline.core import interrupts, threads
from mnist_pipeline.core.config import TrainConfig
from mnist_pipeline.core.data import Mnist
from mnist_pipeline.core.errors import UserError


@dataclass(frozen=True)
class Job:
    cfg: TrainConfig  # the jobs of one call differ in it: their run ids are told apart by it
    label: str  # names the run on the console: the variant, with its seed if a variant repeats


def _mlflow_log_levels() -> dict[str, int]:
    """MLflow's loggers' levels as this process set them (the CLI quiets some)."""
    loggers = [name for name in logging.root.manager.loggerDict if name.startswith("mlflow")]
    return {name: logging.getLogger(name).level for name in loggers}


@dataclass(frozen=True)
class Setup:
    """What a training needs of this process: where its runs go, its threads and tags; and, read
    as the Setup is made, this process's store, loggers and variables, for a worker to take."""

    experiment_id: str | None
    parent_run_id: str | None
    threads: int  # 0: this process's
    tags: dict[str, str] = field(default_factory=dict)
    tracking_uri: str = field(default_factory=mlflow.get_tracking_uri)
    log_levels: dict[str, int] = field(default_factory=_mlflow_log_levels)
    # the fork server has the variables it started with. No MLFLOW_RUN_ID among these: under
    # `mlflow run` a Setup is made in the run it names, and MLflow took the variable out as it resumed it
    environ: dict[str, str] = field(default_factory=os.environ.copy)

    def train(self, job: Job, data: Mnist) -> str:
        """``job`` trained in this process as a child of the parent run; returns its run id."""
        from mnist_pipeline.tracking.track_training import track_training  # TensorFlow: only to train

        return track_training(job.cfg, data, self.tags, parent_run_id=self.parent_run_id, label=job.label)


_SENDING = threading.Lock()  # a worker's messages go one at a time, whichever thread sends one


def _send(pipe, *report) -> None:
    """(kind, value) to the parent, whole: a line printed (kind "out" or "err"), the job "done"
    (its run id) or "failed" (the error)."""
    # an interrupt (raised in the main thread) waits for the end of the message: one cut
    # short would garble every later one
    main = threading.current_thread() is threading.main_thread()
    with _SENDING, interrupts.deferred() if main else contextlib.nullcontext():
        pipe.send(report)


class _Lines(io.TextIOBase):
    """A worker's sys.stdout or sys.stderr: each whole line goes to the parent, which prints it,
    so the console is the parent's (its stdout may be a pipe or a test's capture by now)."""

    def __init__(self, pipe, stream: str):
        self.pipe, self.stream, self.pending = pipe, stream, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            _send(self.pipe, self.stream, line)
        return len(text)


def work(setup: Setup, data: Mnist, pipe) -> None:
    """A worker process: train the jobs the parent sends on ``pipe`` until it sends None."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt_once)
    with contextlib.suppress(KeyboardInterrupt):  # between trainings: nothing to end, nothing to say
        sys.stdout, sys.stderr = _Lines(pipe, "out"), _Lines(pipe, "err")
        os.environ.clear()
        os.environ.update(setup.environ)
        for name, level in setup.log_levels.items():
            logging.getLogger(name).setLevel(level)
        threads.use(setup.threads)
        mlflow.set_tracking_uri(setup.tracking_uri)
        mlflow.set_experiment(experiment_id=setup.experiment_id)  # a worker's is always known
        _send(pipe, "done", None)  # ready for a first job
        while (job := pipe.recv()) is not None:
            try:
                run_id = setup.train(job, data)
            except BaseException as err:
                if not isinstance(err, (KeyboardInterrupt, UserError)):
                    traceback.print_exc()  # where it failed; the parent raises it again
                _send(pipe, "failed", _portable(err))
                return
            _send(pipe, "done", run_id)


def _interrupt_once(signum, frame) -> None:
    """The first SIGINT or SIGTERM ends the run KILLED; later ones (the parent passing on the
    same Ctrl-C) must not cut that short."""
    for other in (signal.SIGINT, signal.SIGTERM):
        signal.signal(other, lambda *_: None)  # not SIG_IGN: Python raises on a signal already on its way
    interrupts.handler(signum, frame)


def _portable(err: BaseException) -> BaseException:
    """``err`` if it crosses to the parent intact, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")
