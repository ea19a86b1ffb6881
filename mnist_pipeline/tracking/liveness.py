"""Runs whose process died. Every run the pipeline opens records its host, process id and
the process's start time (``tags()``); a training run's heartbeat tag moves at each epoch
(with the epoch's metrics, in the same request). A process killed hard (SIGKILL, out of
memory, a machine lost) cannot end its runs, so each training command first ends as KILLED
(``end_dead_runs``):

- any RUNNING run of this pipeline on this host whose process is gone (no process with
  that id, or one started at another time: the id was reused);
- any RUNNING run of this pipeline on another host whose heartbeat is older than
  STALE_SECONDS.

The finished epochs keep their metrics: ending a run changes only its status and end time.
"""

from __future__ import annotations

import functools
import socket
import time

import mlflow
import psutil

from mnist_pipeline import names

# A run on another host with no heartbeat for this long is taken for dead. Heartbeats come at
# the run's start and every epoch: the longest gap in this pipeline is one epoch (a convnet
# epoch is 15-40 s here) or the logging after the last one (seconds). A run whose epochs take
# longer than this on a slow machine would be ended by a check from another host.
STALE_SECONDS = 30 * 60
_SAME_START = 1.0  # seconds: psutil's create_time of one process, read twice, agrees this well


@functools.cache
def _process() -> dict[str, str]:
    me = psutil.Process()
    return {
        names.TAG_HOST: socket.gethostname(),
        names.TAG_PID: str(me.pid),
        names.TAG_PROCESS_START: f"{me.create_time():.3f}",
    }


def tags() -> dict[str, str]:
    """The tags that tie a new run to this process, and its first heartbeat."""
    return {**_process(), **heartbeat()}


def heartbeat() -> dict[str, str]:
    return {names.TAG_HEARTBEAT: str(int(time.time() * 1000))}


def alive_here(pid: int, process_start: float) -> bool:
    """Whether the process ``pid`` that started at ``process_start`` still runs on this host."""
    try:
        return abs(psutil.Process(pid).create_time() - process_start) < _SAME_START
    except psutil.AccessDenied:  # it exists, and is someone else's
        return True
    except (psutil.NoSuchProcess, ValueError):
        return False


def why_dead(run, host: str, now_ms: int) -> str | None:
    """Why ``run`` (RUNNING, with this pipeline's tags) is taken for dead; None if it may live."""
    t = run.data.tags
    if t[names.TAG_HOST] == host:
        if alive_here(int(t[names.TAG_PID]), float(t[names.TAG_PROCESS_START])):
            return None
        return f"its process {t[names.TAG_PID]} on this host is gone"
    beat = int(t.get(names.TAG_HEARTBEAT, run.info.start_time))
    silent = (now_ms - beat) / 1000
    if silent <= STALE_SECONDS:
        return None
    return f"no heartbeat from {t[names.TAG_HOST]} for {silent / 60:.0f} min (more than {STALE_SECONDS // 60})"


def end_dead_runs() -> list[str]:
    """End as KILLED every RUNNING run of this pipeline whose process died, saying so in one
    line each; returns their ids."""
    running = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"attributes.status = 'RUNNING' and tags.{names.TAG_PROCESS_START} LIKE '%'",
        output_format="list",
    )
    client, host, now, ended = mlflow.MlflowClient(), socket.gethostname(), int(time.time() * 1000), []
    for run in running:
        try:
            reason = why_dead(run, host, now)
        except (KeyError, ValueError):  # not tagged as this pipeline tags its runs: not ours to judge
            continue
        if reason is None:
            continue
        epochs = len(client.get_metric_history(run.info.run_id, "val_accuracy"))
        beat = int(run.data.tags.get(names.TAG_HEARTBEAT, run.info.start_time))
        client.set_terminated(run.info.run_id, "KILLED", end_time=beat)
        print(f"run {run.info.run_id} ({run.info.run_name}) was RUNNING, {reason}: ended KILLED, {epochs} epochs kept")
        ended.append(run.info.run_id)
    return ended
