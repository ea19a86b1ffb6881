"""Fixtures: tiny synthetic MNIST folders, a private MLflow store per test, a PostgreSQL-
backed tracking server, and the end-of-suite check that no run is left RUNNING; and, with
pytest-xdist, which tests share a worker. The helpers they use live in helpers/."""

from __future__ import annotations

import ast
import collections
import contextlib
import functools
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from helpers.data import tiny_arrays, write_idx_folder
from helpers.stores import forget_store
from mnist_pipeline.core import data


@pytest.fixture
def tiny_mnist_dir(tmp_path) -> Path:
    return write_idx_folder(tmp_path / "tiny-mnist", tiny_arrays())


@pytest.fixture
def tiny_mnist(tiny_mnist_dir) -> data.Mnist:
    return data.load(tiny_mnist_dir)


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """A new MLflow SQLite store, its tables made: each test's store starts as a copy of it.
    Making the tables (MLflow's migrations) takes 1-2 s here, a copy milliseconds."""
    import mlflow

    template = tmp_path_factory.mktemp("empty-store") / "template.db"  # not mlflow.db: no_run_left_running skips it
    mlflow.MlflowClient(f"sqlite:///{template}").search_experiments()
    return template


def _private_store(folder: Path, template: Path, monkeypatch) -> str:
    """A copy of ``template`` in ``folder`` as the store of this process and the commands it
    starts; artifacts land in folder/mlruns (the working directory is ``folder``)."""
    import mlflow

    db = folder / "mlflow.db"
    shutil.copyfile(template, db)
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        # the copy's Default experiment keeps its artifacts in ./mlruns/0, as a new store's would
        changed = connection.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(folder / "mlruns" / "0"),)
        ).rowcount
    assert changed == 1, f"{template}: no Default experiment to point at {folder}"
    uri = f"sqlite:///{db}"
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    mlflow.set_tracking_uri(uri)
    return uri


def _leave_store() -> None:
    import mlflow

    while mlflow.active_run():
        mlflow.end_run("FAILED")
    forget_store()


@pytest.fixture
def tracking_store(tmp_path, monkeypatch, empty_store) -> str:
    """A private SQLite store; artifacts land in tmp_path/mlruns (cwd is tmp_path)."""
    yield _private_store(tmp_path, empty_store, monkeypatch)
    _leave_store()


# Every tracking store the suite wrote, and the runs still RUNNING in it after the suite.
RUNNING_AFTER_SUITE: dict[str, list[str]] = {}
RUNS_CHECKED = [0]


def _check_no_run_running(store: str, runs: list[tuple[str, str]]) -> None:
    """Record ``runs`` ((run id, status) pairs) of ``store`` for the end-of-suite count."""
    RUNS_CHECKED[0] += len(runs)
    RUNNING_AFTER_SUITE[store] = [run_id for run_id, status in runs if status == "RUNNING"]


@pytest.fixture(scope="session", autouse=True)
def no_run_left_running(tmp_path_factory):
    """After the whole suite, no run in any SQLite store a test wrote (the per-test stores
    and those of `mlflow run` subprocesses) is RUNNING. The server's runs are counted by
    the tracking_server fixture before it stops."""
    yield
    for db in sorted(tmp_path_factory.getbasetemp().rglob("mlflow.db")):
        with contextlib.closing(sqlite3.connect(db)) as connection:
            try:
                runs = connection.execute("SELECT run_uuid, status FROM runs").fetchall()
            except sqlite3.OperationalError:  # created but never reached a run
                runs = []
        _check_no_run_running(str(db), runs)
    left = {store: ids for store, ids in RUNNING_AFTER_SUITE.items() if ids}
    assert not left, f"runs left RUNNING after the suite: {left}"


# pytest-xdist: each worker checks its own stores; the summary adds up the workers' counts.
WORKERS_CHECKED: list[tuple[int, int, int]] = []  # (stores, runs, left RUNNING) per worker
WORKERS_SILENT: list[str] = []  # workers that ended without their counts (a crash)


