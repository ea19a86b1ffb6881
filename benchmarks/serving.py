"""The serving half of the benchmark: a registry consumer's paths, timed after their first call.

- pyfunc: ``mlflow.pyfunc.load_model(uri).predict`` of one image, and of the whole test set;
- REST: one-image requests (p50, p95) and 100-image requests (images/s) against
  `mlflow models serve --env-manager local` and `mnist-pipeline serve`;
- load: a bounded load test against `mnist-pipeline serve` (``LOAD_CLIENTS`` threads,
  ``LOAD_REQUESTS`` one-image requests in all): errors, p50, p99, /health afterwards;
- follow: the load test again while the champion's alias moves, then SWAPS more swaps and the
  server's memory. Every request goes to 127.0.0.1, to a server this module started.
"""

import concurrent.futures
import functools
import itertools
import json
import sys
import threading
import time
import timeit
import urllib.error
import urllib.request

import mlflow
import numpy as np
import psutil
from mlflow.entities.model_registry import ModelVersion

from benchmarks.servers import answers, server, wait_for
from mnist_pipeline import names
from mnist_pipeline.tracking import logged_model

ONE_IMAGE_REQUESTS = 200
BATCH_IMAGES, BATCH_REQUESTS = 100, 30
LOAD_CLIENTS, LOAD_REQUESTS = 8, 2000
FOLLOW_REFRESH_SECONDS = 1.0  # the follow benchmark's --refresh-seconds (the default is 30)
STEADY_REQUESTS = 200  # answers awaited before each move of the alias and after the last
SWAPS = 20  # swaps after the follow load test, for the server's memory


def pyfunc_speed(images: np.ndarray, single: int = 50) -> dict:
    """Pyfunc prediction of the current store's champion: images/s in one batch, ms for one."""
    model = logged_model.load_pyfunc(names.CHAMPION_URI)
    batch = images.astype("float32")
    model.predict(batch[:10])  # warm up
    batched = timeit.repeat(lambda: model.predict(batch), number=1, repeat=3)
    one = [timeit.timeit(lambda i=i: model.predict(batch[i : i + 1]), number=1) for i in range(single)]
    return {"pyfunc_images_per_s": len(batch) / np.median(batched), "pyfunc_one_image_ms": 1000 * np.median(one)}


# The two ways to serve the champion over REST (servers.server adds --port).
SERVERS = {
    "mlflow_serve": ["mlflow", "models", "serve", "-m", names.CHAMPION_URI, "--env-manager", "local"],
    "pipeline_serve": [sys.executable, "-m", "mnist_pipeline", "serve", "--model-uri", names.CHAMPION_URI],
}


def rest_speed(images: np.ndarray, env: dict[str, str]) -> dict:
    """Per server, after a first request: one-image p50 and p95 (ms) of ONE_IMAGE_REQUESTS
    requests, and the images/s of BATCH_IMAGES-image requests; then the load test against
    `mnist-pipeline serve`."""
    report, batch = {}, request_body(images[:BATCH_IMAGES])
    one = [request_body(images[i % len(images)][None]) for i in range(ONE_IMAGE_REQUESTS)]
    for name, command in SERVERS.items():
        with server(command, env) as (url, _):
            post(url, one[0])  # warm up
            latencies = [timeit.timeit(functools.partial(post, url, body), number=1) for body in one]
            batched = timeit.repeat(functools.partial(post, url, batch), number=1, repeat=BATCH_REQUESTS)
            report |= percentiles_ms(latencies, f"{name}_one_image_", 50, 95)
            report[f"{name}_batch_images_per_s"] = BATCH_IMAGES / float(np.median(batched))
            if name == "pipeline_serve":
                report |= {f"load_{key}": value for key, value in load_test(url, images).items()}
    return report


