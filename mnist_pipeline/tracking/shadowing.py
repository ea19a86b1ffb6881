"""What `serve` sees live: the champion's answers, the challenger scoring a share of the same
requests in the shadow, and true labels sent back, counted in windows (core/live.py).

The champion's answer never waits for the challenger, and the challenger takes as little of
the CPU from it as it can: the request hands its images to a bounded queue and goes; one thread
takes them to the challenger, the requests waiting together or arriving within SHADOW_LINGER
(up to SHADOW_BATCH images in one call: a call costs about as much for one image as for dozens,
so fewer calls cost the CPU less), each call made only at a moment when no champion request is
under way (champion_working), in a thread of the lowest CPU priority, with the shadow's timeout.
A batched call's time says nothing of how long one request would take the challenger, so
every TIMED_EVERY seconds one request is scored alone, at the champion's CPU priority, and
timed: those requests make the challenger's latency figures, as every request makes the
champion's. A full queue drops the request from the shadow (counted). A challenger that
raises, answers late or answers anything but 10 finite probabilities a row counts as an error
for each request of the call; nothing else happens. A challenger stuck in a call holds the
shadow thread only: later requests wait in the queue, then are dropped, while the champion
answers them.

The last KEPT_REQUESTS requests are kept (each model's classes) for labels sent back by
POST /feedback; an older request id is unknown. Labels that arrive before the challenger has
scored their request are kept with it and paired when it does.
"""

import collections
import contextlib
import math
import os
import queue
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from mnist_pipeline.core import live

QUEUE_REQUESTS = 256  # requests waiting for the challenger; more are dropped from the shadow
SHADOW_BATCH = 64  # images at most in one call of the challenger
SHADOW_LINGER = 0.25  # seconds a call waits for more requests to go with the first
TIMED_EVERY = 0.25  # seconds between requests scored alone, whose compute time is the challenger's latency
_STOP = object()  # the shadow thread's last item
KEPT_REQUESTS = 10_000  # requests whose answers are kept for feedback (a few bytes an image)


@dataclass
class Answered:
    """A request kept for feedback: each model's classes (the challenger's once it scored it),
    and its true labels once sent."""

    champion: np.ndarray
    challenger: np.ndarray | None = None
    labels: np.ndarray | None = None


def _yield_cpu() -> None:
    """Lowest CPU priority for this thread (Linux: a thread's own nice value), so that when the
    champion and the challenger both want a core, the champion gets it."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the same priority as the rest
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _timed(predict, images):
    """``predict(images)`` and its seconds, as the champion's are timed (serving_model.Served.answer)."""
    start = time.perf_counter()
    answer = predict(images)
    return answer, time.perf_counter() - start


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
        # the challenger's calls, waited on with a timeout: batches in a thread the OS runs after
        # the others; the requests timed alone at the priority the champion has, to be comparable
        self._calls = ThreadPoolExecutor(1, "challenger", initializer=_yield_cpu)
        self._timed_calls = ThreadPoolExecutor(1, "challenger-timed")
        self._stop = threading.Event()
        self._idle, self._working = threading.Condition(), 0  # champion requests being answered
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

    @contextlib.contextmanager
    def champion_working(self):
        """Around the champion's work on a request: the challenger is called only when none is
        under way, so that it takes the CPU from no answer."""
        with self._idle:
            self._working += 1
        try:
            yield
        finally:
            with self._idle:
                self._working -= 1
                if not self._working:
                    self._idle.notify_all()

    def _work(self) -> None:
        held = None  # an item taken from the queue that did not fit the last batch
        timed_at = -math.inf  # when the last request was timed alone
        while (first := self._queue.get() if held is None else held) is not _STOP:
            alone = time.monotonic() - timed_at >= TIMED_EVERY  # a request scored and timed on its own
            batch, held = ([first], None) if alone else self._batch(first)
            timed_at = time.monotonic() if alone else timed_at
            with self._idle:  # an idle moment (stop: the queue is emptied)
                self._idle.wait_for(lambda: not self._working or self._stop.is_set())
            images, seconds = [item[1] for item in batch], None
            try:
                call = images[0] if len(batch) == 1 else np.concatenate(images)
                calls = self._timed_calls if alone else self._calls
                answer, spent = calls.submit(_timed, batch[0][3].model.predict, call).result(self.timeout)
                parts = np.split(np.asarray(answer), np.cumsum([len(i) for i in images[:-1]]))
                seconds = spent if alone else None
            except Exception:  # raised, too late (TimeoutError), or not one row an image: the challenger's error
                parts = [None] * len(batch)
            with self._lock:
                for (request_id, _, classes, _), probabilities in zip(batch, parts, strict=True):
                    theirs = self.window.shadow(classes, probabilities, seconds)
                    if theirs is not None and (kept := self._kept.get(request_id)) is not None:
                        kept.challenger = theirs.astype(np.uint8)
                        if kept.labels is not None:  # labelled before the challenger scored it
                            self.window.pair(kept.labels, kept.champion, kept.challenger)

    def _batch(self, first) -> tuple[list, object]:
        """``first`` and the requests queued behind it, or arriving within SHADOW_LINGER seconds,
        for the same challenger, up to SHADOW_BATCH images of one shape in all; and the item taken
        that does not fit (None: none)."""
        batch, images, deadline = [first], len(first[1]), time.monotonic() + SHADOW_LINGER
        while isinstance(first[1], np.ndarray) and images < SHADOW_BATCH:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            same = item is not _STOP and item[3] is first[3] and isinstance(item[1], np.ndarray)
            if not (same and item[1].shape[1:] == first[1].shape[1:] and images + len(item[1]) <= SHADOW_BATCH):
                return batch, item
            batch.append(item)
            images += len(item[1])
        return batch, None

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
            if answered.labels is not None:
                return 409, "that request is labelled already"
            answered.labels = np.asarray(labels, np.uint8)
            self.window.label(answered.labels, answered.champion, answered.challenger)
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

    def state(self, reference: np.ndarray | None = None) -> dict:
        """What GET /model adds: the shadow's settings, the current window's and the total's
        figures (with the psi against ``reference``, the champion's validation classes)."""
        with self._lock:
            window, total = self.window + live.Window(), self.total + self.window
        return {
            "shadow_fraction": self.fraction,
            "shadow_timeout_seconds": self.timeout,
            "queued": self._queue.qsize(),
            "windows_closed": self.windows,
            "window": window.figures(reference),
            "total": total.figures(reference),
        }

    def stop(self) -> tuple[int, live.Window]:
        """The threads ended; a challenger call still running is left to end on its own. The
        last window's number and the window, closed, back."""
        self._stop.set()
        with self._idle:
            self._idle.notify_all()
        with contextlib.suppress(queue.Empty):
            while True:  # what waits is not shadowed: the server is going
                self._queue.get_nowait()
        self._queue.put(_STOP)
        for thread in self._threads:
            thread.join(timeout=self.timeout + 1)
        for calls in (self._calls, self._timed_calls):
            calls.shutdown(wait=False, cancel_futures=True)
        last = self.close_window()
        return self.windows, last
