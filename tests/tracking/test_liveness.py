"""Which RUNNING runs are taken for dead: the process test on this host, the heartbeat test
on another; and whose dead runs a command ends on a team server. (The SIGKILL of a real
training: tests/flows/test_interrupt.py.)"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from types import SimpleNamespace

import psutil
import pytest

from helpers.stores import environment
from mnist_pipeline import names
from mnist_pipeline.tracking import access, liveness, store


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

    from mnist_pipeline.tracking.run_lifecycle import ended_run

    with ended_run(run_name="x", tags={"role": "main"}) as run:
        pass
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags[names.TAG_HOST] == socket.gethostname() and tags[names.TAG_PID] == str(psutil.Process().pid)
    assert abs(float(tags[names.TAG_PROCESS_START]) - psutil.Process().create_time()) < 1
    assert abs(int(tags[names.TAG_HEARTBEAT]) - run.info.start_time) < 5000 and tags["role"] == "main"


# A process that opens a run as the pipeline does, then is killed hard: the run stays RUNNING.
_DIE_IN_A_RUN = """
import os, signal, sys
from mnist_pipeline.tracking.run_lifecycle import ended_run

with ended_run(run_name=sys.argv[1]) as run:
    print(run.info.run_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _team_env(team, user: str, experiment: str | None = None) -> dict:
    values = {"MLFLOW_TRACKING_URI": team.uri, "MLFLOW_EXPERIMENT_NAME": experiment, "MLFLOW_EXPERIMENT_ID": None}
    return values | team.credentials(user)


def _killed_in_a_run(team, user: str, experiment: str) -> tuple[str, int]:
    """(run id, process id) of a run ``user`` opened in ``experiment`` from a process killed hard."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {k: v for k, v in _team_env(team, user, experiment).items() if v is not None}
    child = subprocess.Popen(
        [sys.executable, "-c", _DIE_IN_A_RUN, f"{user}-run"], env=env, stdout=subprocess.PIPE, text=True
    )
    out, _ = child.communicate(timeout=300)
    assert child.returncode == -signal.SIGKILL, out
    return out.split()[-1], child.pid


def _grant(team, grants: list[tuple[str, str, str]]) -> None:
    """Each (user, experiment id, level), as the admin (a grant held before is replaced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mlflow.server.auth.client import AuthServiceClient

    with team.as_user():
        admin = AuthServiceClient(team.uri)
        for user, experiment_id, level in grants:
            with contextlib.suppress(Exception):  # no grant yet
                admin.revoke_user_permission(user, "experiment", experiment_id)
            admin.grant_user_permission(user, "experiment", experiment_id, level)


def _end_dead_runs(team, user: str, experiment: str | None = None, experiment_id: str | None = None) -> list[str]:
    with environment(_team_env(team, user, experiment) | {store.SUPPRESS_URLS: "true"}):  # our lines only
        return liveness.end_dead_runs("train", experiment_id)


def test_on_a_team_server_a_user_ends_only_its_own_dead_runs_where_its_command_writes(team_server, capsys):
    """rhea (EDIT) and remy (EDIT, later READ) each leave a run RUNNING in an experiment that
    cody may only read; rhea has a second experiment. Each user ends its own dead runs in the
    experiment its command writes to, names the others' there in one line, and a refusal is
    one line, not a traceback."""
    team = team_server
    with team.as_user() as client:
        shared, elsewhere = client.create_experiment("liveness-team"), client.create_experiment("liveness-rhea")
    grants = [("rhea", shared, "EDIT"), ("rhea", elsewhere, "EDIT"), ("remy", shared, "EDIT"), ("cody", shared, "READ")]
    _grant(team, grants)
    (rhea_run, rhea_pid), (remy_run, remy_pid) = (_killed_in_a_run(team, u, "liveness-team") for u in ("rhea", "remy"))
    theirs = f"dead runs of other users in experiment 'liveness-team' (id {shared}), left RUNNING for them: "
    try:
        assert _end_dead_runs(team, "cody", "liveness-team") == []  # READ only: both named, neither touched
        out, err = capsys.readouterr()
        [line] = out.splitlines()
        assert (
            line.startswith(theirs)
            and f"{rhea_run} (rhea-run, rhea)" in line
            and f"{remy_run} (remy-run, remy)" in line
        )
        assert err == ""
        assert _end_dead_runs(team, "rhea", "liveness-rhea") == []  # not where its dead run is
        assert capsys.readouterr() == ("", "")
        assert _end_dead_runs(team, "rhea", "liveness-team") == [rhea_run]
        assert capsys.readouterr().out.splitlines() == [
            f"{theirs}{remy_run} (remy-run, remy)",
            f"run {rhea_run} (rhea-run) was RUNNING, its process {rhea_pid} on this host is gone: ended KILLED, "
            "0 epochs kept",
        ]
        _grant(team, [("remy", shared, "READ")])  # its own dead run there, and no EDIT now
        assert _end_dead_runs(team, "remy", "liveness-team") == []
        out, err = capsys.readouterr()
        assert out == "" and len(err.splitlines()) == 1 and "Traceback" not in err
        gone = f"its process {remy_pid} on this host is gone"
        assert err.startswith(f"note: run {remy_run} (remy-run) was RUNNING, {gone}: user remy may not end it, left")
        assert _end_dead_runs(team, "otto", experiment_id=shared) == []  # no grant: the server shows it no run
        assert capsys.readouterr() == ("", "")
        with pytest.raises(access.AccessError, match="^user otto may not read experiment 'liveness-team' for `train`"):
            _end_dead_runs(team, "otto", "liveness-team")  # the command's own refusal, one line
        with team.as_user() as client:
            assert client.get_run(rhea_run).info.status == "KILLED"
            assert client.get_run(remy_run).info.status == "RUNNING"
    finally:  # nothing left RUNNING on the session's server
        with team.as_user() as client:
            for run_id in (rhea_run, remy_run):
                if client.get_run(run_id).info.status == "RUNNING":
                    client.set_terminated(run_id, "KILLED")