def follow_speed(images: np.ndarray, env: dict[str, str], folder: str) -> dict:
    """`mnist-pipeline serve` of the champion, reading its alias every FOLLOW_REFRESH_SECONDS,
    under the load test while the alias moves to a second good version, back, to it again
    and to a broken version (follow_summary); then SWAPS more swaps, and the server's
    resident memory after the first of them and after the last."""
    first, second, broken = bench_versions(names.MODEL_NAME, names.CHAMPION, folder)
    move = alias_mover(names.MODEL_NAME, names.CHAMPION)
    command = [*SERVERS["pipeline_serve"], "--refresh-seconds", str(FOLLOW_REFRESH_SECONDS)]
    with server(command, env) as (url, process):
        report = follow_summary(*follow_load(url, images, move, [second, first, second, broken]))
        resident = []
        for swap in range(SWAPS):
            _move_and_wait(url, move, first if swap % 2 == 0 else second)
            wait_for(lambda: model_state(url)["models_held"] <= 1, "the version swapped out released")
            resident.append(psutil.Process(process.pid).memory_info().rss / 2**20)
    memory = {"rss_after_first_swap_mib": resident[0], "rss_after_last_swap_mib": resident[-1], "swaps_for_rss": SWAPS}
    return {f"follow_{key}": value for key, value in (report | {"refresh_s": FOLLOW_REFRESH_SECONDS}).items()} | memory


def load_test(url: str, images: np.ndarray, clients: int = LOAD_CLIENTS, requests: int = LOAD_REQUESTS) -> dict:
    """``requests`` one-image requests (and those in flight at the last) from ``clients``
    threads at once; then /health."""
    answered, _ = follow_load(url, images, None, [], clients, requests)
    latencies = [end - start for start, end, status, *_ in answered if status == 200]
    wall = max(end for _, end, *_ in answered) - min(start for start, *_ in answered)
    return {
        "requests": len(answered),
        "clients": clients,
        "errors": len(answered) - len(latencies),
        **percentiles_ms(latencies, "", 50, 99),
        "requests_per_s": len(latencies) / wall,
        "health_after": answers(f"{url}/health"),
    }


def follow_load(url: str, images: np.ndarray, move, moves, clients: int = LOAD_CLIENTS, requests: int = LOAD_REQUESTS):
    """One-image requests from ``clients`` threads, ``requests`` at least, while ``move(v)``
    points the alias at each version of ``moves`` in turn; after each move, until /model
    serves it or has refused it; STEADY_REQUESTS answers (at most ``requests``) before each
    move and after the last. Returns every answer as (start, end, status, X-Model-Version,
    image index, probabilities or error) and every move as (version, moved at, served or
    refused at, what /model said then), times in seconds of time.perf_counter."""
    answers_, stop, sent = [], threading.Event(), itertools.count()
    bodies = [request_body(images[i][None]) for i in range(min(len(images), requests))]

    def client() -> None:
        while (n := next(sent)) < requests or not stop.is_set():
            # its start, then its answer: a tuple's items are evaluated left to right
            answers_.append((time.perf_counter(), *timed_answer(url, bodies[n % len(bodies)], n % len(bodies))))

    moved, steady = [], min(STEADY_REQUESTS, requests)
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        workers = [pool.submit(client) for _ in range(clients)]
        try:
            for version in [*moves, None]:  # steady state before each move and after the last
                target = len(answers_) + steady  # more answers, or every client stopped
                wait_for(lambda t=target: len(answers_) >= t or all(w.done() for w in workers), f"{steady} answers")
                if version is not None:
                    moved.append(_move_and_wait(url, move, version))
        finally:
            stop.set()
    for worker in workers:
        worker.result()  # a client's exception, raised here
    return answers_, moved


def timed_answer(url: str, body: bytes, index: int) -> tuple:
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            probabilities = json.loads(response.read())["predictions"][0]
            return time.perf_counter(), response.status, response.headers["X-Model-Version"], index, probabilities
    except urllib.error.HTTPError as err:
        return time.perf_counter(), err.code, err.headers["X-Model-Version"], index, err.read()[:300]
    except (OSError, ValueError) as err:
        return time.perf_counter(), None, None, index, repr(err)


