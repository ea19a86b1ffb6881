"""A team on a tracking server with authentication: its three roles as data, and the
parameters of `mnist-pipeline team`, the admin's command that sets a team up.

Each role is the permission its members get on the team's experiment and on its registered
model (MLflow's levels: READ < USE < EDIT < MANAGE). What each call needs, measured on a
basic-auth server, is the table in docs/team-server.md.
"""

import re
from dataclasses import dataclass

from mnist_pipeline import names
from mnist_pipeline.core.config import ConfigError, parse_model_name
from mnist_pipeline.core.param_fields import Params, param

# role -> (permission on the experiment, permission on the registered model)
ROLES = {
    "researchers": ("EDIT", "READ"),  # train, main, reproduce, sweep: runs, never a version or an alias
    "release_managers": ("EDIT", "MANAGE"),  # register, verify, promote: versions, aliases (deleting one: MANAGE)
    "consumers": ("READ", "READ"),  # predict, serve, evaluate (without --log): read the model
}
EXPERIMENT = "mnist"  # the team's experiment, unless `--experiment` names another
# MLflow's user names: what its sign-up form takes (letters, digits and . _ @ + -)
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}")


def parse_users(text: str) -> tuple[str, ...]:
    """A comma-separated list of distinct user names ('' : none)."""
    users = tuple(part.strip() for part in text.split(",") if part.strip())
    bad = [u for u in users if not _USER.fullmatch(u)]
    if bad:
        raise ValueError(", ".join(bad))
    if len(set(users)) != len(users):
        raise ValueError("a user appears twice")
    return users


def _trimmed(name: str) -> bool:
    return name.strip() == name != ""


def _users(help: str):
    return param((), help, parse_users, "a comma-separated list of user names (letters, digits, . _ @ + -)")


@dataclass(frozen=True)
class TeamParams(Params):
    """as the server's admin: create the team's experiment and model, grant each member's role"""

    experiment: str = param(EXPERIMENT, "the team's experiment (created if missing)", str, "a name", _trimmed)
    model_name: str = param(names.MODEL_NAME, "the team's registered model (created if missing)", parse_model_name)
    researchers: tuple[str, ...] = _users("users who train: EDIT on the experiment, READ on the model")
    release_managers: tuple[str, ...] = _users("users who register and promote: EDIT on it, MANAGE on the model")
    consumers: tuple[str, ...] = _users("users who load the model: READ on both")

    def check(self) -> None:
        members = [user for role in ROLES for user in getattr(self, role)]
        twice = sorted({user for user in members if members.count(user) > 1})
        if twice:
            raise ConfigError(f"{', '.join(twice)}: a user has one role in a team")

    def grants(self) -> list[tuple[str, str, str, str]]:
        """(user, role, permission on the experiment, permission on the model), one per member."""
        return [(user, role, *ROLES[role]) for role in ROLES for user in getattr(self, role)]


ADMIN_COMMANDS: dict[str, type[Params]] = {"team": TeamParams}  # not MLproject entry points
