"""Serving that follows a registered model's alias (``models:/NAME@ALIAS``).

Every ``refresh_seconds`` a background thread reads the alias. When it points at another
version, that version is loaded beside the serving one, warmed and checked
(tracking/serving_model.py), then swapped in by one assignment of ``current``: a request reads
``current`` once and finishes on the model it started with. A version that fails to load or
fails its check is refused and not tried again until the alias moves. At most two models are
held by a follower: before the next load it waits until the model it swapped out is released by
its last request. `serve` runs one follower for the champion and, to shadow it, one for the
challenger, which may hold nothing yet (``current`` None until the alias names a version).

One log line per event (loaded, refused, store gone, store back, alias deleted, alias back),
never one per poll.
"""

import gc
import logging
import threading
import time
import weakref

import mlflow
import requests
from mlflow.exceptions import MlflowException

from mnist_pipeline import names
from mnist_pipeline.core import secrets
from mnist_pipeline.core.errors import first_line
from mnist_pipeline.tracking import serving_model

LOG = logging.getLogger("mnist_pipeline.serve")
RELEASE_SECONDS = 120  # longest wait for the swapped-out model's last request (MLflow's request timeout: 60 s)
_GONE = (400, 404)  # the store's answer for an alias or model that does not exist


class Follower:
    """Holds the version that serves (``current``) and, if ``refresh_seconds`` > 0 and the
    target has an alias, moves it to wherever the alias points, from a thread of its own."""

    def __init__(self, model_uri: str, first: serving_model.Served | None, refresh_seconds: float, client=None):
        self.uri, self.target, self.current = model_uri, serving_model.target_of(model_uri), first
        self.refresh_seconds = refresh_seconds
        self.following = self.target.alias is not None and refresh_seconds > 0
        self.client = client or mlflow.MlflowClient()
        self.refused: dict | None = None  # the version the alias points at and why it does not serve
        self.alias_version: str | None = first and first.version
        self._swapped_out = lambda: None  # a weak reference to the version this follower swapped out
        self.alias_reads = 0  # how many times the alias was read: the follower is alive while it grows
        self._store_problem: str | None = None  # why the store cannot be read, while it cannot
        self._retrying: str | None = None  # a version whose download the store failed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alias-follower", daemon=True)

    def start(self) -> None:
        if self.following:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=RELEASE_SECONDS)

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            try:
                self.poll()
            except Exception as err:  # the thread must outlive any surprise; the server keeps serving
                LOG.error(
                    "following %s failed this round (%s); still serving %s", self._alias(), why(err), self.describe()
                )

    def poll(self) -> None:
        """One round: read the alias, and load, check and swap in the version it names."""
        version = self._read_alias()
        if version is None or version == self.alias_version:
            return
        self.alias_version = version
        if self.current is None or version != self.current.version:
            return self._swap_to(version)
        LOG.info("%s is back at %s, which serves", self._alias(), self.describe())
        self.refused = None

    def _read_alias(self) -> str | None:
        """The version the alias names; None if it cannot be read now or was deleted (each
        logged once, when it happens)."""
        try:
            version = str(self.client.get_model_version_by_alias(self.target.name, self.target.alias).version)
        except Exception as err:  # the alias deleted, or the store's connection, driver or database failed
            if isinstance(err, MlflowException) and err.get_http_status_code() in _GONE:
                if self.alias_version is not None:
                    LOG.warning("%s was deleted (%s); still serving %s", self._alias(), why(err), self.describe())
                self.alias_version = None
                return self._store_is(None)
            return self._store_is(why(err)[:300])
        self._store_is(None)
        self.alias_reads += 1
        return version

    def _store_is(self, problem: str | None) -> None:
        """Notes why the store cannot be read (``problem``), or that it can: one line when it
        goes, one when it comes back."""
        if problem and self._store_problem is None:
            LOG.warning("tracking store cannot be read (%s); still serving %s", problem, self.describe())
        elif problem is None and self._store_problem is not None:
            LOG.info("tracking store can be read again; serving %s", self.describe())
        self._store_problem = problem

    def _swap_to(self, version: str) -> None:
        self._wait_released()
        if self._retrying != version:
            LOG.info("%s moved to version %s: loading it while %s serves", self._alias(), version, self.describe())
        start = time.monotonic()
        try:
            candidate = serving_model.load(f"models:/{self.target.name}/{version}", version, self.current)
        except serving_model.Refused as err:
            return self._refuse(version, why(err))
        except Exception as err:  # the artifacts could not be had: a bad version, or the store failed
            if _transient(err) or self._read_alias() != version:  # the store's fault, or the alias moved
                return self._retry(version, err)
            return self._refuse(version, f"cannot be downloaded: {why(err)}")
        self._retrying = None
        was = f"version {self.current.version}" if self.current else "no version"
        self._swapped_out = weakref.ref(self.current) if self.current else lambda: None
        self.current, self.refused = candidate, None
        LOG.info("serving %s (was %s), loaded and checked in %.1f s", self.describe(), was, time.monotonic() - start)
        self._wait_released()
        # A Keras model and its compiled function refer to each other, so freeing a version leaves
        # its model to the garbage collector, which may not run for a long time.
        gc.collect()

    def _retry(self, version: str, err: Exception) -> None:
        """The store failed while ``version`` was downloaded: the next round tries it again
        (said once per version, not once per round)."""
        if self._retrying != version:
            LOG.warning("version %s could not be downloaded (%s); trying again at the next read", version, why(err))
            self._retrying = version
        self.alias_version = self.current and self.current.version  # so that the next round loads it again

    def _refuse(self, version: str, reason: str) -> None:
        """``reason``: one line, with secrets masked (why)."""
        self._retrying = None
        self.refused = {"version": version, "reason": reason, "at": serving_model.now()}
        LOG.warning(
            "refused version %s of %s: %s; still serving %s", version, self.target.name, reason, self.describe()
        )

    def _wait_released(self) -> None:
        """Until the version this follower swapped out is released (its last request done), so
        that it holds at most two; one still held after RELEASE_SECONDS is reported and passed.
        Each look after the first follows a garbage collection (_swap_to says why)."""
        deadline, pause = time.monotonic() + RELEASE_SECONDS, 0.01
        while self._swapped_out() is not None and not self._stop.wait(pause):
            if time.monotonic() > deadline:
                LOG.warning("the version swapped out is still held after %d s", RELEASE_SECONDS)
                break
            pause = min(2 * pause, 1.0)  # requests take milliseconds; a stuck one is not polled hard
            gc.collect()

    def state(self) -> dict:
        """What GET /model answers."""
        current = self.current
        return {
            "name": self.target.name,
            "alias": self.target.alias,
            "version": current and current.version,
            "run_id": current and current.run_id,
            "loaded_at": current and current.loaded_at,
            "refused": self.refused,
            "uri": self.uri,
            "following": self.following,
            "refresh_seconds": self.refresh_seconds,
            "alias_version": self.alias_version,
            "alias_reads": self.alias_reads,
            "store_problem": self._store_problem,
            "models_held": len(serving_model.LIVE),
        }

    def shadowed(self) -> serving_model.Served | None:
        """The version the alias names now, if it is the one held (None: none, or the alias was
        deleted, or the version it names is not loaded)."""
        current = self.current
        return current if current is not None and current.version == self.alias_version else None

    def _alias(self) -> str:
        return f"alias {self.target.alias} of {self.target.name}"

    def describe(self) -> str:
        """Who serves, for a log line."""
        shadowed = " (shadowed)" if self.target.alias == names.CHALLENGER else ""
        if self.current is None:
            return f"no version of {self.target.name} yet{shadowed}"
        return f"version {self.current.version} of {self.target.name}{shadowed}" if self.current.version else self.uri


def _transient(err: Exception) -> bool:
    """Whether a download failed for the store's sake (no connection, a timeout, a 5xx), not the
    version's (its files missing or unreadable)."""
    if isinstance(err, MlflowException):
        return err.get_http_status_code() >= 500
    return isinstance(err, ConnectionError | TimeoutError | requests.RequestException)


def why(err: Exception) -> str:
    """``err`` in one line, with any secret this process was given masked (a store's error can
    quote its URL)."""
    return secrets.redact(first_line(err)) or type(err).__name__
