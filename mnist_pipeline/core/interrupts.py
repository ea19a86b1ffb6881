"""SIGINT and SIGTERM as KeyboardInterrupt, but never in the middle of a write to the
tracking store. An interrupt raised inside a database transaction leaves it open, holding
the store's lock: the run could then not be ended KILLED (SQLite waits on its own lock). So
code that writes wraps the write in ``deferred()``, and a signal that arrives there is raised
as soon as the write is done. TensorFlow's compiled epoch cannot be interrupted anyway: the
signal is raised when it returns."""

import signal
from collections.abc import Iterator
from contextlib import contextmanager

_state = {"depth": 0, "pending": None}


def handler(signum, frame) -> None:
    """The signal handler the CLI installs for SIGINT and SIGTERM."""
    name = signal.Signals(signum).name
    if _state["depth"]:
        _state["pending"] = name
        return
    raise KeyboardInterrupt(name)


@contextmanager
def deferred() -> Iterator[None]:
    """A block that a SIGINT or SIGTERM does not cut: the signal is raised at its end."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if not _state["depth"] and _state["pending"]:
            pending, _state["pending"] = _state["pending"], None
            raise KeyboardInterrupt(pending)
