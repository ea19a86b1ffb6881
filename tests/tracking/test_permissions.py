"""Which permission each call of the pipeline needs, measured on the session's basic-auth
server: one user per level, holding it on both a scratch experiment and a scratch model, tries
every call. The server must grant exactly what the project's constants say: the least level of
each call is the one tracking/access.py requires for it, and each role of core/roles.py gets
every call its commands make and no other. docs/team-server.md's "Permissions each call needs"
is the table measured here."""

from __future__ import annotations

import warnings

import pytest

from helpers.team import password
from mnist_pipeline.core.roles import ROLES
from mnist_pipeline.tracking import access

LEVELS = ("READ", "USE", "EDIT", "MANAGE")  # the levels a user is granted, each tried
# call -> (the resource it needs a permission on, the project's constant for the least one)
NEEDS = {
    "search runs, read a run": ("experiment", access.READ_NEEDS),
    "create a run (every training, main, register, evaluate run)": ("experiment", access.RUNS_NEED),
    "log params, metrics, tags; end a run": ("experiment", access.RUNS_NEED),
    "a text artifact on a run (registry/decisions.csv, the model card)": ("experiment", access.RUNS_NEED),
    "log a model": ("experiment", access.RUNS_NEED),
    "read a version by alias": ("registered_model", access.READ_NEEDS),
    "download a registered model (predict, serve, evaluate)": ("registered_model", access.READ_NEEDS),
    "create a model version": ("registered_model", access.REGISTER_NEEDS),
    "set a version tag (champion_decision, verified)": ("registered_model", access.REGISTER_NEEDS),
    "update a version's description": ("registered_model", access.REGISTER_NEEDS),
    "set an alias (champion, challenger)": ("registered_model", access.REGISTER_NEEDS),
    # a release manager deletes what a lost registration race left: what its role gets on the model
    "delete an alias": ("registered_model", ROLES["release_managers"][1]),
    "delete a model version (a lost registration race)": ("registered_model", ROLES["release_managers"][1]),
}
READS = ["search runs, read a run", "read a version by alias", "download a registered model (predict, serve, evaluate)"]
# role -> the calls its commands make (core/roles.py: which commands each role runs)
ROLE_CALLS = {
    "researchers": [call for call, (resource, _) in NEEDS.items() if resource == "experiment"] + READS,
    "release_managers": list(NEEDS),  # register, verify; a lost race's version deleted
    "consumers": READS,  # predict, serve, evaluate (without --log: no run)
}
EXPERIMENT, MODEL = "permission-table", "permission-table-model"


class _Identity:
    """The smallest pyfunc model: what is measured is the logging, not the model."""

    def predict(self, context, model_input):
        return model_input


def _pyfunc(name: str) -> str:
    import mlflow

    model = type("Identity", (_Identity, mlflow.pyfunc.PythonModel), {})()
    return mlflow.pyfunc.log_model(name=name, python_model=model, pip_requirements=[]).model_uri


def _tries(client, experiment_id: str, admin_run: str, model_uri: str, tmp_path) -> dict:
    """Each call of NEEDS as a function; later ones use what earlier ones made, if they could."""
    import mlflow

    made = {"version": "1"}

    def create_version():
        made["version"] = mlflow.register_model(model_uri, MODEL).version

    def log_model():
        with mlflow.start_run(run_id=admin_run):
            _pyfunc("tried")

    return {
        "search runs, read a run": lambda: client.get_run(admin_run) and client.search_runs([experiment_id]),
        "create a run (every training, main, register, evaluate run)": lambda: made.update(
            run=client.create_run(experiment_id).info.run_id
        ),
        "log params, metrics, tags; end a run": lambda: (
            client.log_param(admin_run, "tried", "1"),
            client.set_terminated(admin_run),
        ),
        "a text artifact on a run (registry/decisions.csv, the model card)": lambda: client.log_text(
            admin_run, "x", "registry/decisions.csv"
        ),
        "log a model": log_model,
        "read a version by alias": lambda: client.get_model_version_by_alias(MODEL, "champion"),
        "download a registered model (predict, serve, evaluate)": lambda: mlflow.artifacts.download_artifacts(
            f"models:/{MODEL}@champion", dst_path=str(tmp_path / "model")
        ),
        "create a model version": create_version,
        "set a version tag (champion_decision, verified)": lambda: client.set_model_version_tag(
            MODEL, made["version"], "tried", "1"
        ),
        "update a version's description": lambda: client.update_model_version(MODEL, made["version"], "tried"),
        "set an alias (champion, challenger)": lambda: client.set_registered_model_alias(
            MODEL, "tried", made["version"]
        ),
        "delete an alias": lambda: client.delete_registered_model_alias(MODEL, "challenger"),
        "delete a model version (a lost registration race)": lambda: client.delete_model_version(
            MODEL, made["version"] if made["version"] != "1" else "1"
        ),
    }


@pytest.fixture(scope="module")
def measured(team_server, tmp_path_factory) -> dict[str, dict[str, bool]]:
    """{level: {call: allowed}}: each level's user tries every call."""
    import mlflow

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mlflow.server.auth.client import AuthServiceClient

    team, table = team_server, {}
    with team.as_user() as client:
        experiment_id = client.create_experiment(EXPERIMENT)
        admin_run = client.create_run(experiment_id).info.run_id
        with mlflow.start_run(run_id=admin_run):
            model_uri = _pyfunc("model")
        version = mlflow.register_model(model_uri, MODEL).version
        client.set_registered_model_alias(MODEL, "champion", version)
        admin = AuthServiceClient(team.uri)
        for level in LEVELS:
            user = f"level-{level.lower()}"
            team.passwords[user] = password()
            admin.create_user(user, team.passwords[user])
            admin.grant_user_permission(user, "experiment", experiment_id, level)
            admin.grant_user_permission(user, "registered_model", MODEL, level)
    for level in LEVELS:
        with team.as_user() as client:
            client.set_registered_model_alias(MODEL, "challenger", version)  # for the delete to try
        with team.as_user(f"level-{level.lower()}") as client:
            tries = _tries(client, experiment_id, admin_run, model_uri, tmp_path_factory.mktemp(level))
            table[level] = {call: _allowed(call_it) for call, call_it in tries.items()}
    with team.as_user() as client:
        client.set_terminated(admin_run)
        for run in client.search_runs([experiment_id]):  # the runs the levels created
            client.set_terminated(run.info.run_id)
    return table


def _allowed(call) -> bool:
    from mlflow.exceptions import MlflowException
    from requests.exceptions import HTTPError

    try:
        call()
    except (MlflowException, HTTPError) as err:
        assert "403" in str(err) or "PERMISSION_DENIED" in str(err), err  # refused, nothing else
        return False
    return True


@pytest.mark.parametrize("level", LEVELS)
def test_each_call_needs_the_permission_the_project_requires_for_it(measured, level):
    expected = {call: access.LEVELS[level] >= access.LEVELS[needs] for call, (_, needs) in NEEDS.items()}
    assert measured[level] == expected


@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_every_call_its_commands_make_and_no_other(measured, role):
    held = dict(zip(("experiment", "registered_model"), ROLES[role]))  # the role's permission on each resource
    allowed = {call for call, (resource, _) in NEEDS.items() if measured[held[resource]][call]}
    assert allowed == set(ROLE_CALLS[role])
