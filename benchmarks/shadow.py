"""The shadow's cost to the champion: `mnist-pipeline serve` with a challenger of another
training run, shadowed and not, two servers measured in turns, at half the server's capacity
(an open loop, as independent users send) and at saturation; the share of requests dropped
from the shadow. Every request goes to 127.0.0.1, to a server this module started."""

import concurrent.futures
import itertools
import time

import mlflow
import numpy as np
import pandas as pd

from benchmarks.servers import server, wait_for
from benchmarks.serving import (
    LOAD_CLIENTS,
    SERVERS,
    load_test,
    model_state,
    other_version,
    percentiles_ms,
    request_body,
    timed_answer,
)
from mnist_pipeline import names

SHADOW_SECONDS, SHADOW_REPEATS = 20.0, 5  # each open-loop run; on/off pairs, in turns (p99 of 10 s runs varied 2x)
OPEN_LOOP_THREADS = 32  # senders of the open loop: enough that a request is sent when it is due


def shadow_overhead(images: np.ndarray, env: dict[str, str]) -> list[dict]:
    """`mnist-pipeline serve` of the champion with a challenger of another training run,
    shadowed (--shadow-fraction 1) and not (0), two servers measured in turns: the capacity
    (the load test, shadowing off), then SHADOW_REPEATS pairs of open-loop runs at half of it,
    then the load test on each (saturation). A row per run: the champion's p50 and p99 (ms),
    errors, and the share of requests shadowed and dropped from the shadow (GET /model)."""
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias(names.MODEL_NAME, names.CHAMPION)
    challenger = other_version(names.MODEL_NAME, champion)
    client.set_registered_model_alias(names.MODEL_NAME, names.CHALLENGER, challenger.version)
    rows, command = [], SERVERS["pipeline_serve"]
    try:
        with (
            server([*command, "--shadow-fraction", "1"], env) as (on, _),
            server([*command, "--shadow-fraction", "0"], env) as (off, _),
        ):
            servers = {"on": on, "off": off}
            loaded = str(challenger.version)
            wait_for(lambda: model_state(on)["challenger"]["version"] == loaded, "the challenger loaded")
            rate = load_test(off, images)["requests_per_s"] / 2
            for repeat, shadow in itertools.product(range(SHADOW_REPEATS), servers):
                measured = _shadowed(
                    servers[shadow], lambda u=servers[shadow]: open_loop(u, images, rate, SHADOW_SECONDS)
                )
                rows.append({"load": f"open loop, {rate:.0f}/s", "shadow": shadow, "repeat": repeat, **measured})
            for shadow, url in servers.items():
                measured = _shadowed(url, lambda u=url: load_test(u, images))
                rows.append({"load": f"saturation, {LOAD_CLIENTS} clients", "shadow": shadow, "repeat": 0, **measured})
    finally:
        client.set_registered_model_alias(names.MODEL_NAME, names.CHALLENGER, champion.version)
    return rows


def shadow_summary(rows: list[dict]) -> dict:
    """The open-loop runs' on/off ratios of p50 and p99, pair by pair: their median and spread
    (min, max), and the largest share dropped from the shadow."""
    table = pd.DataFrame([row for row in rows if row["load"].startswith("open")])
    pairs = table.pivot(index="repeat", columns="shadow", values=["p50_ms", "p99_ms"])
    summary = {"shadow_open_loop_max_dropped": float(table["dropped_requests"].max())}
    for q in ("p50", "p99"):
        ratios = pairs[(f"{q}_ms", "on")] / pairs[(f"{q}_ms", "off")]
        summary |= {f"shadow_{q}_ratio": float(ratios.median()), f"shadow_{q}_ratio_min": float(ratios.min())}
        summary[f"shadow_{q}_ratio_max"] = float(ratios.max())
    return summary


def _shadowed(url: str, measure) -> dict:
    """``measure()``'s p50, p99 and errors, and the shares of its requests shadowed and dropped."""
    before = model_state(url)["total"]
    result = measure()
    after = model_state(url)["total"]
    share = {
        key: (after.get(key, 0) - before.get(key, 0)) / (after["requests"] - before["requests"])
        for key in ("shadowed_requests", "dropped_requests")
    }
    return {key: result[key] for key in ("requests", "errors", "p50_ms", "p99_ms")} | share


def open_loop(url: str, images: np.ndarray, rate: float, seconds: float) -> dict:
    """One-image requests due at ``rate`` a second for ``seconds``, sent when due whatever the
    answers (an open loop, as independent users send), each timed from when it was due."""
    bodies = [request_body(images[i][None]) for i in range(min(len(images), 1000))]
    due = time.perf_counter() + 0.5 + np.arange(int(rate * seconds)) / rate

    def send(n: int) -> tuple:
        time.sleep(max(0.0, due[n] - time.perf_counter()))
        status = timed_answer(url, bodies[n % len(bodies)], n)[1]
        return time.perf_counter() - due[n], status

    with concurrent.futures.ThreadPoolExecutor(OPEN_LOOP_THREADS) as pool:
        answered = list(pool.map(send, range(len(due))))
    latencies = [seconds for seconds, status in answered if status == 200]
    errors = len(answered) - len(latencies)
    return {"requests": len(answered), "errors": errors, **percentiles_ms(latencies, "", 50, 99)}
