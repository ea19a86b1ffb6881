"""The serving runs on a SQLite store, windows fed by hand: one run per pair of versions, its
params, metrics by step, tables and version tags; a pair change; a store that goes away and
comes back; the buffer's bound; a user who may not create runs."""

import logging
import time
import types

import mlflow
import numpy as np
import pandas as pd
import pytest

from helpers.checks import wait_until
from mnist_pipeline import names
from mnist_pipeline.core import live
from mnist_pipeline.tracking import access, liveness, serving_runs, shadowing, store

MODEL = "digits"


def window(champion, challenger=None) -> live.Window:
    """A window of one request: the champion's classes and, if shadowed, the challenger's."""
    made = live.Window()
    ours = made.answer(np.eye(10)[champion], 0.002)
    if challenger is not None:
        made.shadow(ours, np.eye(10)[challenger], 0.004)
    return made


@pytest.fixture
def lines():
    """The server's log lines (serve turns the logger's propagation off: a handler of our own)."""
    said = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: said.append(record.getMessage())
    serving_runs.LOG.addHandler(handler)
    level, serving_runs.LOG.level = serving_runs.LOG.level, logging.INFO
    yield said
    serving_runs.LOG.removeHandler(handler)
    serving_runs.LOG.setLevel(level)


@pytest.fixture
def versions(tracking_store):
    """Three versions of MODEL (no files: only their tags are read here)."""
    client = mlflow.MlflowClient()
    client.create_registered_model(MODEL)
    return [str(client.create_model_version(MODEL, f"file:///nowhere/{n}").version) for n in range(3)]


def make(pair, client=None) -> serving_runs.ServingRuns:
    return serving_runs.ServingRuns(MODEL, f"{MODEL}-serving", lambda: pair[0], 0.5, 60.0, client=client)


def runs_of(experiment=f"{MODEL}-serving"):
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return []
    return mlflow.search_runs([found.experiment_id], output_format="list", order_by=["attributes.start_time"])


def steps(run_id, key="requests"):
    return [(m.step, m.value) for m in mlflow.MlflowClient().get_metric_history(run_id, key)]


def table(run_id, name) -> pd.DataFrame:
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=names.SERVING_TABLES[name])
    return pd.read_csv(path, index_col=0)


def test_a_pair_s_run_holds_its_params_windows_tables_and_tags_and_ends_finished(versions):
    pair = [(versions[0], versions[1])]
    runs = make(pair)
    assert runs.on_window(1, window([3, 4], [3, 5])) is False
    assert runs.on_window(2, live.Window()) is False
    runs.close(3, window([7]))
    [run] = runs_of()
    assert run.info.status == "FINISHED" and run.info.run_name == f"serve v{versions[0]} vs v{versions[1]}"
    assert run.data.params == {
        "model": MODEL,
        "champion_version": versions[0],
        "challenger_version": versions[1],
        "shadow_fraction": "0.5",
        "window_seconds": "60.0",
    }
    assert run.data.tags[names.TAG_ROLE] == names.ROLE_SERVE and names.TAG_HEARTBEAT in run.data.tags
    assert names.TAG_PID in run.data.tags  # liveness: a later serve ends it KILLED only if this one died
    assert steps(run.info.run_id) == [(1, 1), (2, 0), (3, 1)]
    assert steps(run.info.run_id, "agreement") == [(1, 0.5)]
    assert table(run.info.run_id, "agreement").loc[3, "challenger_3"] == 1
    assert table(run.info.run_id, "predicted")["champion"].tolist() == [0, 0, 0, 1, 1, 0, 0, 1, 0, 0]
    tables = {name: table(run.info.run_id, name) for name in names.SERVING_TABLES}
    assert live.Window.from_tables(tables).figures() == (window([3, 4], [3, 5]) + window([7])).figures()
    client = mlflow.MlflowClient()
    for version in versions[:2]:
        assert client.get_model_version(MODEL, version).tags[names.TAG_SERVING_RUN] == run.info.run_id
    assert names.TAG_SERVING_RUN not in client.get_model_version(MODEL, versions[2]).tags


def test_a_pair_change_ends_the_run_finished_and_the_next_counts_its_own_windows(versions):
    pair = [(versions[0], None)]
    runs = make(pair)
    runs.on_window(1, window([1]))
    pair[0] = (versions[0], versions[2])
    assert runs.on_window(2, window([2, 2])) is True  # it began with the first pair: it goes to its run
    wait_until(lambda: len(runs_of()) == 2 and runs_of()[0].info.status == "FINISHED")
    assert runs.on_window(1, window([5], [5])) is False
    runs.close()
    first, second = runs_of()
    assert first.data.params["challenger_version"] == "none" and first.info.run_name == f"serve v{versions[0]}"
    assert steps(first.info.run_id) == [(1, 1), (2, 1)]
    assert table(first.info.run_id, "counts").loc["champion_top_probability", "value"] == 3
    assert second.data.params["challenger_version"] == versions[2] and second.info.status == "FINISHED"
    assert steps(second.info.run_id) == [(1, 1)]
    assert table(second.info.run_id, "predicted")["champion"].sum() == 1  # its own total, not the first's
    tagged = mlflow.MlflowClient().get_model_version(MODEL, versions[0]).tags[names.TAG_SERVING_RUN]
    assert tagged == second.info.run_id  # the latest


