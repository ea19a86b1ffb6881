"""The tracking store: a reachability check before any work, sends in one attempt (HTTP
settings given to the request, not to the process).

Imports MLflow but not TensorFlow, so a dead server is reported in seconds.
"""

import contextlib
import json
import os

import mlflow
from mlflow.entities import Metric, RunTag
from mlflow.protos.service_pb2 import LogBatch
from mlflow.utils.credentials import get_default_host_creds, read_mlflow_creds
from mlflow.utils.proto_json_utils import message_to_json
from mlflow.utils.rest_utils import http_request_safe

from mnist_pipeline.core.errors import UserError, first_line
from mnist_pipeline.core.secrets import mask_url, redact, url_password, url_user

# MLflow reads its HTTP retry settings from os.environ at each request, and other threads of
# this process (its system metrics) make requests too: the calls below that need settings of
# their own pass them to their request alone (http_request's arguments), never through
# os.environ. The process's bounded retries are set once, as the CLI starts (cli.HTTP_RETRIES).
# The start-up check asks once more, after the process's back-off (1 s as the CLI sets it): a
# server that is not there is not waited for.
CHECK = {"max_retries": 1, "timeout": 5}  # timeout: seconds per request
# One attempt, short timeout: for calls that have their own way to try again later.
ONE_SHOT = {"max_retries": 0, "timeout": 5}
# MLflow's REST endpoints these calls use (its REST API, version 2.0)
SEARCH_EXPERIMENTS, LOG_BATCH = "/api/2.0/mlflow/experiments/search", "/api/2.0/mlflow/runs/log-batch"
# MLflow's variable that keeps its "View run ... at: <tracking uri>/#/..." lines off stdout.
SUPPRESS_URLS = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


# A database's words for a unique key that another writer took first (PostgreSQL, SQLite, MySQL).
_LOST_RACE = ("duplicate key value violates unique constraint", "UNIQUE constraint failed", "Duplicate entry")


def lost_race(err: Exception) -> bool:
    """Whether the store refused a write because another writer had just taken its unique key."""
    return any(text in str(err) for text in _LOST_RACE)


class TrackingStoreError(UserError, ConnectionError):
    """The tracking server cannot be reached; the message names its URI."""


def user() -> str:
    """The user name MLflow sends: its variables or credentials file, else the URI's user-info."""
    return read_mlflow_creds().username or url_user(mlflow.get_tracking_uri()) or ""


def _refused(uri: str) -> TrackingStoreError:
    """The server answered, and refused the credentials (HTTP 401)."""
    if user():
        who, fix = f"the credentials of user {user()}", "check MLFLOW_TRACKING_PASSWORD or ~/.mlflow/credentials"
        why = "a wrong password, or no such user"
    else:
        who, fix = "an anonymous request", "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        why = "it requires a user name and password"
    return TrackingStoreError(
        f"the tracking server {mask_url(uri)} refused {who} (HTTP 401: {why}): {fix}; "
        "the server's admin creates users and resets passwords"
    )


def is_server(uri: str) -> bool:
    """Whether ``uri`` is a tracking server (HTTP), rather than a local database or folder."""
    return uri.startswith(("http://", "https://"))


# While the server is away, an epoch's metrics are sent again at most this often (seconds).
RETRY_SECONDS, RETRY_VARIABLE = 20.0, "MNIST_PIPELINE_RETRY_SECONDS"


def retry_seconds() -> float:
    """RETRY_SECONDS, or RETRY_VARIABLE's value; read when asked, not at import."""
    text = os.environ.get(RETRY_VARIABLE, "")
    with contextlib.suppress(ValueError):  # not a number: refused below
        seconds = float(text) if text.strip() else RETRY_SECONDS
        if 0 <= seconds < float("inf"):
            return seconds
    raise UserError(f"{RETRY_VARIABLE}={text!r} is not allowed: must be a number of seconds >= 0")


def check_tracking_store() -> None:
    """Fail fast, before any training, if the tracking URI is a server that does not answer
    or refuses the credentials (or a setting of ours for it is not a number)."""
    retry_seconds()
    uri = mlflow.get_tracking_uri()
    if not is_server(uri):
        return  # a local database or folder: nothing to reach
    if url_password(uri):  # MLflow prints "View run <name> at: <uri>/#/..." as it ends a run
        os.environ.setdefault(SUPPRESS_URLS, "true")
    try:
        http_request_safe(get_default_host_creds(uri), SEARCH_EXPERIMENTS, "POST", json={"max_results": 1}, **CHECK)
    except Exception as err:  # refused, timed out, 5xx after the retry: all fatal here
        reason = redact(first_line(err))[:200] or type(err).__name__
        if "error code 401" in reason:
            raise _refused(uri) from None
        raise TrackingStoreError(
            f"tracking server {mask_url(uri)} cannot be reached ({reason}); start it or set MLFLOW_TRACKING_URI"
        ) from None


def log_batch_once(run_id: str, metrics: list[Metric], tags: list[RunTag]) -> None:
    """What ``MlflowClient().log_batch`` logs, in one request with ONE_SHOT's settings (a local
    store has no retries to skip): for a caller that tries again later itself. At most 1000
    metrics and tags together, 100 of them tags (MLflow's limits for one request)."""
    uri = mlflow.get_tracking_uri()
    if not is_server(uri):
        mlflow.MlflowClient().log_batch(run_id, metrics=metrics, tags=tags)
        return
    model_id = mlflow.get_active_model_id()  # the model MlflowClient.log_batch links metrics to
    metrics = [Metric(m.key, float(m.value), m.timestamp, m.step, model_id=m.model_id or model_id) for m in metrics]
    # MLflow's own JSON, as its REST store sends it (a NaN as the string "NaN", which JSON lacks)
    body = message_to_json(
        LogBatch(run_id=run_id, metrics=[m.to_proto() for m in metrics], tags=[t.to_proto() for t in tags])
    )
    http_request_safe(get_default_host_creds(uri), LOG_BATCH, "POST", json=json.loads(body), **ONE_SHOT)


def tracking_uri() -> str:
    """The store this process logs to, as MLflow resolved it."""
    return mlflow.get_tracking_uri()
