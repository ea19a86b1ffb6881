"""Runs whose process died. Every run the pipeline opens records its host, process id and
the process's start time, and the user who started it (``tags()``); a training run's heartbeat
tag moves at each epoch (with the epoch's metrics, in the same request). A process killed hard
(SIGKILL, out of memory, a machine lost) cannot end its runs, so each training command first
ends as KILLED (``end_dead_runs``), in the experiment its runs go to, the RUNNING runs of this
pipeline that this user started and that are dead:

- on this host, when their process is gone (no process with that id, or one started at
  another time: the id was reused);
- on another host, when their heartbeat is older than STALE_SECONDS.

Another user's dead run there is named and left to its user (on a team server this user may
not end it, and it is not this user's to judge). The finished epochs keep their metrics:
ending a run changes only its status and end time.
"""

import getpass
import socket
import sys
import time

import mlflow
import psutil
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_USER

from mnist_pipeline import names
from mnist_pipeline.core.errors import first_line
from mnist_pipeline.core.secrets import redact
from mnist_pipeline.tracking import access, store

# A run on another host with no heartbeat for this long is taken for dead. Heartbeats come at
# the run's start and every epoch: the longest gap in this pipeline is one epoch (a convnet
# epoch is 15-40 s here) or the logging after the last one (seconds). A run whose epochs take
# longer than this on a slow machine would be ended by a check from another host.
STALE_SECONDS = 30 * 60
_SAME_START = 1.0  # seconds: psutil's create_time of one process, read twice, agrees this well


def tags() -> dict[str, str]:
    """The tags that tie a new run to this process and its user, and its first heartbeat."""
    me = psutil.Process()
    return {
        names.TAG_HOST: socket.gethostname(),
        names.TAG_PID: str(me.pid),
        names.TAG_PROCESS_START: f"{me.create_time():.3f}",
        MLFLOW_USER: user(),
        **heartbeat(),
    }


def user() -> str:
    """Who starts this process's runs: the store's user (a password in the URI's user-info
    too, which MLflow's own tag misses), else the login name, as MLflow tags runs."""
    return store.user() or getpass.getuser()


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
    """Why ``run`` (RUNNING) is taken for dead; None if it may live, or if it is not tagged as
    this pipeline tags its runs (not ours to judge)."""
    t = run.data.tags
    try:
        if t[names.TAG_HOST] == host:
            alive = alive_here(int(t[names.TAG_PID]), float(t[names.TAG_PROCESS_START]))
            return None if alive else f"its process {t[names.TAG_PID]} on this host is gone"
        silent = (now_ms - _last_heartbeat(run)) / 1000
    except (KeyError, ValueError):
        return None
    if silent <= STALE_SECONDS:
        return None
    return f"no heartbeat from {t[names.TAG_HOST]} for {silent / 60:.0f} min (more than {STALE_SECONDS // 60})"


def end_dead_runs(command: str, experiment_id: str | None = None) -> list[str]:
    """End as KILLED the dead RUNNING runs of this pipeline that this user started in the
    experiment ``command``'s runs go to (``experiment_id``, else access.experiment's), saying
    so in one line each; returns their ids. Other users' dead runs there are named in one
    line and left alone; an end the server refuses is one line too."""
    experiment_id, label = access.experiment(command, experiment_id)  # AccessError: it may not read it
    if experiment_id is None:  # not made yet: no run in it
        return []
    # a server with authentication leaves out the runs this user may not read
    filter_string = f"attributes.status = 'RUNNING' and tags.{names.TAG_PROCESS_START} LIKE '%'"
    running = mlflow.search_runs([experiment_id], filter_string, output_format="list")
    host, now, me = socket.gethostname(), int(time.time() * 1000), user()
    dead = [(run, reason) for run in running if (reason := why_dead(run, host, now))]
    theirs = [f"{run.info.run_id} ({run.info.run_name}, {_owner(run)})" for run, _ in dead if _owner(run) != me]
    if theirs:
        where = f"{label} (id {experiment_id})".strip()
        print(f"dead runs of other users in experiment {where}, left RUNNING for them: {', '.join(theirs)}")
    return [run.info.run_id for run, reason in dead if _owner(run) == me and _end(run, reason)]


def _owner(run) -> str:
    return run.data.tags.get(MLFLOW_USER) or run.info.user_id


def _end(run, reason: str) -> bool:
    """End ``run`` KILLED at its last heartbeat, its epochs (a serving run: its windows) kept;
    whether the server let it."""
    client, run_id = mlflow.MlflowClient(), run.info.run_id
    was = f"run {run_id} ({run.info.run_name}) was RUNNING, {reason}"
    serving = run.data.tags.get(names.TAG_ROLE) == names.ROLE_SERVE
    metric, unit = ("requests", "windows") if serving else ("val_accuracy", "epochs")
    try:
        kept = len(client.get_metric_history(run_id, metric))
        client.set_terminated(run_id, "KILLED", end_time=_last_heartbeat(run))
    except MlflowException as err:
        if not access.is_refusal(err):
            raise
        refusal = redact(first_line(err))[:160]
        print(f"note: {was}: user {user()} may not end it, left RUNNING ({refusal})", file=sys.stderr)
        return False
    print(f"{was}: ended KILLED, {kept} {unit} kept")
    return True


def _last_heartbeat(run) -> int:
    """When ``run`` was last heard of (ms): its heartbeat, else its start."""
    return int(run.data.tags.get(names.TAG_HEARTBEAT, run.info.start_time))
