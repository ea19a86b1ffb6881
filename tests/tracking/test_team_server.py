"""A team on a real `mlflow server --app-name basic-auth` (runs and users in the session's
PostgreSQL): every role against the commands it may and may not run, anonymous and
wrong-password requests, and a grep of everything the session printed and stored for its
secrets.

The session runs once (``session``: tiny data, one epoch), in this order: the refusals at the
door, a researcher's `train`, `reproduce`, `mlflow run -e train` and `main`, a release
manager's `register`, a consumer's `evaluate` and `predict`, a researcher's sweep on
PostgreSQL, `verify`, the consumer's `serve`, and a researcher's `main` with the password in
the tracking URI. Commands run in this process with their output captured, except `mlflow
run` and `serve`. Each test checks one cell.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request

import pytest

from helpers.data import tiny_arrays, write_idx_folder
from helpers.servers import answers, free_port, stop_group, wait_for
from helpers.stores import PROJECT_ROOT
from helpers.team import EXPERIMENT, MODEL, PRIVATE_MODEL, Outcome, store_texts, team_argv
from mnist_pipeline import names

WRONG = "wrong-password-0123"
# a password the server never gave anyone
STORAGE_PASSWORD = "pg-url-password-0123"
PG_PASSWORD = "pg-variable-password-0123"  # PGPASSWORD: PostgreSQL's clients read it; trust auth ignores it


def _state(team) -> dict:
    """The team experiment's runs {id: (name, status)}, and the model's versions and aliases."""
    with team.as_user() as client:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        versions = client.search_model_versions(f"name = '{MODEL}'")
        aliases = client.get_registered_model(MODEL).aliases
    return {
        "runs": {r.info.run_id: (r.info.run_name, r.info.status) for r in runs},
        "versions": sorted(int(v.version) for v in versions),
        "aliases": dict(aliases),
    }


class Session:
    def __init__(self, team, data_dir, storage, home):
        self.team, self.data, self.storage, self.home = team, str(data_dir), storage, home
        self.cells: dict[str, tuple[Outcome, dict, dict]] = {}  # name -> (outcome, state before, after)

    def step(self, name: str, user: str | None, argv: list[str], **kwargs) -> Outcome:
        before = _state(self.team)
        outcome = self.team.run_as(user, argv, **kwargs)
        self.cells[name] = (outcome, before, _state(self.team))
        return outcome

    def main_argv(self) -> list[str]:
        return ["main", "--variants", "baseline", "--epochs", "1", "--batch-size", "64"] + self.common()

    def common(self) -> list[str]:
        return ["--data-dir", self.data, "--model-name", MODEL]

    def run(self) -> Session:
        self.step("anonymous main", None, self.main_argv())
        self.step("wrong password main", "rhea", self.main_argv(), password=WRONG)
        self.step("consumer main", "cody", self.main_argv())
        self.step("outsider main", "otto", self.main_argv())
        # seed 7: not the configuration main trains next (that would reuse this run)
        train = ["train", "--variant", "baseline", "--epochs", "1", "--seed", "7", "--data-dir", self.data]
        self.step("consumer train", "cody", train)
        self.step("consumer reproduce", "cody", ["reproduce", "--variants", "baseline", "--data-dir", self.data])
        self.step("researcher train", "rhea", train)
        reproduce = ["reproduce", "--variants", "baseline", "--seeds", "2", "--epochs", "1", "--data-dir", self.data]
        self.step("researcher reproduce", "rhea", reproduce)
        self.mlflow_run = self._mlflow_run_as_researcher()
        refused = self.step("researcher main", "rhea", self.main_argv())
        self.main_run = re.search(r"run_id=(\w+)", refused.error)[1]
        register = ["register", "--run-id", self.main_run, "--model-name", MODEL]
        self.step("researcher register", "rhea", register)
        self.step("consumer register", "cody", register)
        self.step("release manager register", "remy", register)
        self.step("consumer promote", "cody", ["promote", "--model-name", MODEL])
        champion = f"models:/{MODEL}@champion"
        evaluate = ["evaluate", "--model-uri", champion, "--data-dir", self.data]
        self.step("consumer evaluate", "cody", evaluate)
        self.step("consumer evaluate --log", "cody", evaluate + ["--log", "true"])
        images = os.path.join(self.data, "t10k-images-idx3-ubyte.gz")
        self.step("consumer predict", "cody", ["predict", "--model-uri", champion, images])
        home = self._credentials_file("cody")
        self.step(
            "consumer predict, credentials in a file", None, ["predict", "--model-uri", champion, images], HOME=home
        )
        self.step("outsider evaluate", "otto", ["evaluate", "--model-uri", champion, "--data-dir", self.data])
        self.step(
            "consumer serve of a model it cannot read", "cody", ["serve", "--model-uri", f"models:/{PRIVATE_MODEL}@x"]
        )
        sweep = ["sweep", "--n-trials", "1", "--study-name", "team-sweep"] + self.common()
        self.step("consumer sweep", "cody", sweep + ["--storage", self.storage])
        self.step("researcher sweep", "rhea", sweep + ["--storage", self.storage], PGPASSWORD=PG_PASSWORD)
        with_password = self.storage.replace("mlflow@", f"mlflow:{STORAGE_PASSWORD}@")
        self.step("sweep with a password in storage", "rhea", sweep + ["--storage", with_password])
        verify = ["verify", "--model-uri", champion, "--data-dir", self.data]
        self.step("researcher verify", "rhea", verify)
        self.step("release manager verify", "remy", verify)
        self.step("admin team again", "admin", team_argv())
        self.step("researcher team", "rhea", team_argv())
        promote = ["team", "--experiment", EXPERIMENT, "--model-name", MODEL, "--researchers", "cody"]
        self.step("admin team, the consumer made a researcher", "admin", promote)
        self.served = self._serve_as_consumer(champion)
        uri = self.team.uri.replace("http://", f"http://rhea:{self.team.passwords['rhea']}@")
        self.step("researcher main, the password in the URI", None, self.main_argv(), MLFLOW_TRACKING_URI=uri)
        return self

    def _credentials_file(self, user: str) -> str:
        """A home folder whose ~/.mlflow/credentials holds ``user``'s name and password."""
        home = self.home / user
        (home / ".mlflow").mkdir(parents=True)
        (home / ".mlflow" / "credentials").write_text(
            f"[mlflow]\nmlflow_tracking_username = {user}\nmlflow_tracking_password = {self.team.passwords[user]}\n"
        )
        return str(home)

    def _mlflow_run_as_researcher(self) -> tuple[subprocess.CompletedProcess, dict, dict]:
        """`mlflow run -e train --experiment-name ...` as the researcher, credentials in the variables."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env |= self.team.credentials("rhea") | {"MLFLOW_TRACKING_URI": self.team.uri}
        params = ["variant=baseline", "epochs=1", "seed=11", f"data_dir={self.data}"]
        command = ["mlflow", "run", str(PROJECT_ROOT), "-e", "train", "--env-manager", "local"]
        command += ["--experiment-name", EXPERIMENT] + [arg for p in params for arg in ("-P", p)]
        before = _state(self.team)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        self.team.printed += [done.stdout, done.stderr]
        return done, before, _state(self.team)

    def _serve_as_consumer(self, model_uri: str) -> dict:
        """`serve` as the consumer, a process of its own: the answer to one request, and all it printed."""
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env |= self.team.credentials("cody") | {"MLFLOW_TRACKING_URI": self.team.uri}
        command = [sys.executable, "-m", "mnist_pipeline", "serve", "--model-uri", model_uri, "--port", str(port)]
        server = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            wait_for(lambda: answers(f"http://127.0.0.1:{port}/ping"), "serve", server)
            body = json.dumps({"inputs": [[[0.0] * 28] * 28]}).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.loads(response.read())
        finally:
            stop_group(server)
        printed = server.stdout.read()
        self.team.printed.append(printed)
        return {"answer": answer, "printed": printed}


@pytest.fixture(scope="module")
def session(team_server, postgres, tmp_path_factory, monkeypatch_module) -> Session:
    data = write_idx_folder(tmp_path_factory.mktemp("team-data") / "tiny-mnist", tiny_arrays())
    monkeypatch_module.chdir(tmp_path_factory.mktemp("team-cwd"))
    # unset for the session, and unset again after it (the pipeline sets it in this process)
    monkeypatch_module.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "recorded")
    monkeypatch_module.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")
    home = tmp_path_factory.mktemp("team-homes")
    return Session(team_server, data, postgres.createdb("optuna_team"), home).run()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def cell(session: Session, name: str) -> tuple[Outcome, dict, dict]:
    return session.cells[name]


def new_runs(before: dict, after: dict) -> dict:
    return {k: v for k, v in after["runs"].items() if k not in before["runs"]}


@pytest.mark.parametrize(
    "name, says",
    [
        ("anonymous main", "refused an anonymous request (HTTP 401"),
        ("wrong password main", "refused the credentials of user rhea (HTTP 401"),
        ("consumer main", "user cody may not create runs in experiment 'digits-team'"),
        ("outsider main", "user otto may not read experiment 'digits-team'"),
        ("consumer train", "user cody may not create runs in experiment 'digits-team' (id 1) for `train`"),
        ("consumer reproduce", "user cody may not create runs in experiment 'digits-team' (id 1) for `reproduce`"),
        ("consumer sweep", "user cody may not create runs in experiment 'digits-team' (id 1) for `sweep`"),
        ("researcher register", f"user rhea may not register versions of registered model '{MODEL}' for `register`"),
        ("consumer register", "user cody may not create runs in experiment"),
        ("consumer promote", f"user cody may not move the aliases of registered model '{MODEL}' for `promote`"),
        ("outsider evaluate", f"user otto may not read registered model '{MODEL}' for `evaluate`"),
        (
            "consumer evaluate --log",
            "user cody may not create runs in experiment 'digits-team' (id 1) for `evaluate --log`",
        ),
        ("consumer serve of a model it cannot read", f"user cody may not read registered model '{PRIVATE_MODEL}'"),
        ("sweep with a password in storage", "storage='postgresql+psycopg2://mlflow:***@"),
        ("researcher verify", f"user rhea may not tag versions of registered model '{MODEL}' for `verify`"),
        ("researcher team", "user rhea may not set a team up on http://127.0.0.1:"),
    ],
)
def test_a_refusal_is_one_line_exit_2_and_changes_nothing(session, name, says):
    outcome, before, after = cell(session, name)
    assert outcome.code == 2, outcome.err
    assert says in outcome.error, outcome.err
    assert outcome.err.count("mnist-pipeline: error:") == 1 and "Traceback" not in outcome.err
    assert after == before  # no run, no version, no alias


@pytest.mark.parametrize("name", ["consumer main", "researcher verify", "outsider main"])
def test_a_refusal_names_the_permission_and_who_grants_it(session, name):
    line = cell(session, name)[0].error
    assert "needs EDIT on it and" in line and "the server's admin or a user with MANAGE" in line, line


def test_the_researchers_main_keeps_its_runs_and_hands_registration_to_a_release_manager(session):
    outcome, before, after = cell(session, "researcher main")
    assert outcome.code == 2
    assert f"user rhea may not register versions of registered model '{MODEL}' for `main`" in outcome.error
    assert "needs EDIT on it and rhea has READ" in outcome.error
    assert f"`mlflow run . -e register -P run_id={session.main_run}`" in outcome.error
    assert "note: user rhea may not register versions" in outcome.err
    runs = new_runs(before, after)
    assert sorted(runs.values()) == [("baseline", "FINISHED"), ("main", "FINISHED")]
    assert after["versions"] == before["versions"] == [] and after["aliases"] == {}
    assert outcome.err.count("mnist-pipeline: error:") == 1 and "Traceback" not in outcome.err


def test_the_researcher_trains(session):
    outcome, before, after = cell(session, "researcher train")
    assert outcome.code == 0, outcome.err
    assert list(new_runs(before, after).values()) == [("baseline", "FINISHED")]


def test_the_researcher_reproduces(session):
    outcome, before, after = cell(session, "researcher reproduce")
    assert outcome.code == 0, outcome.err
    assert sorted(new_runs(before, after).values()) == [("baseline", "FINISHED")] * 2 + [("reproduce", "FINISHED")]


def test_the_researcher_trains_under_mlflow_run_in_the_named_experiment(session):
    done, before, after = session.mlflow_run
    assert done.returncode == 0, done.stderr[-2000:]
    runs = new_runs(before, after).values()  # `mlflow run`'s run for the entry point, the training run its child
    assert [status for _, status in runs] == ["FINISHED", "FINISHED"]
    assert [name for name, _ in runs].count("baseline") == 1


def test_the_release_manager_registers_the_researchers_run(session):
    outcome, before, after = cell(session, "release manager register")
    assert outcome.code == 0, outcome.err
    assert after["versions"] == [1] and after["aliases"] == {names.CHAMPION: "1", names.CHALLENGER: "1"}
    assert list(new_runs(before, after).values()) == [("register", "FINISHED")]


def test_the_consumer_evaluates_and_predicts_without_a_run(session):
    outcome, before, after = cell(session, "consumer evaluate")
    assert outcome.code == 0, outcome.err
    assert re.search(r"test accuracy \d\.\d{4}", outcome.out)
    assert "may not" not in outcome.err  # a consumer's evaluate logs nothing, so needs nothing but READ
    assert after == before
    for name in ("consumer predict", "consumer predict, credentials in a file"):
        outcome, before, after = cell(session, name)
        assert outcome.code == 0, outcome.err
        assert len(re.findall(r"\]: \d \(p=", outcome.out)) == 100 and after == before


def test_the_researchers_sweep_trains_on_postgresql_and_leaves_registration(session):
    outcome, before, after = cell(session, "researcher sweep")
    assert outcome.code == 2
    assert f"user rhea may not register versions of registered model '{MODEL}' for `sweep`" in outcome.error
    assert "the trials are kept" in outcome.error
    assert "note: user rhea may not register versions" in outcome.err
    statuses = sorted(status for _, status in new_runs(before, after).values())
    assert statuses == ["FINISHED", "FINISHED"]  # the study's parent run and its trial
    assert after["versions"] == before["versions"]


def test_the_release_manager_verifies_the_champion(session):
    outcome, before, after = cell(session, "release manager verify")
    assert outcome.code == 0, outcome.err
    assert [status for _, status in new_runs(before, after).values()] == ["FINISHED"]


def test_the_team_command_is_idempotent(session):
    outcome, before, after = cell(session, "admin team again")
    assert outcome.code == 0, outcome.err
    assert outcome.out.count("(kept)") == 6 and "granted" not in outcome.out and "created" not in outcome.out
    assert after == before


def test_the_team_command_changes_a_grant_that_differs(session):
    outcome, before, after = cell(session, "admin team, the consumer made a researcher")
    assert outcome.code == 0, outcome.err
    assert "cody (researcher): EDIT on the experiment (changed from READ), READ on the model (kept)" in outcome.out
    with session.team.as_user("cody") as client:  # the server agrees: cody may create runs now
        client.set_terminated(client.create_run(_experiment_id(session)).info.run_id)


def _experiment_id(session) -> str:
    with session.team.as_user() as client:
        return client.get_experiment_by_name(EXPERIMENT).experiment_id


def test_a_password_in_the_tracking_uri_is_masked_in_what_main_prints(session):
    outcome, before, after = cell(session, "researcher main, the password in the URI")
    assert outcome.code == 2 and "user rhea may not register versions" in outcome.error, outcome.err
    assert "the runs: http://rhea:***@127.0.0.1" in outcome.out
    assert "View run" not in outcome.out  # MLflow's own lines would carry the URI whole
    assert sorted(status for _, status in new_runs(before, after).values()) == ["FINISHED"]  # main; baseline reused


def test_the_consumer_serves_the_champion(session):
    [probabilities] = session.served["answer"]["predictions"]
    assert len(probabilities) == 10 and abs(sum(probabilities) - 1) < 1e-4


def test_no_secret_in_anything_the_session_printed_or_stored(session, postgres, tmp_path):
    team = session.team
    secrets = {**team.passwords, **team.secrets, "storage": STORAGE_PASSWORD, "PGPASSWORD": PG_PASSWORD, "wrong": WRONG}
    with team.as_user() as client:
        stored = store_texts(client, tmp_path)
    searched = {
        "printed": "\n".join(team.printed),
        "stored": "\n".join(stored),  # as the store gives it back, artifacts and model files too
        "server log": team.server_log.read_text(errors="replace"),
        **{f"database {name}": postgres.dump(name) for name in ("mlflow_team", "mlflow_auth", "optuna_team")},
    }
    assert len(searched["printed"]) > 1000 and len(stored) > 50  # the grep has something to search
    assert "rhea" in searched["database mlflow_auth"] and session.main_run in searched["database mlflow_team"]
    found = {(what, where) for what, secret in secrets.items() for where, text in searched.items() if secret in text}
    assert not found