def test_the_shadow_s_total_starts_again_with_a_new_pair(tracking_store, lines):
    pair = [("1", None)]  # versions of no registered model: the runs are kept, the tags said
    runs = make(pair)
    shadow = shadowing.Shadow(lambda: None, 1.0, 5.0, 0.05, runs.on_window)
    try:
        shadow.answered("a", np.zeros((1, 28, 28)), np.eye(10)[[4]], 0.001, types.SimpleNamespace(version="1"))
        wait_until(lambda: shadow.state()["windows_closed"] >= 1)
        assert shadow.state()["total"]["requests"] == 1
        pair[0] = ("2", None)
        wait_until(lambda: len(runs_of()) == 2)
        assert shadow.state()["total"]["requests"] == 0
    finally:
        runs.close(*shadow.stop())
    first, second = runs_of()
    assert sum(v for _, v in steps(first.info.run_id)) == 1 and steps(second.info.run_id)[0] == (1, 0)
    assert [line.split(":")[0] for line in lines] == ["version 1 is not tagged with its serving run"] + [
        "version 2 is not tagged with its serving run"
    ]


class Store:
    """The store going away and coming back: the client's calls and the one-attempt batches
    raise while ``down``; the batches that got through, in order."""

    def __init__(self, monkeypatch):
        self.down, self.sent, real, client = True, [], store.log_batch_once, mlflow.MlflowClient()

        def log_batch_once(run_id, metrics, tags):
            self.check()
            real(run_id, metrics, tags)
            self.sent += [m.step for m in metrics if m.key == "requests"]

        monkeypatch.setattr(serving_runs.store, "log_batch_once", log_batch_once)
        monkeypatch.setenv(store.RETRY_VARIABLE, "0.02")
        self.client = types.SimpleNamespace(
            **{name: self.guard(getattr(client, name)) for name in dir(client) if not name.startswith("_")}
        )

    def check(self):
        if self.down:
            raise ConnectionError("Connection refused")

    def guard(self, call):
        return lambda *args, **kwargs: self.check() or call(*args, **kwargs)


def test_windows_wait_while_the_store_is_away_and_all_arrive_in_order(versions, monkeypatch, lines):
    flaky = Store(monkeypatch)
    runs = make([(versions[0], None)], flaky.client)
    for number in range(1, 6):
        runs.on_window(number, window([number]))
    assert runs.state()["windows_waiting"] >= 5 and runs_of() == []
    flaky.down = False
    wait_until(lambda: runs.state()["windows_waiting"] == 0)
    runs.close()
    assert flaky.sent == [1, 2, 3, 4, 5]
    [run] = runs_of()
    assert steps(run.info.run_id) == [(n, 1) for n in range(1, 6)] and run.info.status == "FINISHED"
    assert table(run.info.run_id, "predicted")["champion"].tolist() == [0] + [1] * 5 + [0] * 4
    assert [line.split(" (")[0].split(":")[0] for line in lines] == [
        "tracking store does not take the serving figures",
        "tracking store takes the serving figures again",
    ]
    assert "5 windows kept are sent in order, 0 were dropped" in lines[1]


def test_the_buffer_is_bounded_and_its_drops_are_counted_and_said(versions, monkeypatch, lines):
    monkeypatch.setattr(serving_runs, "BUFFER_WINDOWS", 3)
    flaky = Store(monkeypatch)
    runs = make([(versions[0], None)], flaky.client)
    for number in range(1, 6):
        runs.on_window(number, window([number]))
    assert runs.state()["windows_dropped"] == 2 and runs.state()["windows_waiting"] == 3
    flaky.down = False
    wait_until(lambda: runs.state()["windows_waiting"] == 0)
    runs.close()
    assert flaky.sent == [3, 4, 5] and "3 windows kept are sent in order, 2 were dropped" in lines[-1]
    [run] = runs_of()
    assert run.info.status == "FINISHED"
    # the tables are the pair's whole total: the dropped windows' metrics are lost, not their counts
    assert table(run.info.run_id, "predicted")["champion"].sum() == 5


def test_a_user_who_may_not_create_runs_serves_on_with_one_line_and_no_run(versions, monkeypatch, lines):
    refusal = access.Refusal("user cody may not create runs in experiment 'digits-serving' for `serve`")
    monkeypatch.setattr(serving_runs.access, "runs_refusal", lambda command, experiment_id: refusal)
    pair = [(versions[0], None)]
    runs = make(pair)
    wait_until(lambda: not runs.state()["figures_recorded"])
    runs.on_window(1, window([1]))
    pair[0] = (versions[0], versions[1])
    assert runs.on_window(2, window([1])) is True  # the shadow's totals still follow the pair
    runs.close(3, window([2]))
    assert runs_of() == [] and runs.state()["windows_waiting"] == 0
    assert lines == [f"serving figures are not recorded in MLflow, only in GET /model: {refusal}"]


def test_the_run_of_a_server_that_died_ends_killed_with_its_windows_when_the_next_serve_begins(versions, capsys):
    client = mlflow.MlflowClient()
    experiment = client.create_experiment(f"{MODEL}-serving")
    gone = {**liveness.tags(), names.TAG_PID: "999999", names.TAG_PROCESS_START: "1.000"}  # this user, a dead process
    dead = client.create_run(experiment, tags={**gone, names.TAG_ROLE: names.ROLE_SERVE}, run_name="serve v1")
    for step in (1, 2):
        client.log_metric(dead.info.run_id, "requests", 5, timestamp=int(time.time() * 1000), step=step)
    runs = make([(versions[0], None)])
    wait_until(lambda: client.get_run(dead.info.run_id).info.status == "KILLED")
    runs.close()
    [line] = [x for x in capsys.readouterr().out.splitlines() if dead.info.run_id in x]
    assert line.startswith(f"run {dead.info.run_id} (serve v1) was RUNNING") and line.endswith(
        "ended KILLED, 2 windows kept"
    )
