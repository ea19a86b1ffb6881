"""The README's pictures of the MLflow UI, taken from a real `mlflow ui`.

A short `mlflow run .` (2 epochs per variant) fills a fresh store, `mlflow ui` serves it on
a free port of 127.0.0.1, and Debian's Chromium, driven by Playwright, takes four pictures:
the runs table with the variants nested under their `main` run, the compare view of the three
variants, the registered model with its aliases, the champion's logged model with its
metrics by dataset (after `evaluate --log`), and a serving run: `mnist-pipeline serve` of the
champion shadowing another variant's version as challenger, the test images replayed with their
labels for SERVE_SECONDS in windows of WINDOW_SECONDS. They are written to docs/img/ as small
palette PNGs.

    apt-get install chromium && pip install playwright    # once
    python docs/screenshots.py                            # MNIST: --data-dir, else $MNIST_DATA_DIR, else Keras
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "img"
CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1440, "height": 800}
CLIP = {"x": 200, "y": 0, "width": 1240, "height": 420}  # the page without MLflow's sidebar
COLORS = 64  # palette size of the saved PNGs: text and charts stay sharp, files stay small
SERVE_SECONDS, WINDOW_SECONDS = 60, 5
TOKEN = "screenshots-feedback-token"


def fill_store(store: Path, data_dir: str) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db", "MNIST_DATA_DIR": data_dir}
    command = ["mlflow", "run", str(ROOT), "--env-manager", "local"]
    subprocess.run([*command, "-P", "epochs=2"], cwd=store, env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        [*command, "-e", "evaluate", "-P", "log=true"], cwd=store, env=env, check=True, stdout=subprocess.DEVNULL
    )


def serve_and_replay(store: Path, data_dir: str) -> None:
    """A challenger (the baseline's run, registered), `serve` of the champion shadowing it, and
    test images replayed with their labels from two clients; then serve stopped (its last window sent)."""
    import concurrent.futures

    import mlflow
    import numpy as np

    from mnist_pipeline.core import data
    from mnist_pipeline.tracking import logged_model

    client = mlflow.MlflowClient()
    [baseline] = mlflow.search_runs(
        search_all_experiments=True, filter_string="params.variant = 'baseline'", output_format="list"
    )
    version = client.create_model_version("mnist-digits", logged_model.logged_model_uri(baseline.info.run_id))
    client.set_registered_model_alias("mnist-digits", "challenger", version.version)
    port, env = free_port(), {**os.environ, "MNIST_PIPELINE_FEEDBACK_TOKEN": TOKEN}
    command = ["mnist-pipeline", "serve", "--port", str(port), "--window-seconds", str(WINDOW_SECONDS)]
    with open(store / "serve.log", "w") as log:
        server = subprocess.Popen(command, cwd=store, env=env, stdout=log, stderr=subprocess.STDOUT)
    url, mnist = f"http://127.0.0.1:{port}", data.load(data_dir or None)
    try:
        wait_until(
            lambda: (json.loads(get(f"{url}/model")).get("challenger") or {}).get("version") == str(version.version)
        )
    except RuntimeError:
        server.terminate()
        raise RuntimeError(f"serve: no challenger: {(store / 'serve.log').read_text()[-2000:]}") from None

    def post(path: str, body: dict) -> str:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
        request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.headers.get("X-Request-Id")

    def replay(start: int) -> None:
        end = time.monotonic() + SERVE_SECONDS
        for i in range(start, len(mnist.y_test), 2):
            if time.monotonic() > end:
                return
            request_id = post("/invocations", {"inputs": mnist.x_test[i : i + 1].astype(np.float64).tolist()})
            post("/feedback", {"request_id": request_id, "labels": [int(mnist.y_test[i])]})

    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(replay, (0, 1)))
    finally:
        server.terminate()
        server.wait(timeout=60)


def get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read().decode()
    except OSError:
        return "{}"


def wait_until(condition, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {seconds} s")
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(store: Path, port: int) -> subprocess.Popen:
    command = ["mlflow", "ui", "--backend-store-uri", f"sqlite:///{store}/mlflow.db", "--host", "127.0.0.1"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    ui = subprocess.Popen([*command, "--port", str(port)], cwd=store, **quiet)
    try:
        wait_until(lambda: get(f"http://127.0.0.1:{port}/health") != "{}", 60)
    except RuntimeError:
        ui.terminate()
        raise
    return ui


def ids(store: Path) -> tuple[str, list[str], str]:
    """The experiment's id, the variants' training run ids and the champion's logged model id."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
    import mlflow

    [parent] = mlflow.search_runs(search_all_experiments=True, filter_string="tags.role = 'main'", output_format="list")
    champion = mlflow.MlflowClient().get_model_version_by_alias("mnist-digits", "champion")
    children = list(json.loads(parent.data.tags["children"]).values())
    return parent.info.experiment_id, children, champion.source.removeprefix("models:/")


def open_page(page, url: str, wait_for: str) -> None:
    page.goto(url)
    page.get_by_text(wait_for).first.wait_for(timeout=30_000)
    close = page.get_by_role("button", name="Close")  # MLflow's assistant panel, open at first
    if close.count():
        close.first.click()


def choose_axes(page, params: list[str], metrics: list[str]) -> None:
    """The compare view's parallel-coordinates axes: these params and metrics, no others."""
    page.get_by_role("button", name="Clear All").click()
    boxes = page.get_by_role("combobox")  # the params select, then the metrics select
    for box, names in ((boxes.nth(0), params), (boxes.nth(1), metrics)):
        for name in names:
            box.click()
            box.fill(name)
            page.keyboard.press("Enter")
            page.wait_for_timeout(300)
    page.keyboard.press("Escape")
    page.get_by_text("Comparing 3 Runs").first.scroll_into_view_if_needed()


def shoot(page, path: Path, clip: dict = CLIP) -> None:
    page.wait_for_timeout(2_000)  # charts draw after their data arrives
    page.screenshot(path=str(path), clip=clip)
    Image.open(path).convert("RGB").quantize(COLORS).save(path, optimize=True)
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1024} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DATA_DIR", ""), help="MNIST folder")
    args = parser.parse_args()
    import mlflow
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        fill_store(store, args.data_dir)
        experiment, children, model_id = ids(store)
        serve_and_replay(store, args.data_dir)
        port = free_port()
        ui = start_ui(store, port)
        base = f"http://127.0.0.1:{port}/#"
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = browser.new_page(viewport=VIEWPORT)
                open_page(page, f"{base}/experiments/{experiment}/runs", "main")
                page.get_by_role("row").filter(has_text="main").get_by_role("button").first.click()  # its variants
                page.get_by_text("regularized").first.wait_for(timeout=30_000)
                shoot(page, OUT / "runs.png")
                runs, experiments = json.dumps(children), json.dumps([experiment])
                open_page(page, f"{base}/compare-runs?runs={runs}&experiments={experiments}", "val_accuracy")
                choose_axes(page, params=["hidden_units", "dropout", "l2"], metrics=["val_accuracy", "test_accuracy"])
                shoot(page, OUT / "compare.png", {**CLIP, "height": 620})
                open_page(page, f"{base}/models/mnist-digits", "champion")
                shoot(page, OUT / "model.png", {**CLIP, "height": 520})
                open_page(page, f"{base}/experiments/{experiment}/models/{model_id}", "Metrics")
                page.get_by_placeholder("Search metrics").fill("accuracy")  # the training's and the evaluation's
                shoot(page, OUT / "logged-model.png", {**CLIP, "height": 700})
                serving = mlflow.get_experiment_by_name("mnist-digits-serving").experiment_id
                [run] = mlflow.search_runs(
                    [serving], filter_string="params.challenger_version != 'none'", output_format="list"
                )
                open_page(page, f"{base}/experiments/{serving}/runs/{run.info.run_id}/model-metrics", "agreement")
                shoot(page, OUT / "serving-run.png", {**CLIP, "height": 700})
                browser.close()
        finally:
            ui.terminate()
            ui.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
