"""`mnist-pipeline team`'s grants against a stand-in admin client (the real server's
behaviour is in test_team_server.py)."""

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_ALREADY_EXISTS

from mnist_pipeline.tracking.grants import _grant


class Admin:
    """What MLflow's AuthServiceClient does with one user's grants, and a grant that fails."""

    def __init__(self, held: dict, refuse: str | None = None):
        self.held, self.refuse = held, refuse

    def grant_user_permission(self, user, resource_type, resource_id, level):
        key = (user, resource_type, resource_id)
        if key in self.held:
            raise MlflowException("exists", error_code=RESOURCE_ALREADY_EXISTS)
        if level == self.refuse:
            raise MlflowException("the store went away", error_code=INTERNAL_ERROR)
        self.held[key] = level

    def get_user_permission(self, user, resource_type, resource_id):
        return type("Result", (), {"permission": self.held[(user, resource_type, resource_id)]})

    def revoke_user_permission(self, user, resource_type, resource_id):
        del self.held[(user, resource_type, resource_id)]


KEY = ("rhea", "experiment", "1")


def test_a_grant_is_made_kept_or_changed():
    admin = Admin({})
    assert _grant(admin, *KEY, "EDIT") == "granted"
    assert _grant(admin, *KEY, "EDIT") == "kept"
    assert _grant(admin, *KEY, "READ") == "changed from EDIT" and admin.held == {KEY: "READ"}


def test_a_change_whose_new_grant_fails_leaves_the_old_one():
    admin = Admin({KEY: "EDIT"}, refuse="MANAGE")
    with pytest.raises(MlflowException, match="the store went away"):
        _grant(admin, *KEY, "MANAGE")
    assert admin.held == {KEY: "EDIT"}
