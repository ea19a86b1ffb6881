"""Servers on 127.0.0.1 for the benchmark and the tests: a free port, whether a URL answers,
waiting on a condition with a deadline, a server process for a ``with`` block and stopping its
process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

STARTUP_SECONDS = 180  # a server that loads TensorFlow and the model


class ServerProcess:
    """A server process (its own process group) for the ``with`` block, its URL as the value."""

    def __init__(self, command: list[str], port: int, env: dict[str, str]):
        self.command, self.url, self.env = command, f"http://127.0.0.1:{port}", env

    def __enter__(self) -> str:
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            wait_for(lambda: answers(f"{self.url}/ping"), " ".join(self.command[:4]), self.process)
        except RuntimeError as err:
            stop_group(self.process)
            raise RuntimeError(f"{err}: {self.process.stderr.read()[-2000:]}") from None
        return self.url

    def __exit__(self, *exc) -> None:
        stop_group(self.process)


def wait_for(check, what: str, process=None, log: Path | None = None, seconds: float = STARTUP_SECONDS):
    """``check()``'s first true value, asked every 0.05 s; RuntimeError naming ``what`` after
    ``seconds``, or as soon as ``process`` has exited (with the end of the ``log`` it writes)."""
    deadline = time.monotonic() + seconds
    while not (value := check()):
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited" + (f": {log.read_text()[-2000:]}" if log else ""))
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {seconds} s")
        time.sleep(0.05)
    return value


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to a process started with start_new_session=True and all it started; SIGKILL
    after 30 s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def answers(url: str) -> bool:
    """True if a GET of ``url`` gives 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