def _counts() -> tuple[int, int, int]:
    return len(RUNNING_AFTER_SUITE), RUNS_CHECKED[0], sum(len(ids) for ids in RUNNING_AFTER_SUITE.values())


@pytest.hookimpl(trylast=True)  # after the session's fixtures are torn down
def pytest_sessionfinish(session):
    if hasattr(session.config, "workeroutput"):  # an xdist worker: tell the controller
        session.config.workeroutput["runs_checked"] = _counts()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    if "runs_checked" in getattr(node, "workeroutput", {}):
        WORKERS_CHECKED.append(tuple(node.workeroutput["runs_checked"]))
    else:
        WORKERS_SILENT.append(node.gateway.id)


def pytest_terminal_summary(terminalreporter):
    stores, runs, left = (sum(column) for column in zip(_counts(), *WORKERS_CHECKED))
    if stores:
        terminalreporter.write_line(
            f"tracking stores checked after the suite: {stores}, runs: {runs}, left RUNNING: {left}"
        )
    if WORKERS_SILENT:
        terminalreporter.write_line(f"workers that ended without checking their stores: {', '.join(WORKERS_SILENT)}")


def _register(data_dir: Path, epochs: int = 2, batch_size: int = 64) -> None:
    """A `main` run of two variants (tiny data: 2 epochs of batches of 64) that registers its best child."""
    from mnist_pipeline import cli

    argv = ["main", "--variants", "baseline,final", "--epochs", str(epochs), "--batch-size", str(batch_size)]
    argv += ["--data-dir", str(data_dir), "--workers", "1"]  # in this process: workers start in seconds
    assert cli.run(argv) == 0


@pytest.fixture
def registered(tracking_store, tiny_mnist_dir):
    """A private store with a `main` run of two tiny variants that registered its best child."""
    _register(tiny_mnist_dir)
    return tracking_store


@pytest.fixture(scope="module")
def registered_once(tmp_path_factory, empty_store):
    """`registered`, made once for a test module whose tests share it: they read the store
    (serving), or add runs no other test of the module counts (the registry's consumers)."""
    folder = tmp_path_factory.mktemp("registered")
    with pytest.MonkeyPatch.context() as monkeypatch:
        uri = _private_store(folder, empty_store, monkeypatch)
        _register(write_idx_folder(folder / "tiny-mnist", tiny_arrays()))
        yield uri
        _leave_store()


@pytest.fixture(scope="module")
def registered_on_mnist(tmp_path_factory, empty_store):
    """`registered_once` on the real MNIST: one epoch of baseline and final (about 30 s here)."""
    from helpers.stores import REAL_MNIST

    folder = tmp_path_factory.mktemp("registered-mnist")
    with pytest.MonkeyPatch.context() as monkeypatch:
        uri = _private_store(folder, empty_store, monkeypatch)
        _register(REAL_MNIST, epochs=1, batch_size=128)
        yield uri
        _leave_store()


