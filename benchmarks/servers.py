"""Servers on 127.0.0.1 for the benchmark and the tests: a server process for a ``with`` block,
waiting on a condition with a deadline, stopping a process group, whether a URL answers, a free
port."""

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

STARTUP_SECONDS = 180  # a server that loads TensorFlow and the model


@contextlib.contextmanager
def server(command: list[str], env: dict[str, str]):
    """``command --port <a free port>`` as a server process for the ``with`` block (its own
    process group, its output in a temporary file), once /ping answers: (its URL, the process)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.NamedTemporaryFile("w", suffix=".log") as log:
        argv = [*command, "--port", str(port)]
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: answers(f"{url}/ping"), " ".join(command[:4]), process, Path(log.name))
            yield url, process
        finally:
            stop_group(process)


def wait_for(check, what: str, process=None, log: Path | None = None, seconds: float = STARTUP_SECONDS):
    """``check()``'s first true value, asked every 0.05 s; RuntimeError naming ``what`` (and
    the end of the ``log`` file) after ``seconds``, or as soon as ``process`` has exited."""
    deadline = time.monotonic() + seconds
    while not (value := check()):
        exited = process is not None and process.poll() is not None
        if exited or time.monotonic() > deadline:
            tail = f": {log.read_text()[-2000:]}" if log else ""
            raise RuntimeError(f"{what} exited{tail}" if exited else f"{what}: not within {seconds} s{tail}")
        time.sleep(0.05)
    return value


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to a process started with start_new_session=True and all it started; SIGKILL
    after 30 s."""
    for sig, seconds in ((signal.SIGTERM, 30), (signal.SIGKILL, None)):
        if process.poll() is None:
            os.killpg(process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=seconds)


def answers(url: str) -> bool:
    """True if a GET of ``url`` gives 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:  # urllib.error.URLError is one
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
