"""`mnist-pipeline serve` with a challenger, as a process, on models trained on the real MNIST:
2,000 test images replayed with their labels give each model its offline accuracy on them and
the pair its offline agreement, in GET /model and in the serving run that `promote` decides on;
challengers that raise, stall past the timeout or answer NaN never fail or change a champion
answer under the load test, and each is counted in its serving run."""

import concurrent.futures
import json
import os
import sys
import urllib.request

import mlflow
import numpy as np
import pandas as pd
import pytest

from benchmarks import serving
from benchmarks.servers import server, wait_for
from helpers.stores import REAL_MNIST
from mnist_pipeline import cli, names
from mnist_pipeline.core import data
from mnist_pipeline.flows import serve

pytestmark = pytest.mark.slow  # real MNIST
TOKEN = "the-feedback-token-of-this-test"
SERVE = [sys.executable, "-m", "mnist_pipeline", "serve", "--refresh-seconds", "0.5", "--window-seconds", "1"]
REPLAYED = 2000


@pytest.fixture(scope="module")
def test_split():
    mnist = data.load(REAL_MNIST)
    return mnist.x_test[:REPLAYED].astype(np.float32), mnist.y_test[:REPLAYED]


def champion_version() -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias(names.MODEL_NAME, names.CHAMPION).version)


def classes(version: str, images: np.ndarray) -> np.ndarray:
    return mlflow.pyfunc.load_model(f"models:/{names.MODEL_NAME}/{version}").predict(images).argmax(axis=1)


def serving_run(challenger: str):
    [run] = mlflow.search_runs(
        experiment_names=[f"{names.MODEL_NAME}-serving"],
        filter_string=f"params.challenger_version = '{challenger}'",
        output_format="list",
    )
    return run


def post(url: str, body: dict, headers: dict | None = None) -> tuple[dict, str]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read()), response.headers.get(serve.REQUEST_ID_HEADER)


def replay(url: str, images: np.ndarray, labels: np.ndarray) -> None:
    """The images in requests of 1 to 7, from 4 clients; each answer's labels sent back."""
    bounds = np.cumsum([0] + [1 + n % 7 for n in range(len(images))])
    bounds = [int(b) for b in bounds[bounds < len(images)]] + [len(images)]

    def send(start: int, end: int) -> None:
        _, request_id = post(f"{url}/invocations", {"inputs": images[start:end].astype(float).tolist()})
        feedback = {"request_id": request_id, "labels": labels[start:end].tolist()}
        post(f"{url}/feedback", feedback, {"Authorization": f"Bearer {TOKEN}"})

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(send, bounds[:-1], bounds[1:]))