@pytest.fixture(scope="session")
def postgres():
    """A fresh PostgreSQL cluster on loopback for the whole session (its .url for SQLAlchemy)."""
    import shutil
    import tempfile

    from helpers.servers import Postgres, postgres_bin

    if not (postgres_bin("initdb") and postgres_bin("pg_ctl")):
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
    pytest.importorskip("psycopg2", reason="the server's PostgreSQL driver: pip install -e '.[test]'")
    # not under pytest's 0700 temp folder: the `postgres` user must reach it
    pg_root = Path(tempfile.mkdtemp(prefix="mnist-pg-"))
    cluster = Postgres(pg_root)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(pg_root, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(postgres, tmp_path_factory):
    """An `mlflow server` on the session's PostgreSQL, proxying artifacts. A test may stop
    it and start it again (same port, same store)."""
    import mlflow

    from helpers.servers import MlflowServer

    server = MlflowServer(postgres.url, tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server.start()
        client = mlflow.MlflowClient(server.uri)
        ids = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(ids, max_results=5000) if ids else []
        _check_no_run_running(server.uri, [(r.info.run_id, r.info.status) for r in runs])
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tracking_server(mlflow_server) -> str:
    """URI of the session's `mlflow server`."""
    return mlflow_server.uri


@pytest.fixture
def server_store(tracking_server, request, monkeypatch, tmp_path):
    """The shared server as this test's tracking URI, in an experiment of its own."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    experiment = f"{request.node.name}-{os.getpid()}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    mlflow.set_tracking_uri(tracking_server)
    mlflow.set_experiment(experiment)
    yield tracking_server
    _leave_store()


@pytest.fixture(scope="session")
def team_server(postgres, tmp_path_factory):
    """`mlflow server --app-name basic-auth` on the session's PostgreSQL (its runs and its users
    in databases of their own) with a team set up by `mnist-pipeline team` as its admin: a
    researcher, a release manager, a consumer, and a user outside the team (helpers/team.py)."""
    pytest.importorskip("flask_wtf", reason="the basic-auth app: pip install 'mlflow[auth]'")
    from helpers import team
    from helpers.servers import AuthServer

    secrets = {"admin": team.password(), "key": team.password()}
    server = AuthServer(postgres, tmp_path_factory.mktemp("team-server"), secrets)
    try:
        server.start()
        passwords = {AuthServer.ADMIN: secrets["admin"]} | {u: team.password() for u in [*team.ROLES, team.OUTSIDER]}
        crew = team.Team(
            server.uri, passwords, {"server secret key": secrets["key"]}, server.root / "mlflow-server.log"
        )
        team.set_up(crew)
        yield crew
        with crew.as_user() as client:
            ids = [e.experiment_id for e in client.search_experiments()]
            runs = client.search_runs(ids, max_results=5000) if ids else []
        _check_no_run_running(server.uri, [(r.info.run_id, r.info.status) for r in runs])
    finally:
        server.stop()


# The servers' fixtures start once per process. With pytest-xdist, the test modules whose
# tests or fixtures take one as an argument all run in the same worker, so each server starts
# once; every other module goes to a worker whole, so its module fixtures are made once too.
# xdist's public way, `--dist loadgroup` with xdist_group marks, groups nothing under pytest 9.2
# (pytest-xdist#1386: it renames node ids, which pytest 9.2 no longer lets it), so this
# scheduler overrides LoadScopeScheduling's private _split_scope: pyproject.toml bounds xdist.
# The wall time is the slower worker's, so the groups are handed out longest first, lest a long
# one start last while the other worker idles: xdist's order (most tests first) is the reverse
# here. First the servers' group, then a module with a test on the real MNIST (slow), then
# the modules of fewest tests, which are those of long ones (a training, a process, a server
# each); the modules of many quick checks fill the end.
SERVER_FIXTURES = {"postgres", "mlflow_server", "tracking_server", "server_store", "team_server"}


@functools.cache
def _group(path: Path) -> str:
    functions = (node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef))
    uses = any(arg.arg in SERVER_FIXTURES for function in functions for arg in function.args.args)
    return "servers" if uses else str(path)


@functools.cache
def _slow(scope: str) -> bool:
    return scope != "servers" and "pytest.mark.slow" in Path(scope).read_text()


class _LongestFirst(collections.OrderedDict):
    """The scheduler's queue of groups ({group: {node id: done}}), which hands out the longest first."""

    def popitem(self, last=True):
        scope = min(self, key=lambda scope: (scope != "servers", not _slow(scope), len(self[scope])))
        return scope, self.pop(scope)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "load":  # a --dist the user chose
        return None
    from xdist.scheduler import LoadScopeScheduling

    assert "_split_scope" in vars(LoadScopeScheduling), "pytest-xdist no longer has the method ByGroup overrides"

    class ByGroup(LoadScopeScheduling):
        def __init__(self, config, log):
            super().__init__(config, log)
            assert type(self.workqueue) is collections.OrderedDict, "pytest-xdist's queue of groups changed"
            self.workqueue = _LongestFirst()

        def _split_scope(self, nodeid: str) -> str:
            return _group(config.rootpath / nodeid.split("::", 1)[0])

    return ByGroup(config, log)
