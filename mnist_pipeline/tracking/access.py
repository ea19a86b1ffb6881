"""Who this process is on a tracking server with authentication (MLflow's basic-auth app),
what it may do there, and one line for each refusal.

The server decides; these checks ask it first (its "permission of a user on a resource"
endpoint, which any user may call about themselves), so that a command it would refuse
stops before it trains or opens a run. On a local store or a server without authentication
every check passes. MLflow's permissions, from least to most: NO_PERMISSIONS, READ, USE,
EDIT, MANAGE; DENY refuses everything. What each call needs is measured in docs/team-server.md.
"""

import sys

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request

from mnist_pipeline.core.errors import UserError, first_line
from mnist_pipeline.core.secrets import mask_url, redact
from mnist_pipeline.tracking import model_uris, store

LEVELS = {"DENY": -1, "NO_PERMISSIONS": 0, "READ": 1, "USE": 2, "EDIT": 3, "MANAGE": 4}
RUNS_NEED = "EDIT"  # creating runs in an experiment, logging to them, ending them
REGISTER_NEEDS = "EDIT"  # a model version, its tags and description, moving an alias
READ_NEEDS = "READ"  # reading a registered model and downloading its files
_PERMISSION = "/api/3.0/mlflow/users/permissions/get"
_KIND = {"experiment": "experiment", "registered_model": "registered model"}
TEAM_HINT = "`mnist-pipeline team` (docs/team-server.md)"


class AccessError(UserError, PermissionError):
    """The server refused this user something, or refused the credentials; one line."""


class Refusal(str):
    """One refusal line (``refusal``), as text to report later."""


def _who() -> str:
    return f"user {store.user()}" if store.user() else "an anonymous request (no MLFLOW_TRACKING_USERNAME)"


def permission(resource_type: str, resource_id: str) -> str | None:
    """This user's permission on a resource as the server resolves it (grants, else the
    server's default); None on a store without authentication."""
    uri = mlflow.get_tracking_uri()
    if not (store.is_server(uri) and store.user()):  # an anonymous request: refused at the store check already
        return None
    params = {"username": store.user(), "resource_type": resource_type, "resource_id": resource_id}
    response = http_request(get_default_host_creds(uri), _PERMISSION, "GET", params=params, **store.CHECK)
    if response.status_code == 404 and "permission" not in response.text:
        return None  # no auth app: the route does not exist
    server = f"{_who()}: the tracking server {mask_url(uri)}"
    if response.status_code != 200:
        raise AccessError(
            f"{server} did not say what it may do on {_KIND[resource_type]} {resource_id!r} "
            f"(HTTP {response.status_code}: {response.text[:200]})"
        )
    try:
        return response.json()["permission"]
    except (ValueError, KeyError, TypeError):  # not MLflow's auth app, or another version of it
        raise AccessError(
            f"{server} answered its permission query without a permission ({response.text[:200]!r})"
        ) from None


def refusal(
    command: str, action: str, resource_type: str, resource_id: str, needed: str, held: str = "", label: str = ""
) -> Refusal | None:
    """None if this user holds ``needed`` on the resource (or the store does not say), else one
    line: who, what was refused on which resource (``label``, else the id quoted) for which
    command, the permission it needs, what the user holds (``held``, else the server says),
    who grants it."""
    held = held or permission(resource_type, resource_id)
    if held is None or LEVELS.get(held, -1) >= LEVELS[needed]:
        return None
    kind, label = _KIND[resource_type], label or repr(resource_id)
    return Refusal(
        f"{_who()} may not {action} {kind} {label} for `{command}`: that needs {needed} on it and "
        f"{store.user()} has {held}; the server's admin or a user with MANAGE on the {kind} grants it with {TEAM_HINT}"
    )


def require(command: str, action: str, resource_type: str, resource_id: str, needed: str) -> None:
    """AccessError (one line) unless this user holds ``needed`` on the resource."""
    if refused := refusal(command, action, resource_type, resource_id, needed):
        raise AccessError(refused)


