"""Secrets are configuration, never data: the secrets this process was given, and text with
them masked before it is printed.

A secret reaches the process as a password variable (MLflow's, PostgreSQL's), in MLflow's
credentials file, or as the user-info of a URL (``http://alice:password@host``). Nothing read
from them is logged, tagged or printed: a URL is shown as ``http://alice:***@host``, and
any line the command line prints goes through ``redact``.
"""

import configparser
import contextlib
import os
import re

# Variables whose value is a secret: MLflow's client and server, PostgreSQL's clients.
SECRET_VARIABLES = (
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "PGPASSWORD",
)
URL_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")  # URLs that may carry a password
CREDENTIALS_FILE = "~/.mlflow/credentials"  # MLflow's: [mlflow] mlflow_tracking_password = ...
MASK = "***"
_MIN_SECRET = 4  # shorter values are not searched for: "1" would mask every digit 1
# scheme://user:password@host : the password runs from the first ':' to the last '@' before the path
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):(?P<password>[^/\s]*)@")


def mask_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ***."""
    return _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)


def url_password(url: str) -> str:
    """The password in ``url``'s user-info; '' if it has none."""
    found = _USERINFO.search(url)
    return found["password"] if found else ""


def url_user(url: str) -> str:
    """The user name in ``url``'s user-info; '' if it has none."""
    found = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://(?P<user>[^:/@\s]+)(:[^@/\s]*)?@", url)
    return found["user"] if found else ""


def known() -> set[str]:
    """Every secret this process was given, as text."""
    values = {os.environ.get(name, "") for name in SECRET_VARIABLES}
    values |= {url_password(os.environ.get(name, "")) for name in URL_VARIABLES}
    parser = configparser.ConfigParser()
    with contextlib.suppress(configparser.Error):  # of a file it cannot parse, what it parsed is kept
        parser.read(os.path.expanduser(CREDENTIALS_FILE))  # a file it cannot open is skipped
    values.add(parser.get("mlflow", "mlflow_tracking_password", fallback=""))
    return {value for value in values if len(value) >= _MIN_SECRET}


def redact(text: str) -> str:
    """``text`` with URL passwords and every known secret replaced by ***."""
    text = mask_url(text)
    for secret in sorted(known(), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
