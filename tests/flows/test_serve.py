"""`mnist-pipeline serve` of the champion (MLflow's scoring app, bounded, with a fast path for
the plain JSON body) answers REST requests, bad ones with a 4xx, huge ones with 413, and a
bounded load without an error."""

import http.client
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

from helpers.servers import answers, free_port, stop_group, wait_for
from mnist_pipeline import names
from mnist_pipeline.flows import bench_serving


def post(url: str, body: bytes) -> tuple[int, dict | str]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


MAX_REQUEST_MB = 0.25  # 262,144 bytes: about 50 images as JSON


def chunked_post(url: str, chunks) -> int:
    """POST without a Content-Length (chunked transfer): the bound must count the bytes."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(
            "POST",
            "/invocations",
            body=chunks,
            encode_chunked=True,
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        )
        return connection.getresponse().status
    finally:
        connection.close()


@pytest.fixture
def served_champion(registered, tmp_path):
    """The serve command of docs/registry-and-serving.md on a free loopback port, with a request bound of
    MAX_REQUEST_MB; stopped by its own process group."""
    port = free_port()
    log = open(tmp_path / "serve.log", "w+")  # noqa: SIM115 (the server writes it until the fixture ends)
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered}
    command = [
        sys.executable,
        "-m",
        "mnist_pipeline",
        "serve",
        "--model-uri",
        names.CHAMPION_URI,
        "--port",
        str(port),
        "--max-request-mb",
        str(MAX_REQUEST_MB),
    ]
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{url}/ping"), "mnist-pipeline serve", server, tmp_path / "serve.log")
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

    huge = json.dumps({"inputs": np.repeat(images, 50, axis=0).astype(float).tolist()}).encode()
    assert len(huge) > MAX_REQUEST_MB * 2**20
    status, answer = post(f"{served_champion}/invocations", huge)
    assert status == 413 and "REQUEST_TOO_LARGE" in answer, answer[:200]
    pieces = (huge[i : i + 65536] for i in range(0, len(huge), 65536))
    assert chunked_post(served_champion, pieces) == 413
    small_pieces = (good[i : i + 1000] for i in range(0, len(good), 1000))
    assert chunked_post(served_champion, small_pieces) == 200  # chunks add up under the bound

    status, again = post(f"{served_champion}/invocations", good)
    assert status == 200 and np.allclose(again["predictions"], probabilities)

    # The plain body is answered by serve's fast path; the same images as integers too, and
    # as "instances" by MLflow's own handler: the same probabilities every way.
    for body in ({"inputs": images.astype(int).tolist()}, {"instances": images.astype(float).tolist()}):
        status, answer = post(f"{served_champion}/invocations", json.dumps(body).encode())
        assert status == 200, answer
        np.testing.assert_allclose(answer["predictions"], probabilities, rtol=1e-6, atol=1e-7)

    # A bounded load on loopback: no request fails, and the server is healthy afterwards.
    load = bench_serving.load_test(served_champion, tiny_mnist.x_test, clients=4, requests=200)
    print(f"load: p50 {load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms")  # reported, not asserted
    assert load["errors"] == 0 and load["health_after"]
