"""Against a real `mlflow server` on PostgreSQL: concurrent registration, the pipeline end to end."""

import collections
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request

import mlflow
import numpy as np
import pytest

from helpers.stores import PROJECT_ROOT, environment, forget_store
from mnist_pipeline import names

REGISTER_TOGETHER = """
import pathlib, sys, time, mlflow
from mnist_pipeline.tracking import registry
run_id, name, folder, me = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), sys.argv[4]
run = mlflow.get_run(run_id)
(folder / me).touch()  # a barrier: ready, then wait until both are
while len(list(folder.iterdir())) < 2:
    time.sleep(0.01)
start = time.time()
r = registry.register_run(run, name)
print(r.version.version, r.champion, start, time.time())
"""


def rest(uri: str, endpoint: str, **query) -> dict:
    url = f"{uri}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_concurrent_registrations_lose_no_version_and_the_better_one_is_champion(server_store, request, tmp_path):
    from helpers.runs import scored_run

    name = f"digits-{request.node.name}-{os.getpid()}"
    worse, better = scored_run(0.91), scored_run(0.97)
    env = {**os.environ, "MLFLOW_TRACKING_URI": server_store}
    barrier = tmp_path / "ready"
    barrier.mkdir()
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", REGISTER_TOGETHER, run_id, name, str(barrier), run_id],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for run_id in (better, worse)
    ]
    outputs = [w.communicate(timeout=180) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err[-2000:] for _, err in outputs]
    spans = [tuple(map(float, out.split()[-2:])) for out, _ in outputs]
    assert max(start for start, _ in spans) < min(end for _, end in spans), (
        f"the registrations did not overlap: {spans}"
    )
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name = '{name}'")
    assert sorted(v.tags["run_id"] for v in versions) == sorted([worse, better])
    champion = client.get_model_version_by_alias(name, names.CHAMPION)
    assert champion.tags["run_id"] == better
    challenger = client.get_model_version_by_alias(name, names.CHALLENGER)
    assert str(challenger.version) == str(max(int(v.version) for v in versions))


