"""tracking/access.py on a local store (the team server's cases are in test_team_server.py):
nothing to ask, every check passes; a refusal inside a run is one line and the run ends FAILED."""

import io

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from mnist_pipeline.tracking import access, run_lifecycle

REFUSED = (
    "API request to endpoint /api/2.0/mlflow/runs/log-batch failed with error code 403 != 200. "
    "Response body: 'Permission denied'"
)


def test_a_local_store_is_not_asked_and_allows_everything(tracking_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "rhea")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "no-such-experiment-yet")
    assert access.runs_refusal("main") is None
    assert access.registration_refusal("mnist-digits", "main") is None
    access.require_model_read("models:/mnist-digits@champion", "serve")
    assert mlflow.MlflowClient().get_experiment_by_name("no-such-experiment-yet") is None  # nothing made


def test_a_refusal_inside_a_run_is_one_line_and_the_run_ends_failed(tracking_store):
    with pytest.raises(access.AccessError) as refused, run_lifecycle.ended_run(run_name="refused") as run:
        raise MlflowException(REFUSED)
    assert "was refused by the tracking server" in str(refused.value)
    assert f"run {run.info.run_id} ended FAILED" in str(refused.value) and "\n" not in str(refused.value)
    assert mlflow.get_run(run.info.run_id).info.status == "FAILED"


def test_a_refusal_that_also_refuses_ending_the_run_says_it_stays_running(tracking_store, monkeypatch, capsys):
    def refused_too(status):
        raise MlflowException(REFUSED.replace("log-batch", "update"))

    with pytest.raises(access.AccessError) as refused, run_lifecycle.ended_run(run_name="refused twice") as run:
        monkeypatch.setattr(mlflow, "end_run", refused_too)
        raise MlflowException(REFUSED)
    monkeypatch.undo()
    assert f"run {run.info.run_id} could not be ended" in str(refused.value) and "ended FAILED" not in str(
        refused.value
    )
    assert mlflow.get_run(run.info.run_id).info.status == "RUNNING"  # as the line says
    mlflow.end_run("FAILED")


def test_other_errors_inside_a_run_are_left_alone(tracking_store):
    with pytest.raises(MlflowException, match="error code 500"), run_lifecycle.ended_run(run_name="broken"):
        raise MlflowException("API request to endpoint /x failed with error code 500 != 200")


def test_a_failure_kept_as_a_tag_has_the_uri_password_masked(tracking_store):
    err = MlflowException("API request to http://rhea:tagged-secret-01@host:5000/api/2.0/x failed with exception E")
    assert access.explain(err, "mnist-digits", "main") == (
        "MlflowException: API request to http://rhea:***@host:5000/api/2.0/x failed with exception E"
    )


@pytest.mark.parametrize("body", ["<html>a proxy's page</html>", '{"detail": "no permission here"}'])
def test_a_permission_answer_without_a_permission_is_one_line(monkeypatch, body):
    """A server (or a proxy before it) that answers 200 with something else than MLflow's
    auth app: the command stops with one line, not a traceback."""
    import requests

    answer = requests.Response()
    answer.status_code, answer.raw = 200, io.BytesIO(body.encode())
    monkeypatch.setattr(access, "http_request", lambda *args, **kwargs: answer)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "rhea")
    with pytest.raises(access.AccessError) as refused:
        access.permission("experiment", "1")
    assert "answered its permission query without a permission" in str(refused.value)
    assert "\n" not in str(refused.value) and body[:15] in str(refused.value)
