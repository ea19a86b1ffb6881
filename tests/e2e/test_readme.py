"""The README's consumer snippets, run from the README's own text: they cannot drift from it.

Both run against a store whose `champion` is a tiny model (the `registered_once` fixture),
with MNIST_DATA_DIR at a tiny data folder: what they read is the README's code, not the data."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from helpers.servers import answers, free_port, stop_group, wait_for
from helpers.stores import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, re.DOTALL)  # (language, code) of every fenced block
README_PORT = "5001"  # the port the README serves on; a free one here (other tests serve too)


def _block(language: str, containing: str) -> str:
    [code] = [code for lang, code in BLOCKS if lang == language and containing in code]
    return code


@pytest.fixture
def consumer_env(registered_once, tiny_mnist_dir) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": registered_once, "MNIST_DATA_DIR": str(tiny_mnist_dir)}


def test_the_python_snippet_prints_the_champions_digits(consumer_env, tiny_mnist, tmp_path):
    snippet = _block("python", "mlflow.pyfunc.load_model")
    done = subprocess.run(
        [sys.executable, "-c", snippet], env=consumer_env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = re.fullmatch(r"predicted \[([\d ]+)\] true \[([\d ]+)\]", done.stdout.strip())
    assert printed, done.stdout
    predicted, true = (list(map(int, group.split())) for group in printed.groups())
    assert len(predicted) == 5 and all(0 <= d <= 9 for d in predicted)
    assert true == list(tiny_mnist.y_test[:5])


def test_the_rest_snippet_serves_one_image_and_curl_gets_ten_probabilities(consumer_env, tmp_path):
    port = str(free_port())
    [serve_line] = _block("bash", "mnist-pipeline serve").strip().splitlines()
    command = shlex.split(serve_line.split("#")[0].replace(README_PORT, port))
    client = _block("bash", "curl").replace(README_PORT, port)
    assert (
        command[:2] == ["mnist-pipeline", "serve"]
        and README_PORT in serve_line
        and README_PORT in _block("bash", "curl")
    )
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            command, env=consumer_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_for(lambda: answers(f"http://127.0.0.1:{port}/ping"), "mnist-pipeline serve", server, log_path)
            done = subprocess.run(
                ["bash", "-c", client], env=consumer_env, cwd=tmp_path, capture_output=True, text=True
            )
        finally:
            stop_group(server)
    assert done.returncode == 0, done.stderr[-3000:]
    [probabilities] = json.loads(done.stdout)["predictions"]
    assert len(probabilities) == 10 and sum(probabilities) == pytest.approx(1, abs=1e-4)
