"""A training worker that dies at the worst moment: in the middle of a message to its parent,
holding its channel's lock, killed hard (SIGKILL). `python -m helpers.dying <mnist-pipeline
arguments>` runs the CLI with such workers (tests/flows/test_interrupt.py)."""

from __future__ import annotations

import os
import signal
import struct
from pathlib import Path

from mnist_pipeline.tracking import training_worker

DIES_AT = "DYING_WORKER_LINE"  # the worker that prints a line starting with this dies there
DIED = "DYING_WORKER_MARK"  # a file it creates first, to tell the test when


class _Pipe:
    """The worker's pipe to its parent, which cuts the trigger line's message short and dies."""

    def __init__(self, pipe):
        self.pipe = pipe

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def send(self, report) -> None:
        kind, line = report
        if kind == "out" and line.startswith(os.environ[DIES_AT]):
            Path(os.environ[DIED]).write_text(str(os.getpid()))
            os.write(self.pipe.fileno(), struct.pack("!i", 4096) + b"cut short")  # 4,096 bytes announced
            os.kill(os.getpid(), signal.SIGKILL)
        self.pipe.send(report)


def work(setup, data, pipe) -> None:
    training_worker.work(setup, data, _Pipe(pipe))


if __name__ == "__main__":
    from helpers import dying  # by its name, not __main__: the workers import it to unpickle their target
    from mnist_pipeline import cli

    training_worker.work = dying.work
    cli.main()
