"""What `serve` saw, into MLflow, aggregated: one serving run per pair of versions served
(champion, challenger or none), a window's figures as metrics at step = its number, the pair's
cumulative tables (core/live.py) as artifacts rewritten as windows close.

The pair is read as each window closes: the window goes to the run of the pair it began with,
and a new pair starts a new run (the old one ends FINISHED) whose windows count from 1 again.
Nothing here runs on a request's path: the windows thread hands each closed window to a
buffer, and a sender thread of its own writes them. While the store does not take them they
wait, in order, up to BUFFER_WINDOWS (the oldest are dropped past that, and counted); one line
when the store goes, one when it is back. The run carries liveness tags (tracking/liveness.py)
and its heartbeat moves with each window, so a later `serve` ends it KILLED only if this
process died. A user who may not create runs in the experiment serves as usual: one line, and
the figures stay in GET /model only.
"""

import collections
import io
import threading
import time
from dataclasses import dataclass

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from mnist_pipeline import names
from mnist_pipeline.core import live
from mnist_pipeline.tracking import access, follower, liveness, store

BUFFER_WINDOWS = 240  # windows kept while the store is away: 4 hours of 60 s windows; 4 kB each (it, and the total)
LOG = follower.LOG  # the server's one line per event


@dataclass(frozen=True)
class Closed:
    """A window to send: its pair, its number (None: the pair just began), when it closed (ms),
    its figures, the pair's total up to it, and the champion's validation classes (the psi's reference)."""

    pair: tuple[str | None, str | None]
    number: int | None = None
    at_ms: int = 0
    window: live.Window | None = None
    total: live.Window | None = None
    reference: object = None


