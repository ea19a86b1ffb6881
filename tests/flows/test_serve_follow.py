"""`mnist-pipeline serve` of models:/NAME@champion follows the alias under load: 8 clients,
2,000 requests and more, the alias moved three times between two good versions and once to a
version that cannot load. No request fails, every answer is the named version's, the broken
version never answers and is refused once. Timings are printed, not asserted."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest

from benchmarks import serving
from helpers.servers import answers, free_port, stop_group, wait_for
from mnist_pipeline import names

REFRESH_SECONDS = 0.5


@pytest.fixture
def versions(registered, tmp_path) -> dict[str, str]:
    """1: the champion `registered` made; 2: main's other training run, registered by hand;
    3: version 1's files with a model.keras that is not one. Version number -> run id."""
    return serving.bench_versions(names.MODEL_NAME, names.CHAMPION, str(tmp_path / "broken"))


@pytest.fixture
def following_server(versions, tmp_path):
    port = free_port()
    log_path = tmp_path / "serve.log"
    log = open(log_path, "w+")  # noqa: SIM115 (the server writes it until the fixture ends)
    command = [sys.executable, "-m", "mnist_pipeline", "serve", "--port", str(port)]
    command += ["--refresh-seconds", str(REFRESH_SECONDS)]
    server = subprocess.Popen(
        command, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{url}/ping"), "mnist-pipeline serve", server, log_path)
        yield url, log_path
    finally:
        stop_group(server)
        log.close()


def expected_probabilities(version: str, images: np.ndarray) -> np.ndarray:
    model = mlflow.pyfunc.load_model(f"models:/{names.MODEL_NAME}/{version}")
    return np.concatenate([model.predict(images[i : i + 1].astype(np.float32)) for i in range(len(images))])


def test_serve_follows_the_alias_under_load_and_refuses_a_broken_version(following_server, versions, tiny_mnist):
    url, log_path = following_server
    images = tiny_mnist.x_test[:50]
    expected = {v: expected_probabilities(v, images) for v in ("1", "2")}
    assert (np.abs(expected["1"] - expected["2"]).max(axis=1) > 1e-3).all(), "versions 1 and 2 cannot be told apart"
    first = serving.model_state(url)
    assert first["version"] == "1" and first["alias"] == names.CHAMPION and first["refused"] is None
    assert first["name"] == names.MODEL_NAME and first["run_id"] == versions["1"] and first["loaded_at"]

    move = serving.alias_mover(names.MODEL_NAME, names.CHAMPION)
    answered, moved = serving.follow_load(url, images, move, ["2", "1", "2", "3"], clients=8, requests=2000)
    reads = serving.model_state(url)["alias_reads"]  # four more reads: the refusal stands, no second try
    wait_for(lambda: serving.model_state(url)["alias_reads"] >= reads + 4, "four more reads of the alias")
    after = serving.model_state(url)

    failed = [a for a in answered if a[2] != 200]
    assert len(answered) >= 2000 and not failed, failed[:3]
    by_version = {version: [a for a in answered if a[3] == version] for version in ("1", "2", "3")}
    assert by_version["1"] and by_version["2"] and not by_version["3"], "the broken version answered"
    assert len(by_version["1"]) + len(by_version["2"]) == len(answered), "an answer without X-Model-Version"
    for version in ("1", "2"):
        got = np.array([a[5] for a in by_version[version]])
        want = expected[version][[a[4] for a in by_version[version]]]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=f"answers named version {version}")
    assert [state["version"] for _, _, _, state in moved] == ["2", "1", "2", "2"]
    assert after["version"] == "2" and after["run_id"] == versions["2"]
    assert after["refused"]["version"] == "3" and "does not load" in after["refused"]["reason"]
    # version 1 is also the challenger (the first registration set both aliases): held by its own follower
    assert after["challenger"]["version"] == "1"
    assert after["models_held"] == 2, "a swapped-out version is still held"
    # while version 2 served, version 1 scored in the shadow, and no answer above failed
    assert after["total"]["shadowed_requests"] > 0 and after["total"]["challenger_errors"] == 0

    lines = log_path.read_text().splitlines()
    assert sum("refused version 3 of mnist-digits" in line for line in lines) == 1
    assert sum("serving version 2 of mnist-digits (was version 1)" in line for line in lines) == 2
    summary = serving.follow_summary(answered, moved)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()})  # reported, not asserted
