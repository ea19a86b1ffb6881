"""The epoch logger: each epoch's metrics reach the store as the epoch ends, and survive
a tracking server that goes away for a while."""

import contextlib
import sys
import time

import mlflow
import pandas as pd
from mlflow.entities import Metric, RunTag

from mnist_pipeline.core import interrupts
from mnist_pipeline.core.secrets import mask_url
from mnist_pipeline.tracking import liveness
from mnist_pipeline.tracking.store import TrackingStoreError, log_batch_once, retry_seconds


class EpochLogger:
    """Logs each epoch's metrics (step = epoch) as it ends. If the tracking server stops
    answering, training goes on: the metrics are kept, with the time they were measured,
    and sent when it answers again. ``flush(final=True)`` at the end waits up to
    FINAL_WAIT_SECONDS for the server, then raises."""

    FINAL_WAIT_SECONDS = 120.0
    BATCH = 1000  # metrics and tags per request: MLflow's log_batch limit

    PARENT_BEAT_SECONDS = 60.0  # the enclosing run's heartbeat, at most this often

    def __init__(self, run_id: str, parent_id: str | None = None):
        self.run_id, self.parent_id = run_id, parent_id
        self.retry_seconds = retry_seconds()  # checked before any run (store.check_tracking_store)
        self._parent_beat_at = 0.0
        self.finished: dict[int, dict[str, float]] = {}  # epoch -> metrics, for the history
        self.seconds = 0.0  # spent logging inside the epochs: what tracking costs training
        self._pending: list[Metric] = []
        self._retry_at = 0.0  # monotonic time of the next attempt while the server is away
        self._sent_while_away = 0

    def history(self) -> pd.DataFrame:
        """The finished epochs as a history table (index "epoch"), as train() returns it."""
        return pd.DataFrame.from_dict(self.finished, orient="index").rename_axis("epoch")

    def __call__(self, epoch: int, row: dict[str, float]) -> None:
        start = time.perf_counter()
        self.finished[epoch] = row
        now = int(time.time() * 1000)
        self._pending += [Metric(name, value, now, epoch) for name, value in row.items()]
        if time.monotonic() >= self._retry_at:
            self.flush()
        self.seconds += time.perf_counter() - start

    def flush(self, final: bool = False) -> None:
        give_up_at = time.monotonic() + self.FINAL_WAIT_SECONDS
        self._send()
        while final and self._pending:
            if time.monotonic() > give_up_at:
                raise TrackingStoreError(
                    f"tracking server {mask_url(mlflow.get_tracking_uri())} did not answer for "
                    f"{self.FINAL_WAIT_SECONDS:.0f} s after training: metrics of "
                    f"{len({m.step for m in self._pending})} epochs could not be logged"
                )
            time.sleep(self.retry_seconds)
            self._send()

    def _send(self) -> None:
        if not self._pending:
            return
        try:
            # one attempt, no retry (store.ONE_SHOT): a server that is away must not stall training for seconds
            with interrupts.deferred():  # a Ctrl-C must not cut a transaction
                beat = [RunTag(k, v) for k, v in liveness.heartbeat().items()]
                if self.parent_id and time.monotonic() >= self._parent_beat_at:
                    self._parent_beat_at = time.monotonic() + self.PARENT_BEAT_SECONDS
                    with contextlib.suppress(Exception):  # the parent's liveness never holds up the epochs'
                        log_batch_once(self.parent_id, [], beat)
                while self._pending:
                    size = self.BATCH - len(beat)  # the tags count towards MLflow's limit
                    log_batch_once(self.run_id, self._pending[:size], beat)
                    beat, sent, self._pending = [], self._pending[:size], self._pending[size:]
                    self._sent_while_away += len({m.step for m in sent}) if self._retry_at else 0
        except Exception as err:  # the server's errors reach us in many types
            if not self._retry_at:
                print(
                    f"warning: tracking server {mask_url(mlflow.get_tracking_uri())} did not take the metrics "
                    f"of epoch {self._pending[-1].step} ({type(err).__name__}); training goes on and "
                    "they are sent when it answers again",
                    file=sys.stderr,
                )
            self._retry_at = time.monotonic() + self.retry_seconds
            return
        if self._retry_at:
            print(
                f"tracking server answers again: sent the metrics of {self._sent_while_away} kept epochs",
                file=sys.stderr,
            )
        self._retry_at, self._sent_while_away = 0.0, 0
