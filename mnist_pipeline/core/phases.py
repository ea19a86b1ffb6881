"""Wall seconds of a command's phases, for the run's ``phases.json`` and the benchmark."""

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Phases:
    """``with phases("name"): ...`` adds the block's wall seconds to ``seconds["name"]``;
    ``total()`` is the wall seconds since ``origin`` (a ``time.time()``; default: now)."""

    def __init__(self, origin: float | None = None):
        self.seconds: dict[str, float] = {}
        self.origin = time.time() if origin is None else origin

    def total(self) -> float:
        return time.time() - self.origin

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
