"""A team on the session's basic-auth server: its members and their passwords, commands run
as one of them (in this process, output captured), and everything the store holds as text,
for the secrets grep."""

from __future__ import annotations

import contextlib
import io
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from helpers.stores import environment, forget_store

ROLES = {"rhea": "researchers", "remy": "release_managers", "cody": "consumers"}
OUTSIDER = "otto"  # a user of the server with no grant in the team
EXPERIMENT, MODEL, PRIVATE_MODEL = "digits-team", "digits-team-model", "digits-private"
CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI")


def password() -> str:
    """A fresh password (MLflow wants 12 characters or more), unique enough to grep for."""
    return f"pw-{secrets.token_hex(10)}"


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def error(self) -> str:
        """The CLI's one error line ('' if none)."""
        lines = [line for line in self.err.splitlines() if line.startswith("mnist-pipeline: error:")]
        return lines[-1] if lines else ""


@dataclass
class Team:
    uri: str
    passwords: dict[str, str]  # user -> password, the admin's too
    secrets: dict[str, str]  # every other secret the session was given
    server_log: Path
    printed: list[str] = field(default_factory=list)  # every output of the session

    def credentials(self, user: str | None, password: str | None = None) -> dict[str, str | None]:
        if user is None:
            return {"MLFLOW_TRACKING_USERNAME": None, "MLFLOW_TRACKING_PASSWORD": None}
        return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password or self.passwords[user]}

    def run_as(self, user: str | None, argv: list[str], password: str | None = None, **env) -> Outcome:
        """`mnist-pipeline <argv>` as ``user`` (None: anonymous) in the team's experiment."""
        import mlflow

        from mnist_pipeline import cli

        # MLFLOW_EXPERIMENT_ID: mlflow.set_experiment sets it for the process, as a command's last act may
        values = {"MLFLOW_TRACKING_URI": self.uri, "MLFLOW_EXPERIMENT_NAME": EXPERIMENT, "MLFLOW_EXPERIMENT_ID": None}
        values |= self.credentials(user, password) | env
        out, err = io.StringIO(), io.StringIO()
        with environment(values), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            mlflow.set_tracking_uri(values["MLFLOW_TRACKING_URI"])
            try:
                code = cli.run(argv)
            finally:
                forget_store()
        outcome = Outcome(code, out.getvalue(), err.getvalue())
        self.printed += [outcome.out, outcome.err]
        return outcome

    @contextlib.contextmanager
    def as_user(self, user: str = "admin"):
        """An MlflowClient acting as ``user`` for the block."""
        import mlflow

        with environment(self.credentials(user) | {"MLFLOW_TRACKING_URI": self.uri}):
            yield mlflow.MlflowClient(self.uri)


def store_texts(client, folder: Path) -> list[str]:
    """Everything the store holds as text: every run's params, tags and text artifacts, every
    experiment's tags, every registered model's and version's tags, description and files."""
    import mlflow

    texts = []
    experiments = client.search_experiments()
    texts += [str(e.tags) for e in experiments]
    runs = client.search_runs([e.experiment_id for e in experiments], max_results=1000)
    for run in runs:
        texts += [str(run.data.params), str(run.data.tags), run.info.run_name or ""]
        local = Path(client.download_artifacts(run.info.run_id, "", str(folder / run.info.run_id)))
        texts += [_text(path) for path in local.rglob("*") if path.is_file()]
    for model in client.search_registered_models():
        texts += [str(model.tags), model.description or ""]
        for version in client.search_model_versions(f"name = '{model.name}'"):
            texts += [str(version.tags), version.description or "", version.source or ""]
            uri, files = f"models:/{model.name}/{version.version}", str(folder / f"{model.name}-v{version.version}")
            local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=files))
            texts += [_text(path) for path in local.rglob("*") if path.is_file()]
    return texts


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError:  # pictures, weights: searched as bytes below
        return path.read_bytes().decode("latin-1")


def team_argv() -> list[str]:
    argv = ["team", "--experiment", EXPERIMENT, "--model-name", MODEL]
    for user, role in ROLES.items():
        argv += [f"--{role.replace('_', '-')}", user]
    return argv


def set_up(team: Team) -> None:
    """The users (MLflow's admin client), then the team (`mnist-pipeline team` as the admin),
    and a registered model nobody in the team was granted."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mlflow.server.auth.client import AuthServiceClient

    with team.as_user() as client:
        admin = AuthServiceClient(team.uri)
        for user in [*ROLES, OUTSIDER]:
            admin.create_user(user, team.passwords[user])
        client.create_registered_model(PRIVATE_MODEL)
    done = team.run_as("admin", team_argv())
    assert done.code == 0, done.err
