"""Which RUNNING runs are taken for dead: the process test on this host, the heartbeat test
on another. (The SIGKILL of a real training: tests/flows/test_interrupt.py.)"""

import socket
import time
from types import SimpleNamespace

import psutil

from mnist_pipeline import names
from mnist_pipeline.tracking import liveness


def _run(host: str, pid: int, process_start: float, heartbeat_ms: int):
    tags = {
        names.TAG_HOST: host,
        names.TAG_PID: str(pid),
        names.TAG_PROCESS_START: f"{process_start:.3f}",
        names.TAG_HEARTBEAT: str(heartbeat_ms),
    }
    return SimpleNamespace(data=SimpleNamespace(tags=tags), info=SimpleNamespace(start_time=heartbeat_ms))


def test_a_run_on_this_host_lives_while_its_process_does():
    me, here, now = psutil.Process(), socket.gethostname(), int(time.time() * 1000)
    assert liveness.why_dead(_run(here, me.pid, me.create_time(), now), here, now) is None
    old = now - 10 * liveness.STALE_SECONDS * 1000  # on this host the heartbeat does not matter
    assert liveness.why_dead(_run(here, me.pid, me.create_time(), old), here, now) is None
    reused = _run(here, me.pid, me.create_time() - 3600, now)  # the id now belongs to another process
    assert liveness.why_dead(reused, here, now) == f"its process {me.pid} on this host is gone"
    gone = max(psutil.pids()) + 1000
    assert liveness.why_dead(_run(here, gone, 0.0, now), here, now) == f"its process {gone} on this host is gone"


def test_a_run_on_another_host_lives_while_its_heartbeat_is_recent():
    now = int(time.time() * 1000)
    fresh = now - (liveness.STALE_SECONDS - 60) * 1000
    assert liveness.why_dead(_run("elsewhere", 1, 0.0, fresh), "here", now) is None
    stale = now - (liveness.STALE_SECONDS + 60) * 1000
    reason = liveness.why_dead(_run("elsewhere", 1, 0.0, stale), "here", now)
    assert reason == f"no heartbeat from elsewhere for 31 min (more than {liveness.STALE_SECONDS // 60})"


def test_every_run_carries_this_process_and_a_heartbeat(tracking_store):
    import mlflow

    from mnist_pipeline.tracking.runs import ended_run

    with ended_run(run_name="x", tags={"role": "main"}) as run:
        pass
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags[names.TAG_HOST] == socket.gethostname() and tags[names.TAG_PID] == str(psutil.Process().pid)
    assert abs(float(tags[names.TAG_PROCESS_START]) - psutil.Process().create_time()) < 1
    assert abs(int(tags[names.TAG_HEARTBEAT]) - run.info.start_time) < 5000 and tags["role"] == "main"