def experiment(command: str, experiment_id: str | None = None) -> tuple[str | None, str]:
    """(id, label) of the experiment the next runs go to: ``experiment_id``, else the one
    MLFLOW_EXPERIMENT_ID or MLFLOW_EXPERIMENT_NAME names, else Default. The id is None for
    a name that does not exist yet: the user who creates it holds MANAGE on it. The label is
    the name quoted, '' if this user may not read the experiment."""
    name = mlflow.environment_variables.MLFLOW_EXPERIMENT_NAME.get()
    experiment_id = experiment_id or mlflow.environment_variables.MLFLOW_EXPERIMENT_ID.get() or (None if name else "0")
    try:
        if experiment_id:
            return experiment_id, repr(mlflow.MlflowClient().get_experiment(experiment_id).name)
        found = mlflow.MlflowClient().get_experiment_by_name(name)
    except MlflowException as err:
        if experiment_id:  # the name only labels a refusal line: none if it may not read it
            return experiment_id, ""
        if not is_refusal(err):
            raise
        raise AccessError(refusal(command, "read", "experiment", name, RUNS_NEED, "NO_PERMISSIONS")) from None
    return (found.experiment_id if found else None), repr(name)


def runs_refusal(command: str, experiment_id: str | None = None) -> Refusal | None:
    """Why this user may not create ``command``'s runs in the experiment they go to (None:
    it may, or the experiment is new and the user who creates it will hold MANAGE on it)."""
    try:
        found, label = experiment(command, experiment_id)
    except AccessError as refused:  # it may not even read the experiment
        return Refusal(str(refused))
    if found is None:
        return None
    return refusal(command, "create runs in", "experiment", found, RUNS_NEED, label=f"{label} (id {found})".strip())


def require_runs(command: str, experiment_id: str | None = None) -> None:
    """Before ``command`` opens a run or trains: AccessError unless this user may create runs
    in the experiment they go to."""
    if refused := runs_refusal(command, experiment_id):
        raise AccessError(refused)


def registration_refusal(model_name: str, command: str) -> Refusal | None:
    """Why this user may not register versions of ``model_name`` (None: it may, or the
    model does not exist yet and the user who creates it will hold MANAGE on it)."""
    try:
        mlflow.MlflowClient().get_registered_model(model_name)
    except MlflowException:
        # RESOURCE_DOES_NOT_EXIST: registration creates it. A refusal too may mean a model that
        # does not exist yet (the server answers an unknown model with its default permission):
        # the registration itself then says, in one line, if the server refuses it.
        return None
    return refusal(command, "register versions of", "registered_model", model_name, REGISTER_NEEDS)


def note_registration_refusal(model_name: str, command: str, kept: str) -> None:
    """Before any training: if this user may not register (``model_name`` '' : no
    registration), say so now in one note; the work (``kept``) is still done and kept."""
    if model_name and (refused := registration_refusal(model_name, command)):
        print(f"note: {refused}; {kept} for a release manager", file=sys.stderr)


def require_model_read(model_uri: str, command: str) -> None:
    """Before ``command`` loads ``model_uri``: AccessError unless this user may read the
    registered model it names (a logged model, ``models:/m-<id>``, belongs to no registered model)."""
    if named := model_uris.parse(model_uri):
        require(command, "read", "registered_model", named[0], READ_NEEDS)


def is_refusal(err: BaseException) -> bool:
    """Whether ``err`` is the server refusing a call (HTTP 403)."""
    return any(mark in first_line(err) for mark in ("error code 403", "PERMISSION_DENIED", "403 Client Error"))


def refused_during(err: BaseException, run_id: str, ended: bool = True) -> str:
    """The line for a refusal in the middle of a run (a grant revoked since the checks)."""
    unended = "could not be ended (refused too): it stays RUNNING until someone with EDIT ends it"
    return (
        f"{_who()} was refused by the tracking server ({redact(first_line(err))[:160]}); "
        f"run {run_id} {'ended FAILED' if ended else unended}: a permission changed since the command's checks, "
        "or this step needs one docs/team-server.md lists"
    )


def explain(err: BaseException, model_name: str, command: str) -> str:
    """A registration's failure in one line: the refusal (a Refusal) if the server refused it."""
    if is_refusal(err):
        return registration_refusal(model_name, command) or Refusal(
            f"{_who()} was refused a call while registering in registered model {model_name!r} "
            f"({redact(first_line(err))[:200]}); a release manager (MANAGE on it) can register instead"
        )
    return f"{type(err).__name__}: {redact(first_line(err))}"  # it may be tagged on a run
