"""Secrets masked before anything is printed, a password refused in `storage`, and the team's
parameters (core/secrets.py, core/config.py, core/roles.py)."""

import pytest

from mnist_pipeline.core import config, secrets
from mnist_pipeline.core.config import ConfigError
from mnist_pipeline.core.roles import TeamParams


@pytest.mark.parametrize(
    "text, shown",
    [
        ("http://alice:s3cret-pass@host:5000", "http://alice:***@host:5000"),
        ("see https://bob:p@ss:word@host/x and more", "see https://bob:***@host/x and more"),
        ("postgresql+psycopg2://u:pw@db/optuna", "postgresql+psycopg2://u:***@db/optuna"),
        ("http://alice@host:5000", "http://alice@host:5000"),  # no password: nothing to mask
        ("http://host:5000/#/experiments/1", "http://host:5000/#/experiments/1"),
    ],
)
def test_a_url_is_shown_with_its_password_masked(text, shown):
    assert secrets.mask_url(text) == shown


def test_redact_masks_every_secret_the_process_was_given(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "credentials").write_text("[mlflow]\nmlflow_tracking_password = from-the-file-01\n")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "from-the-variable-01")
    monkeypatch.setenv("PGPASSWORD", "postgres-secret-01")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:in-the-uri-01@host:5000")
    text = "from-the-file-01 from-the-variable-01 postgres-secret-01 in-the-uri-01 alice"
    assert secrets.redact(text) == "*** *** *** *** alice"


def test_storage_with_a_password_is_refused_with_it_masked():
    with pytest.raises(ConfigError) as refused:
        config.parse_storage("postgresql+psycopg2://bob:db-secret-01@127.0.0.1/optuna")
    assert "db-secret-01" not in str(refused.value)
    assert "postgresql+psycopg2://bob:***@127.0.0.1/optuna" in str(refused.value)
    assert "PGPASSWORD" in str(refused.value) and "~/.pgpass" in str(refused.value)
    assert config.parse_storage("postgresql+psycopg2://bob@127.0.0.1/optuna").endswith("/optuna")
    for query in ("password=db-secret-02", "sslmode=require&sslpassword=db-secret-02"):  # psycopg2 reads both
        with pytest.raises(ConfigError) as refused:
            config.parse_storage(f"postgresql+psycopg2://bob@127.0.0.1/optuna?{query}")
        assert "db-secret-02" not in str(refused.value) and "PGPASSWORD" in str(refused.value)


def test_team_params_give_each_member_one_role():
    team = TeamParams.from_strings({"researchers": "rhea, ray", "release_managers": "remy", "consumers": ""})
    assert team.grants() == [
        ("rhea", "researchers", "EDIT", "READ"),
        ("ray", "researchers", "EDIT", "READ"),
        ("remy", "release_managers", "EDIT", "MANAGE"),
    ]
    with pytest.raises(ConfigError, match="rhea: a user has one role"):
        TeamParams.from_strings({"researchers": "rhea", "consumers": "rhea"})
    with pytest.raises(ConfigError, match="consumers="):
        TeamParams.from_strings({"consumers": "carl smith"})