def _move_and_wait(url: str, move, version: str) -> tuple:
    """Points the alias at ``version``; waits until /model serves it or reports it refused."""
    moved = time.perf_counter()
    move(version)

    def settled() -> dict | None:
        state = model_state(url)
        return state if version in (state["version"], (state["refused"] or {}).get("version")) else None

    state = wait_for(settled, f"version {version} served or refused after the alias moved")
    return version, moved, time.perf_counter(), state


def follow_summary(answers_: list, moved: list) -> dict:
    """Errors, swap lags (p50, max) and latencies (p50, p99) in steady state and during swaps."""
    lags = [done - start for version, start, done, state in moved if state["version"] == version]
    swapping = [(start, done) for _, start, done, _ in moved]
    latencies = {True: [], False: []}  # during a swap or not
    for s, e, *_ in answers_:
        latencies[any(a <= e and s <= b for a, b in swapping)].append(e - s)
    return {
        "requests": len(answers_),
        "errors": sum(status != 200 for _, _, status, *_ in answers_),
        "swaps": len(lags),
        "swap_lag_p50_s": float(np.median(lags)) if lags else float("nan"),
        "swap_lag_max_s": max(lags, default=float("nan")),
        **percentiles_ms(latencies[False], "steady_", 50, 99),
        **percentiles_ms(latencies[True], "swapping_", 50, 99),
    }


def percentiles_ms(seconds: list[float], prefix: str, *percents: int) -> dict[str, float]:
    """``{prefix}p{q}_ms``: the ``q``th percentile of ``seconds`` in milliseconds, for each ``q``
    of ``percents`` (NaN for no seconds)."""
    return {f"{prefix}p{q}_ms": 1000 * float(np.percentile(seconds, q)) if seconds else float("nan") for q in percents}


def model_state(url: str) -> dict:
    """GET /model: who serves."""
    with urllib.request.urlopen(f"{url}/model", timeout=10) as response:
        return json.loads(response.read())


def post(url: str, body: bytes) -> dict:
    """POST a JSON body to /invocations; the parsed answer (HTTPError on a 4xx or 5xx)."""
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def request_body(images: np.ndarray) -> bytes:
    return json.dumps({"inputs": images.astype(float).tolist()}).encode()


def bench_versions(name: str, alias: str, folder: str) -> dict[str, str]:
    """Versions for the follow test and benchmark, beside ``alias``'s: a second good one (the
    model of another training run of the champion's experiment) and a broken one (the alias's
    files with a model.keras that is not one, kept in ``folder``). Version -> run id, in that
    order, and the alias's first."""
    client = mlflow.MlflowClient()
    first = client.get_model_version_by_alias(name, alias)
    second = other_version(name, first)
    broken = mlflow.artifacts.download_artifacts(f"models:/{name}/{first.version}", dst_path=folder)
    with open(f"{broken}/data/model.keras", "wb") as model_file:
        model_file.write(b"not a Keras file")
    third = client.create_model_version(name, broken, run_id=first.run_id)
    return {str(v.version): v.run_id for v in (first, second, third)}


def other_version(name: str, first) -> ModelVersion:
    """A new version of ``name``: the model of the newest other FINISHED training run in the
    experiment of version ``first``'s run."""
    client = mlflow.MlflowClient()
    experiment = client.get_run(first.run_id).info.experiment_id
    runs = client.search_runs([experiment], "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"])
    other = next(r.info.run_id for r in runs if "variant" in r.data.params and r.info.run_id != first.run_id)
    return client.create_model_version(name, logged_model.logged_model_uri(other), run_id=other)


def alias_mover(name: str, alias: str):
    """``move(version)``: points ``alias`` of ``name`` at ``version``, as a release manager would."""
    return functools.partial(mlflow.MlflowClient().set_registered_model_alias, name, alias)