def test_replayed_labels_give_each_model_its_offline_accuracy_and_promote_decides_on_them(
    registered_on_mnist, test_split, capsys
):
    images, labels = test_split
    client, champion = mlflow.MlflowClient(), champion_version()
    challenger = str(
        serving.other_version(names.MODEL_NAME, client.get_model_version(names.MODEL_NAME, champion)).version
    )
    client.set_registered_model_alias(names.MODEL_NAME, names.CHALLENGER, challenger)
    # what the offline gates with require_shadow leave: a challenger for promote (the tag they set)
    client.set_model_version_tag(names.MODEL_NAME, challenger, names.TAG_OFFLINE_GATE, "require_shadow")
    offline = {version: classes(version, images) for version in (champion, challenger)}

    with server(SERVE, {**os.environ, serve.FEEDBACK_TOKEN: TOKEN}) as (url, _):
        wait_for(lambda: (serving.model_state(url)["challenger"] or {}).get("version") == challenger, "challenger")
        replay(url, images, labels)

        def settled() -> dict | None:
            total = serving.model_state(url)["total"]
            return total if total.get("labelled_images") == total.get("shadowed_images") == REPLAYED else None

        total = wait_for(settled, "every image shadowed and labelled", seconds=60)
    right = {version: offline[version] == labels for version in offline}
    assert total["images"] == REPLAYED and total["dropped_requests"] == 0 and total["challenger_errors"] == 0
    assert total["champion_live_accuracy"] == pytest.approx(right[champion].mean(), abs=1e-12)
    assert total["challenger_live_accuracy"] == pytest.approx(right[challenger].mean(), abs=1e-12)
    assert total["agreement"] == pytest.approx((offline[champion] == offline[challenger]).mean(), abs=1e-12)
    only_champion = int((right[champion] & ~right[challenger]).sum())
    assert total["only_champion_right"] == only_champion and "psi" in total

    run = serving_run(challenger)  # the server stopped: its run ended, every window sent
    assert run.info.status == "FINISHED"
    assert sum(m.value for m in client.get_metric_history(run.info.run_id, "labelled_images")) == REPLAYED
    assert cli.run(["promote"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    path = mlflow.artifacts.download_artifacts(
        run_id=mlflow.search_runs(filter_string="tags.role = 'promote'", output_format="list")[0].info.run_id,
        artifact_path=names.DECISIONS,
    )
    [row] = pd.read_csv(path).to_dict("records")
    assert (row["labelled_images"], row["only_champion_right"]) == (REPLAYED, only_champion)
    assert row["accuracy_difference_pp"] == pytest.approx(100 * (right[challenger].mean() - right[champion].mean()))
    assert row["promoted"] == (row["lower_bound_pp"] > -0.2 and row["latency_ratio"] <= 1.5)
    assert line.startswith(f"{names.MODEL_NAME} version {challenger}: ") and row["reason"] in line
    print(line)  # the decision on real figures, reported


MISBEHAVING = '''

import time as _time

_MODE = "{mode}"
_well = _load_pyfunc


class _Misbehaving:
    """Answers the server's check of its input example, then {mode}."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def predict(self, data, params=None):
        self.calls += 1
        answer = self.model.predict(data, params)
        if self.calls == 1:
            return answer
        if _MODE == "raises":
            raise RuntimeError("a challenger that raises")
        if _MODE == "stalls":
            _time.sleep(2)
            return answer
        return answer * float("nan")


def _load_pyfunc(data_path, model_config=None):
    return _Misbehaving(_well(data_path, model_config))
'''


def misbehaving_version(champion: str, mode: str, folder) -> str:
    """The champion's files with a loader whose model misbehaves (``mode``) after its first call."""
    files = mlflow.artifacts.download_artifacts(f"models:/{names.MODEL_NAME}/{champion}", dst_path=str(folder / mode))
    with open(os.path.join(files, "code", "digits_pyfunc.py"), "a") as loader:
        loader.write(MISBEHAVING.format(mode=mode))
    return str(mlflow.MlflowClient().create_model_version(names.MODEL_NAME, files).version)


def test_a_challenger_that_raises_stalls_or_answers_nan_never_touches_a_champion_answer(
    registered_on_mnist, test_split, tmp_path
):
    champion, images = champion_version(), test_split[0][:50]
    versions = {mode: misbehaving_version(champion, mode, tmp_path) for mode in ("raises", "stalls", "answers NaN")}
    expected = mlflow.pyfunc.load_model(f"models:/{names.MODEL_NAME}/{champion}").predict(images)
    move = serving.alias_mover(names.MODEL_NAME, names.CHALLENGER)
    with server([*SERVE, "--shadow-timeout-seconds", "0.5"], dict(os.environ)) as (url, _):
        for mode, version in versions.items():
            move(version)
            wait_for(lambda v=version: (serving.model_state(url)["challenger"] or {}).get("version") == v, mode)
            answered, _ = serving.follow_load(url, images, None, [], clients=8, requests=300)
            failed = [a for a in answered if a[2] != 200 or a[3] != champion]
            assert len(answered) >= 300 and not failed, (mode, failed[:3])
            got = np.array([a[5] for a in answered])
            np.testing.assert_allclose(got, expected[[a[4] for a in answered]], rtol=1e-4, atol=1e-6, err_msg=mode)
    client = mlflow.MlflowClient()
    for mode, version in versions.items():
        run = serving_run(version)
        errors = sum(m.value for m in client.get_metric_history(run.info.run_id, "challenger_errors"))
        assert run.info.status == "FINISHED" and errors > 0, mode