class ServingRuns:
    """The serving runs of one server for ``model`` in ``experiment``; ``pair()`` names the
    versions (champion, challenger or None) serving now, ``reference()`` the champion's classes
    on its validation split (or None). ``on_window`` is the Shadow's receiver."""

    def __init__(
        self, model: str, experiment: str, pair, fraction: float, window_seconds: float, reference=None, client=None
    ):
        self.model, self.experiment, self.pair = model, experiment, pair
        self.reference = reference or (lambda: None)
        self.settings = {"shadow_fraction": str(fraction), "window_seconds": str(window_seconds)}
        self.client = client or mlflow.MlflowClient()
        self.run_id: str | None = None  # the run of the pair being sent
        self.refused: str | None = None  # why figures are not recorded, once refused
        self.dropped, self._dropped_away = 0, 0  # windows dropped: ever, and since the store went
        self._problem: str | None = None  # why the store does not take them, while it does not
        self._begun, self._fresh = None, False  # the pair of run_id; params and tags still to write
        self._current, self._total, self._reference = pair(), live.Window(), self.reference()
        self._buffer: collections.deque[Closed] = collections.deque()
        self._wake, self._stop = threading.Condition(), False
        self._put(Closed(self._current))  # the first run starts now, with the server
        self._thread = threading.Thread(target=self._send_all, name="serving-runs", daemon=True)
        self._thread.start()

    def on_window(self, number: int, window: live.Window) -> bool:
        """Window ``number`` closed: buffer it for the run of the pair it began with; whether
        a new pair begins now (the Shadow then starts its totals again)."""
        self._total = self._total + window
        self._put(Closed(self._current, number, int(time.time() * 1000), window, self._total, self._reference))
        now = self.pair()
        if now == self._current:
            return False
        self._current, self._total, self._reference = now, live.Window(), self.reference()
        self._put(Closed(now))
        return True

    def _put(self, closed: Closed) -> None:
        with self._wake:
            if self.refused:
                return
            if len(self._buffer) >= BUFFER_WINDOWS:  # the oldest goes: the store has been away for hours
                lost = self._buffer.popleft().window is not None  # a pair's start is no window
                self.dropped, self._dropped_away = self.dropped + lost, self._dropped_away + lost
            self._buffer.append(closed)
            self._wake.notify()

    def close(self, number: int | None = None, window: live.Window | None = None, seconds: float = 10.0) -> None:
        """Serve stops: the last window (``number``, ``window``) sent with the rest, if the store
        takes them within ``seconds``, and the run ended FINISHED."""
        if window is not None:
            self._total = self._total + window
            self._put(Closed(self._current, number, int(time.time() * 1000), window, self._total, self._reference))
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(seconds)

    def state(self) -> dict:
        """What GET /model adds about the serving runs."""
        return {
            "serving_experiment": self.experiment,
            "serving_run": self.run_id,
            "figures_recorded": self.refused is None,
            "windows_waiting": len(self._buffer),
            "windows_dropped": self.dropped,
        }

    def _send_all(self) -> None:
        """The sender: the buffer in order; after a failure, again every store.retry_seconds()
        (once more only when serve stops); at the end the run ended FINISHED."""
        while True:
            with self._wake:
                while not self._buffer and not self._stop:
                    self._wake.wait()
                if not self._buffer or self.refused:
                    break
                closed, last = self._buffer[0], len(self._buffer) == 1 or self._buffer[1].pair != self._buffer[0].pair
            if self._send(closed, last):
                with self._wake:
                    if self._buffer and self._buffer[0] is closed:  # not dropped meanwhile
                        self._buffer.popleft()
            elif self._stop:
                break
            else:
                with self._wake:
                    self._wake.wait_for(lambda: self._stop, store.retry_seconds())
        self._finish()

    def _send(self, closed: Closed, last: bool) -> bool:
        """Write ``closed`` (its tables only if it is the ``last`` of its pair waiting); whether
        the store took it. Each step can be done again: a failure halfway is sent again whole."""
        try:
            if closed.pair != self._begun:
                self._begin(closed.pair)
            if self._fresh:
                self._describe(closed.pair)
            if closed.window is not None:
                if last:
                    for name, table in closed.total.tables().items():
                        self.client.log_text(self.run_id, table.to_csv(), names.SERVING_TABLES[name])
                metrics = [
                    Metric(k, v, closed.at_ms, closed.number)
                    for k, v in closed.window.figures(closed.reference).items()
                ]
                beat = [RunTag(k, v) for k, v in liveness.heartbeat().items()]
                store.log_batch_once(self.run_id, metrics, beat)
        except Exception as err:  # the store's errors come in many types
            return self._failed(err)
        if self._problem is not None:
            waiting = sum(kept.window is not None for kept in self._buffer)  # this one among them
            LOG.info(
                "tracking store takes the serving figures again: %d windows kept are sent in order, %d were dropped",
                waiting,
                self._dropped_away,
            )
            self._problem, self._dropped_away = None, 0
        return True

    def _failed(self, err: Exception) -> bool:
        """The store did not take a window: one line when it goes; a refusal stops the recording."""
        why = follower.why(err)[:300]
        if isinstance(err, access.AccessError) or access.is_refusal(err):
            with self._wake:
                self.refused = why
                self._buffer.clear()
            LOG.warning("serving figures are not recorded in MLflow, only in GET /model: %s", why)
        elif self._problem is None:
            LOG.warning(
                "tracking store does not take the serving figures (%s); serving goes on, up to %d windows wait",
                why,
                BUFFER_WINDOWS,
            )
            self._problem = why
        return False

    def _begin(self, pair) -> None:
        """The run of ``pair``, started (the one before it ended FINISHED)."""
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FINISHED")
            self.run_id = None
        experiment_id = self._experiment_id()
        if refused := access.runs_refusal("serve", experiment_id):
            raise access.AccessError(refused)
        if self._begun is None:  # this server's first run: those of serves that died end KILLED
            liveness.end_dead_runs("serve", experiment_id)
        name = f"serve v{pair[0]}" + (f" vs v{pair[1]}" if pair[1] else "")
        tags = {**liveness.tags(), names.TAG_ROLE: names.ROLE_SERVE}
        self.run_id = self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        self._begun, self._fresh = pair, True

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.experiment)
        except Exception as err:
            if not store.lost_race(err):  # another server made it first
                raise
            return self.client.get_experiment_by_name(self.experiment).experiment_id

    def _describe(self, pair) -> None:
        """The new run's params, and the versions tagged with it (refused, or no such version: one line)."""
        champion, challenger = pair
        params = {"model": self.model, "champion_version": champion, "challenger_version": challenger or "none"}
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in (params | self.settings).items()])
        for version in filter(None, pair):
            try:
                self.client.set_model_version_tag(self.model, version, names.TAG_SERVING_RUN, self.run_id)
            except MlflowException as err:  # refused, or no such version: said; the store failing: sent again
                if err.get_http_status_code() >= 500:
                    raise
                LOG.warning("version %s is not tagged with its serving run: %s", version, follower.why(err)[:200])
        self._fresh = False

    def _finish(self) -> None:
        """Serve stops: the run ended FINISHED; what could not be sent, said."""
        if self._buffer:
            LOG.warning(
                "%d windows of serving figures were not sent: the tracking store did not take them", len(self._buffer)
            )
        if self.run_id is None:
            return
        try:
            self.client.set_terminated(self.run_id, "FINISHED")
        except Exception as err:
            LOG.warning(
                "serving run %s could not be ended (%s): the next serve ends it KILLED", self.run_id, follower.why(err)
            )


def experiment_of(model: str, given: str = "") -> str:
    """The experiment of a model's serving runs: ``given``, else ``<model>-serving``."""
    return given or f"{model}-serving"


def pair_total(model: str, experiment: str, champion: str, challenger: str) -> tuple[live.Window, list[str]]:
    """What every serving run of ``model`` in ``experiment`` saw of the pair (``champion``,
    ``challenger``), summed from their tables (a run that has sent no window yet adds nothing);
    and those runs' ids."""
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    pair = {"model": model, "champion_version": champion, "challenger_version": challenger}
    query = " and ".join(
        [f"tags.{names.TAG_ROLE} = '{names.ROLE_SERVE}'"] + [f"params.{k} = '{v}'" for k, v in pair.items()]
    )
    runs = client.search_runs([found.experiment_id], query, max_results=50_000) if found else []
    total, ids = live.Window(), []
    for run in runs:
        try:
            texts = {
                n: mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/{p}") for n, p in names.SERVING_TABLES.items()
            }
        except (MlflowException, OSError):  # no window sent yet
            continue
        total = total + live.Window.from_tables({n: pd.read_csv(io.StringIO(t), index_col=0) for n, t in texts.items()})
        ids.append(run.info.run_id)
    return total, ids
