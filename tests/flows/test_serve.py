"""`mnist-pipeline serve` of the champion (MLflow's scoring app, bounded, with a fast path for
the plain JSON body) answers REST requests, bad ones with a 4xx, huge ones with 413, and a
bounded load without an error."""

import http.client
import json
import os
import select
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import serving
from helpers.servers import answers, free_port, stop_group, wait_for
from mnist_pipeline import names
from mnist_pipeline.flows import serve


def post(url: str, body: bytes) -> tuple[int, dict | str]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def version_header(url: str, body: bytes) -> str | None:
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.headers["X-Model-Version"]


def raw_post(url: str, body: bytes, content_type: str | None) -> tuple[int, bytes]:
    """POST with exactly the Content-Type given (None: no such header, which urllib would add)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        headers = {} if content_type is None else {"Content-Type": content_type}
        connection.request("POST", "/invocations", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


MAX_REQUEST_MB = 0.25  # 262,144 bytes: about 50 images as JSON
FEEDBACK_TOKEN = "the-feedback-token-of-this-test"


def send_feedback(url: str, body: bytes, token: str | None = FEEDBACK_TOKEN) -> tuple[int, dict]:
    """POST /feedback with ``body``, and the token as a bearer (None: no Authorization header)."""
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    request = urllib.request.Request(f"{url}/feedback", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


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


@pytest.fixture(scope="module")
def served_champion(registered_once, tmp_path_factory):
    """The serve command of docs/registry-and-serving.md on a free loopback port, with a request bound of
    MAX_REQUEST_MB; stopped by its own process group."""
    port, log_path = free_port(), tmp_path_factory.mktemp("serve") / "serve.log"
    log = open(log_path, "w+")  # noqa: SIM115 (the server writes it until the fixture ends)
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered_once, serve.FEEDBACK_TOKEN: FEEDBACK_TOKEN}
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
        wait_for(lambda: answers(f"{url}/ping"), "mnist-pipeline serve", server, log_path)
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
    champion = mlflow.pyfunc.load_model(names.CHAMPION_URI)  # the served answers are the champion's own
    np.testing.assert_allclose(probabilities, champion.predict(images.astype(np.float32)), rtol=1e-4, atol=1e-6)
    state = serving.model_state(served_champion)
    assert state["version"] == "1" and state["alias"] == names.CHAMPION and state["refused"] is None
    assert version_header(served_champion, good) == "1"  # the fast path
    instances = json.dumps({"instances": images.astype(float).tolist()}).encode()
    assert version_header(served_champion, instances) == "1"  # MLflow's own handler

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
    load = serving.load_test(served_champion, tiny_mnist.x_test, clients=4, requests=200)
    print(f"load: p50 {load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms")  # reported, not asserted
    assert load["errors"] == 0 and load["health_after"]


# Bad bodies, as a client might send them: JSON trees of any shape (NaN and infinities as
# Python's json writes them), images of the right shape with bad pixels, deep nesting,
# truncated good bodies, bytes that are not JSON; under the right, wrong or no Content-Type.
LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
TREES = st.recursive(
    LEAVES, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
)
KEYS = st.sampled_from(["inputs", "instances", "dataframe_split", "dataframe_records", "params", "predictions"])
BAD_PIXELS = st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e300, -1.0, 256.0, 10**30, -(10**20)])
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=latin-1",
        "application/json; format=pandas-split",
        "text/csv",
        "application/x-parquet",
        "text/plain",
        "application/xml",
        "",
        None,
    ]
)


@st.composite
def bad_images(draw) -> bytes:
    images = np.zeros((draw(st.integers(1, 3)), 28, 28), dtype=object)
    images[draw(st.integers(0, len(images) - 1)), draw(st.integers(0, 27)), draw(st.integers(0, 27))] = draw(BAD_PIXELS)
    return json.dumps({draw(st.sampled_from(["inputs", "instances"])): images.tolist()}).encode()


@st.composite
def truncated(draw) -> bytes:
    good = json.dumps({"inputs": np.full((1, 28, 28), 7.0).tolist()}).encode()
    return good[: draw(st.integers(0, len(good) - 1))]


BODIES = st.one_of(
    TREES.map(lambda tree: json.dumps(tree).encode()),
    st.builds(lambda key, tree: json.dumps({key: tree}).encode(), KEYS, TREES),
    bad_images(),
    st.integers(1, 3000).map(lambda depth: b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"),
    truncated(),
    st.binary(max_size=200),
)


def test_bad_bodies_get_a_json_4xx_and_the_server_stays_up(served_champion):
    tried = []

    @settings(max_examples=400, deadline=None, derandomize=True, database=None)
    @given(body=BODIES, content_type=CONTENT_TYPES)
    def answers_4xx(body, content_type):
        tried.append(body)
        status, answer = raw_post(served_champion, body, content_type)
        assert 400 <= status < 500, (body[:80], content_type, status, answer[:200])
        error = json.loads(answer)
        assert error["message"], (body[:80], content_type, answer[:200])

    answers_4xx()
    print(f"bad bodies tried: {len(tried)}")  # reported, not asserted
    assert answers(f"{served_champion}/ping")


def answered_within(url: str, body: bytes, seconds: float) -> tuple[int | None, float]:
    """The status of a POST of ``body`` to /invocations (None: no answer within ``seconds``) and
    the seconds it took."""
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    start = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=seconds) as response:
            return response.status, time.monotonic() - start
    except urllib.error.HTTPError as err:
        return err.code, time.monotonic() - start
    except (TimeoutError, urllib.error.URLError):
        return None, time.monotonic() - start


def test_slow_clients_do_not_keep_others_waiting(served_champion, tiny_mnist):
    """Three clients send their body a byte at a time, one byte after each answer to another
    client: all twenty others are answered, each well within the body deadline (a server that
    took requests in turn would hold them until the slow bodies' deadline), while the slow
    bodies are still unfinished; then the slow ones are answered too."""
    host, port = served_champion.removeprefix("http://").split(":")
    body = json.dumps({"inputs": tiny_mnist.x_test[:1].astype(float).tolist()}).encode()
    bound = serve.BODY_SECONDS / 4  # an answer later than this waited for a slow client
    slow = []
    for _ in range(3):
        connection = socket.create_connection((host, int(port)), timeout=2 * serve.BODY_SECONDS)
        head = f"POST /invocations HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        connection.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[:1])
        slow.append(connection)
    try:
        fast = []
        for sent in range(1, 21):
            fast.append(answered_within(served_champion, body, bound))
            for connection in slow:
                connection.sendall(body[sent : sent + 1])
        assert [status for status, _ in fast] == [200] * 20, fast
        assert max(seconds for _, seconds in fast) < bound, fast
        assert select.select(slow, [], [], 0)[0] == [], "a slow client was answered before its body was whole"
        for connection in slow:
            connection.sendall(body[21:])
        assert [connection.makefile("rb").readline().split()[1] for connection in slow] == [b"200"] * 3
    finally:
        for connection in slow:
            connection.close()
    assert answers(f"{served_champion}/ping")


def test_an_answer_s_request_id_takes_its_labels_once_from_a_holder_of_the_token(served_champion, tiny_mnist):
    images, labels = tiny_mnist.x_test[:3], tiny_mnist.y_test[:3].tolist()
    request = urllib.request.Request(
        f"{served_champion}/invocations",
        data=json.dumps({"inputs": images.astype(float).tolist()}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        request_id, predictions = response.headers["X-Request-Id"], json.loads(response.read())["predictions"]
    before = serving.model_state(served_champion)["total"]
    good = json.dumps({"request_id": request_id, "labels": labels}).encode()
    refused = {
        "no token": (send_feedback(served_champion, good, token=None), 401),
        "a wrong token": (send_feedback(served_champion, good, token="guess"), 401),
        "an unknown id": (
            send_feedback(served_champion, json.dumps({"request_id": "x", "labels": labels}).encode()),
            404,
        ),
        "too few labels": (
            send_feedback(served_champion, json.dumps({"request_id": request_id, "labels": labels[:2]}).encode()),
            400,
        ),
        "not JSON": (send_feedback(served_champion, b"labels: 1, 2, 3"), 400),
    }
    for case, ((status, error), expected) in refused.items():
        assert status == expected and error["message"], (case, status, error)
    assert send_feedback(served_champion, good) == (200, {"request_id": request_id, "labels": 3})
    assert send_feedback(served_champion, good)[0] == 409  # labelled once
    after = serving.model_state(served_champion)["total"]
    right = int((np.argmax(predictions, axis=1) == labels).sum())
    assert after["labelled_images"] - before.get("labelled_images", 0) == 3
    assert after["labelled_images"] * after["champion_live_accuracy"] == pytest.approx(
        before.get("labelled_images", 0) * before.get("champion_live_accuracy", 0) + right
    )


def test_generated_feedback_bodies_never_get_a_5xx(served_champion):
    @settings(max_examples=150, deadline=None, derandomize=True, database=None)
    @given(
        body=st.binary(max_size=200)
        | st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=5) | st.dictionaries(st.sampled_from(["request_id", "labels", "x"]), inner)
            ),
            max_leaves=20,
        ).map(lambda value: json.dumps(value).encode())
    )
    def answers_4xx(body):
        status, error = send_feedback(served_champion, body)
        assert 400 <= status < 500 and error["message"], (body[:80], status, error)

    answers_4xx()
