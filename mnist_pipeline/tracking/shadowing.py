"""What `serve` sees live: the champion's answers, the challenger scoring a share of the same
requests in the shadow, and true labels sent back, counted in windows (core/live.py).

The champion's answer never waits for the challenger: the request hands its images to a
bounded queue and goes; one thread takes them to the challenger, one request at a time, each
with SHADOW_TIMEOUT seconds. A full queue drops the request from the shadow (counted). A
challenger that raises, answers late or answers anything but 10 finite probabilities a row
counts as an error; nothing else happens. A challenger stuck in a call holds the shadow thread
only: later requests wait in the queue, then are dropped, while the champion answers them.

The last KEPT_REQUESTS requests are kept (each model's classes) for labels sent back by
POST /feedback; an older request id is unknown.
"""

import collections
import contextlib
import queue
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from mnist_pipeline.core import live

QUEUE_REQUESTS = 256  # requests waiting for the challenger; more are dropped from the shadow
KEPT_REQUESTS = 10_000  # requests whose answers are kept for feedback (a few bytes an image)


@dataclass
class Answered:
    """A request kept for feedback: each model's classes (the challenger's once it scored it)."""

    champion: np.ndarray
    challenger: np.ndarray | None = None
    labelled: bool = False


class Shadow:
    """The live figures of one server: the current window and the closed ones' total, the
    shadow queue and its thread, the requests kept for feedback. ``challenger()`` gives the
    version to shadow now, or None."""

    def __init__(self, challenger, fraction: float, timeout: float, window_seconds: float, on_window=None):
        self.challenger, self.fraction, self.timeout = challenger, fraction, timeout
        self.window, self.total, self.windows = live.Window(), live.Window(), 0
        self._lock = threading.Lock()  # the windows and the kept requests
        self._queue = queue.Queue(QUEUE_REQUESTS)
        self._kept: collections.OrderedDict[str, Answered] = collections.OrderedDict()
        self._calls = ThreadPoolExecutor(1, "challenger")  # the challenger's calls, waited on with a timeout
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name="shadow", daemon=True),
            threading.Thread(target=self._close_windows, args=(window_seconds, on_window), name="windows", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def answered(
        self, request_id: str, images: np.ndarray, probabilities: np.ndarray, seconds: float, champion
    ) -> None:
        """The champion (Served ``champion``) answered ``images`` with ``probabilities`` in
        ``seconds``: count it, keep it for feedback and, for a share of requests, queue the
        images for the challenger if it is another version."""
        with self._lock:
            classes = self.window.answer(probabilities, seconds)
            self._kept[request_id] = Answered(classes.astype(np.uint8))
            while len(self._kept) > KEPT_REQUESTS:
                self._kept.popitem(last=False)
        challenger = self.challenger()
        if challenger is None or challenger.version == champion.version or random.random() >= self.fraction:
            return
        try:
            self._queue.put_nowait((request_id, images, classes, challenger))
        except queue.Full:
            with self._lock:
                self.window.drop()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:  # None: stop
            request_id, images, classes, challenger = item
            start = time.perf_counter()
            try:
                probabilities = self._calls.submit(challenger.model.predict, images).result(self.timeout)
            except Exception:  # raised, or too late (TimeoutError): an error of the challenger
                probabilities = None
            seconds = time.perf_counter() - start
            with self._lock:
                theirs = self.window.shadow(classes, probabilities, seconds)
                if theirs is not None and request_id in self._kept:
                    self._kept[request_id].challenger = theirs.astype(np.uint8)

    def feedback(self, request_id, labels) -> tuple[int, str] | None:
        """Count true ``labels`` (one digit 0-9 an image) of a kept request; if not, the HTTP
        status and message that say why."""
        if type(request_id) is not str or type(labels) is not list:
            return 400, 'the body must be {"request_id": "<an answer\'s X-Request-Id>", "labels": [<digit>, ...]}'
        if not all(type(d) is int and 0 <= d <= 9 for d in labels):
            return 400, "labels must be digits 0-9, one for each image of the request"
        with self._lock:
            answered = self._kept.get(request_id)
            if answered is None:
                return 404, f"request_id {request_id[:64]!r} is unknown or expired (the last {KEPT_REQUESTS} are kept)"
            if len(labels) != len(answered.champion):
                return 400, f"that request had {len(answered.champion)} images, not {len(labels)}"
            if answered.labelled:
                return 409, "that request is labelled already"
            answered.labelled = True
            self.window.label(np.asarray(labels), answered.champion, answered.challenger)
        return None

    def _close_windows(self, seconds: float, on_window) -> None:
        """Every ``seconds``, close the window and hand it to ``on_window(number, window)``;
        when that returns True (a new pair of versions serves), the total starts again."""
        while not self._stop.wait(seconds):
            closed = self.close_window()
            if on_window is not None and on_window(self.windows, closed):
                self.restart()

    def restart(self) -> None:
        """The total and the window numbers start again (the closed windows' total: the current
        window goes on)."""
        with self._lock:
            self.total, self.windows = live.Window(), 0

    def close_window(self) -> live.Window:
        """The current window, closed: added to the total, a new one begun."""
        with self._lock:
            closed, self.window = self.window, live.Window()
            self.total, self.windows = self.total + closed, self.windows + 1
        return closed

    def state(self) -> dict:
        """What GET /model adds: the shadow's settings, the current window's and the total's figures."""
        with self._lock:
            window, total = self.window + live.Window(), self.total + self.window
        return {
            "shadow_fraction": self.fraction,
            "shadow_timeout_seconds": self.timeout,
            "queued": self._queue.qsize(),
            "windows_closed": self.windows,
            "window": window.figures(),
            "total": total.figures(),
        }

    def stop(self) -> tuple[int, live.Window]:
        """The threads ended; a challenger call still running is left to end on its own. The
        last window's number and the window, closed, back."""
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:  # what waits is not shadowed: the server is going
                self._queue.get_nowait()
        self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=self.timeout + 1)
        self._calls.shutdown(wait=False, cancel_futures=True)
        last = self.close_window()
        return self.windows, last
