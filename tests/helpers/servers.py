"""PostgreSQL and an `mlflow server` on loopback, for the tests that need a real server.

PostgreSQL comes from Debian's packages (`.ci/run` installs it). As root, initdb and the
server run as the `postgres` user; each process is stopped by its own process id.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from benchmarks.servers import answers, free_port, stop_group, wait_for  # noqa: F401 (the tests' too)

STARTUP_SECONDS = 120


def postgres_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _as_postgres(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class Postgres:
    """A throw-away cluster in ``root``: start(), url, stop()."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.data = root / "pgdata"
        self.url = f"postgresql+psycopg2://mlflow@127.0.0.1:{self.port}/mlflow"

    def start(self) -> Postgres:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            _as_postgres(
                [postgres_bin("initdb"), "-D", str(self.data), "-U", "mlflow", "-A", "trust", "--no-sync", "-E", "UTF8"]
            ),
            check=True,
            capture_output=True,
        )
        log = self.root / "postgres.log"
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            _as_postgres(
                [
                    postgres_bin("pg_ctl"),
                    "-D",
                    str(self.data),
                    "-o",
                    options,
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    str(STARTUP_SECONDS),
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )
        self.createdb("mlflow")
        return self

    def createdb(self, name: str) -> str:
        """A new database in the cluster; its SQLAlchemy URL."""
        subprocess.run(
            [postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "mlflow", name],
            check=True,
            capture_output=True,
        )
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def dump(self, name: str) -> str:
        """Everything database ``name`` holds, as pg_dump's SQL text."""
        command = [postgres_bin("pg_dump"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "mlflow", name]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout

    def stop(self) -> None:
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
            deadline = time.monotonic() + 60
            while pid_file.exists() and time.monotonic() < deadline:
                time.sleep(0.2)


class MlflowServer:
    """`mlflow server` on a PostgreSQL backend, serving artifacts through its proxy."""

    def __init__(self, backend_url: str, root: Path, port: int | None = None):
        self.port, self.root, self.backend_url = port or free_port(), root, backend_url
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.options: list[str] = []  # more `mlflow server` options
        # more variables for the server; MLflow's job runner (huey consumers), which no test uses, spared
        self.env: dict[str, str] = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

    def start(self) -> MlflowServer:
        log = self.root / "mlflow-server.log"
        command = [
            "mlflow",
            "server",
            "--backend-store-uri",
            self.backend_url,
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            *self.options,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | self.env
        with log.open("a") as out:  # a restart adds to the log; the child keeps its own handle
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.root, start_new_session=True
            )
        wait_for(lambda: answers(f"{self.uri}/health"), "mlflow server", self.process, log)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)


class AuthServer(MlflowServer):
    """`mlflow server --app-name basic-auth`: runs and users each in a database of their own in
    the session's PostgreSQL; new users hold no permission until granted one. ``secrets`` are
    the admin's password and the server's secret key."""

    ADMIN = "admin"

    def __init__(self, postgres: Postgres, root: Path, secrets: dict[str, str]):
        super().__init__(postgres.createdb("mlflow_team"), root)
        config = root / "auth.ini"
        config.write_text(
            "[mlflow]\n"
            "default_permission = NO_PERMISSIONS\n"
            f"database_uri = {postgres.createdb('mlflow_auth')}\n"
            f"admin_username = {self.ADMIN}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "auth_cache_ttl_seconds = 300\n"  # else every request hashes the password again
        )
        self.admin_password = secrets["admin"]
        self.options = ["--app-name", "basic-auth"]
        self.env |= {
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_AUTH_ADMIN_PASSWORD": secrets["admin"],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets["key"],
        }
