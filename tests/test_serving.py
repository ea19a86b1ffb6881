"""`mlflow models serve` of the champion answers REST requests, bad ones with a 4xx."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from mnist_pipeline import registry

STARTUP_SECONDS = 120  # TensorFlow import and model load, on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes) -> tuple[int, dict | str]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


@pytest.fixture
def served_champion(registered, tmp_path):
    """The README's serve command on a free loopback port; stopped by its own process group."""
    port = free_port()
    log = open(tmp_path / "serve.log", "w+")
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered}
    command = ["mlflow", "models", "serve", "-m", registry.CHAMPION_URI, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert server.poll() is None, f"server exited: {(tmp_path / 'serve.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "server not up in time"
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_served_champion_answers_good_and_bad_requests(served_champion, tiny_mnist):
    images = tiny_mnist.x_test[:4]
    good = json.dumps({"inputs": images.astype(float).tolist()}).encode()
    status, answer = post(f"{served_champion}/invocations", good)
    assert status == 200
    probabilities = np.array(answer["predictions"])
    assert probabilities.shape == (4, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)

    bad_requests = [
        b"this is not json",
        json.dumps({"inputs": [[1.0, 2.0, 3.0]]}).encode(),  # wrong shape
        json.dumps({"inputs": [[["a"] * 28] * 28]}).encode(),  # wrong dtype
        json.dumps({"no_such_key": []}).encode(),
    ]
    for body in bad_requests:
        status, _ = post(f"{served_champion}/invocations", body)
        assert 400 <= status < 500, (body[:40], status)

    status, again = post(f"{served_champion}/invocations", good)
    assert status == 200 and np.allclose(again["predictions"], probabilities)