def test_main_against_the_server_end_to_end(server_store, tmp_path, tiny_mnist_dir):
    """`mlflow run .` (1 epoch per variant, tiny data): everything visible over REST, artifacts
    through the server's proxy."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")
    }
    name = f"digits-e2e-{os.getpid()}"
    result = subprocess.run(
        [
            "mlflow",
            "run",
            str(PROJECT_ROOT),
            "--env-manager",
            "local",
            "--experiment-name",
            os.environ["MLFLOW_EXPERIMENT_NAME"],
            "-P",
            "epochs=1",
            "-P",
            f"data_dir={tiny_mnist_dir}",
            "-P",
            f"model_name={name}",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = rest(server_store, "experiments/get-by-name", experiment_name=os.environ["MLFLOW_EXPERIMENT_NAME"])
    experiment_id = experiment["experiment"]["experiment_id"]
    request = urllib.request.Request(
        f"{server_store}/api/2.0/mlflow/runs/search",
        data=json.dumps({"experiment_ids": [experiment_id], "max_results": 100}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        runs = json.loads(response.read())["runs"]
    assert len(runs) == 4 and {r["info"]["status"] for r in runs} == {"FINISHED"}
    training = [r for r in runs if any(t["key"] == "variant" for t in r["data"].get("tags", []))]
    assert len(training) == 3
    for run in training:
        assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:")
        metrics = {m["key"] for m in run["data"]["metrics"]}
        assert {"val_accuracy", "test_accuracy", "epoch_seconds"} <= metrics
        listed = rest(server_store, "artifacts/list", run_id=run["info"]["run_id"], path="plots")
        assert {f["path"] for f in listed["files"]} >= {"plots/learning_curves.png", "plots/confusion_matrix.png"}
    model = rest(server_store, "registered-models/get", name=name)["registered_model"]
    assert {a["alias"] for a in model["aliases"]} == {"champion", "challenger"}
    champion = rest(server_store, "registered-models/alias", name=name, alias="champion")["model_version"]
    assert champion["source"].startswith("models:/")
    # the champion's files come back through the server's artifact proxy
    probabilities = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(
        __import__("numpy").zeros((2, 28, 28), "float32")
    )
    assert probabilities.shape == (2, 10)


@pytest.fixture(scope="module")
def outage(mlflow_server, tmp_path_factory) -> dict:
    """The session's server stops and comes back once, while a `train` child (40 epochs, tiny
    data) is past its second epoch and `serve` answers a client non-stop with 1 s windows:
    what each saw and logged. The server stays away until serve has 3 windows waiting, and
    is up again for the tests after these."""
    import threading

    from benchmarks import serving
    from benchmarks.servers import answers, server, wait_for
    from helpers.data import tiny_arrays, write_idx_folder
    from mnist_pipeline import cli

    root = tmp_path_factory.mktemp("outage")
    data = str(write_idx_folder(root / "tiny", tiny_arrays()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"MLFLOW_TRACKING_URI": mlflow_server.uri, "MLFLOW_EXPERIMENT_NAME": f"outage-{os.getpid()}"}
    name, client = f"outage-serving-{os.getpid()}", mlflow.MlflowClient(mlflow_server.uri)
    # the champion to serve, registered in this process
    with environment({k: None for k in os.environ if k.startswith("MLFLOW_")} | env):
        argv = ["main", "--variants", "baseline", "--epochs", "1", "--batch-size", "64", "--workers", "1"]
        try:
            assert cli.run([*argv, "--data-dir", data, "--model-name", name]) == 0
        finally:
            forget_store()
    epochs = 40  # the outage starts after epoch 2; the end may wait for the server
    train = [sys.executable, "-m", "mnist_pipeline", "train", "--variant", "baseline", "--epochs", str(epochs)]
    train += ["--batch-size", "64", "--data-dir", data]
    log = root / "train-stderr.log"  # a file, not a pipe: a full pipe would stall the child
    with log.open("w") as stderr:
        child = subprocess.Popen(
            train, env=env | {"MNIST_PIPELINE_RETRY_SECONDS": "2"}, cwd=root, stdout=subprocess.DEVNULL, stderr=stderr
        )
    serve = [sys.executable, "-m", "mnist_pipeline", "serve", "--model-uri", f"models:/{name}@champion"]
    serve_env = env | {"MNIST_PIPELINE_RETRY_SECONDS": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    body, statuses, stop = serving.request_body(np.zeros((1, 28, 28))), [], threading.Event()

    def training_run() -> str | None:
        """The child's run (the experiment's training run still RUNNING) once it has logged two epochs."""
        experiment = client.get_experiment_by_name(env["MLFLOW_EXPERIMENT_NAME"]).experiment_id
        runs = client.search_runs([experiment], "attributes.status = 'RUNNING'")
        [run] = [r.info.run_id for r in runs if names.TAG_VARIANT in r.data.tags] or [None]
        return run if run and len(client.get_metric_history(run, "val_accuracy")) >= 2 else None

    try:
        with server([*serve, "--window-seconds", "1"], serve_env) as (url, _):

            def send() -> None:
                while not stop.is_set():
                    statuses.append(serving.timed_answer(url, body, 0)[1])

            sender = threading.Thread(target=send)
            sender.start()
            wait_for(lambda: serving.model_state(url)["serving_run"], "the serving run", seconds=60)
            run_id = wait_for(training_run, "two epochs of the training run", child, log, seconds=180)
            mlflow_server.stop()
            wait_for(lambda: serving.model_state(url)["windows_waiting"] >= 3, "windows waiting", seconds=60)
            training_went_on = child.poll() is None
            mlflow_server.start()  # the same port and store
            wait_for(lambda: serving.model_state(url)["windows_waiting"] == 0, "the windows sent", seconds=120)
            stop.set()
            sender.join()
            serving_run = serving.model_state(url)["serving_run"]
        child.wait(timeout=600)
    finally:
        stop.set()
        if child.poll() is None:
            child.kill()
        if not answers(f"{mlflow_server.uri}/health"):
            mlflow_server.stop()
            mlflow_server.start()
    return {
        "training went on": training_went_on,
        "returncode": child.returncode,
        "stderr": log.read_text(),
        "training run": client.get_run(run_id),
        "epochs": epochs,
        "steps": [m.step for m in client.get_metric_history(run_id, "val_accuracy")],
        "statuses": statuses,
        "serving run": client.get_run(serving_run),
        "windows": client.get_metric_history(serving_run, "requests"),
    }


def test_training_outlives_a_server_that_stops_and_comes_back(outage):
    """Training goes on while the server is away, the kept epochs are sent when it answers
    again, and the run ends FINISHED with every epoch."""
    stderr = outage["stderr"]
    assert outage["training went on"] and outage["returncode"] == 0, stderr[-3000:]
    assert "did not take the metrics" in stderr and "answers again" in stderr
    assert outage["training run"].info.status == "FINISHED"
    assert sorted(outage["steps"]) == list(range(1, outage["epochs"] + 1))


def test_an_epoch_s_send_leaves_the_environment_alone_while_system_metrics_run(server_store, monkeypatch):
    """MLflow's system-metrics thread makes its own requests in this process, and MLflow reads
    its retry settings from os.environ at each request: an epoch's send (one attempt, no
    retry) must not change os.environ, not even for the length of a request."""
    import math
    import threading
    import time

    from mnist_pipeline.tracking import epoch_logger, run_lifecycle

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")  # requests all through the sends
    client = mlflow.MlflowClient()
    with (
        run_lifecycle.ended_run(run_name="parent") as parent,
        run_lifecycle.ended_run(nested=True, log_system_metrics=True) as run,
    ):
        run_id = run.info.run_id
        deadline = time.monotonic() + 30
        while not any(name.startswith("system/") for name in client.get_run(run_id).data.metrics):
            assert time.monotonic() < deadline, "no system metrics after 30 s"
            time.sleep(0.1)
        before, writes = dict(os.environ), []
        environ = type(os.environ)  # every write to os.environ, from any thread, goes through these
        set_item, del_item = environ.__setitem__, environ.__delitem__

        def record_set(self, key, value):
            writes.append(f"{threading.current_thread().name} set {key}={value}")
            set_item(self, key, value)

        def record_del(self, key):
            writes.append(f"{threading.current_thread().name} unset {key}")
            del_item(self, key)

        logger = epoch_logger.EpochLogger(run_id, parent.info.run_id)
        with monkeypatch.context() as patch:
            patch.setattr(environ, "__setitem__", record_set)
            patch.setattr(environ, "__delitem__", record_del)
            for epoch in range(1, 6):
                assert any(t.name == "SystemMetricsMonitor" for t in threading.enumerate())
                logger(epoch, {"val_accuracy": epoch / 10, "loss": math.nan if epoch == 5 else 1 / epoch})
                time.sleep(0.15)
            logger.flush(final=True)
        assert writes == [] and dict(os.environ) == before
        time.sleep(0.3)  # the system metrics go on after the sends
    assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [1, 2, 3, 4, 5]
    assert math.isnan(client.get_run(run_id).data.metrics["loss"])  # a NaN as MLflow's client sends it
    assert len(client.get_metric_history(run_id, "system/cpu_utilization_percentage")) >= 3


def test_serving_outlives_a_server_that_stops_and_comes_back(outage):
    """`serve` answers every request while the tracking server is away; the windows that
    waited are sent when it is back, and its serving run holds every window, in order, and
    every request."""
    statuses, history = outage["statuses"], outage["windows"]
    assert statuses and set(statuses) == {200}, collections.Counter(statuses)
    assert outage["serving run"].info.status == "FINISHED"
    assert sorted(m.step for m in history) == list(range(1, len(history) + 1))  # every window, none twice
    assert sum(m.value for m in history) == len(statuses)
