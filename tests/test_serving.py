"""`mlflow models serve` of the champion answers REST requests, bad ones with a 4xx."""

import json
import os
import subprocess
import urllib.error
import urllib.request

import numpy as np
import pytest

from mnist_pipeline import registry
from servers import answers, free_port, stop_group, wait_for


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
        wait_for(lambda: answers(f"{url}/ping"), "mlflow models serve", server, tmp_path / "serve.log")
        yield url
    finally:
        stop_group(server)
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
