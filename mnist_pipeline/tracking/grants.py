"""Setting a team up on a tracking server with authentication, through MLflow's admin client
(``AuthServiceClient``): the experiment and the registered model, created if missing, and one
grant per member and resource. Running it again changes nothing that is already right.

MLflow 3.13 replaced the per-resource grant methods (``create_experiment_permission``, ...)
with ``grant_user_permission(username, resource_type, resource_id, permission)``, which
refuses a second grant on the same resource: a grant that exists with another level is
revoked and granted again (the old level granted back if the new grant fails).
"""

import warnings

import mlflow
from mlflow.exceptions import MlflowException

from mnist_pipeline.core.errors import UserError, first_line
from mnist_pipeline.core.roles import TeamParams
from mnist_pipeline.core.secrets import mask_url
from mnist_pipeline.tracking import store


def _grant(admin, user: str, resource_type: str, resource_id: str, level: str) -> str:
    """Grant ``level``; returns what happened: 'granted', 'kept' or 'changed from X'."""
    try:
        admin.grant_user_permission(user, resource_type, resource_id, level)
        return "granted"
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    held = admin.get_user_permission(user, resource_type, resource_id).permission
    if held == level:
        return "kept"
    admin.revoke_user_permission(user, resource_type, resource_id)
    try:
        admin.grant_user_permission(user, resource_type, resource_id, level)
    except Exception:  # the server has no update of a user's grant: put the old one back
        admin.grant_user_permission(user, resource_type, resource_id, held)
        raise
    return f"changed from {held}"


def _resources(experiment: str, model_name: str) -> tuple[str, list[str]]:
    """The experiment's id and the model, each created if missing; lines saying which."""
    client, lines = mlflow.MlflowClient(), []
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    lines.append(f"experiment {experiment!r} (id {experiment_id}): {'exists' if found else 'created'}")
    try:
        client.get_registered_model(model_name)
        lines.append(f"registered model {model_name!r}: exists")
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(model_name)
        lines.append(f"registered model {model_name!r}: created")
    return experiment_id, lines


def _check_admin(admin, users: list[str]) -> None:
    """UserError unless this user is an admin and every member exists, before any change."""
    me, where = store.user(), mask_url(mlflow.get_tracking_uri())
    try:
        reason = None if admin.get_user(me).is_admin else "not an admin"
    except MlflowException as err:
        reason = first_line(err)[:200]
    if reason is not None:
        who = me or "(anonymous)"
        raise UserError(f"user {who} may not set a team up on {where} ({reason}): `team` needs the server's admin")
    missing = []
    for user in users:
        try:
            admin.get_user(user)
        except MlflowException:
            missing.append(user)
    if missing:
        raise UserError(
            f"no user {', '.join(missing)} on the server: the admin creates each with a password of 12 "
            "characters or more (AuthServiceClient.create_user, or the server's /signup page), then runs `team` again"
        )


def setup(params: TeamParams) -> list[str]:
    """Create what is missing and grant every member's role; one line per resource and member."""
    with warnings.catch_warnings(action="ignore"):  # the auth app's Starlette imports warn of a deprecation
        from mlflow.server.auth.client import AuthServiceClient  # 2 s of imports

    admin = AuthServiceClient(mlflow.get_tracking_uri())
    _check_admin(admin, [user for user, *_ in params.grants()])
    experiment_id, lines = _resources(params.experiment, params.model_name)
    for user, role, on_experiment, on_model in params.grants():
        done = [
            f"{on_experiment} on the experiment ({_grant(admin, user, 'experiment', experiment_id, on_experiment)})",
            f"{on_model} on the model ({_grant(admin, user, 'registered_model', params.model_name, on_model)})",
        ]
        lines.append(f"{user} ({role.replace('_', ' ')[:-1]}): {', '.join(done)}")
    return lines
