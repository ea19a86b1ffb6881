"""Run identity: which code, configuration and data a training run is, and finding its twin.

A FINISHED run with the same run key is reused by `main` and `reproduce` instead of
training again.
"""

import functools
import hashlib
import json
from pathlib import Path

from mnist_pipeline.core.config import TrainConfig
from mnist_pipeline.names import TAG_RUN_KEY
from mnist_pipeline.tracking.readback import runs_tagged

PACKAGE = Path(__file__).resolve().parents[1]  # mnist_pipeline/


@functools.cache  # the source does not change while the process runs
def code_version(package: Path = PACKAGE) -> str:
    """Digest of every source file of the package, subfolders included, each by its path
    relative to the package: changes whenever any of the code does."""
    md5 = hashlib.md5()
    for path in sorted(package.rglob("*.py"), key=lambda p: p.relative_to(package).as_posix()):
        md5.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return md5.hexdigest()[:12]


def run_key(cfg: TrainConfig, data_digest: str, leave_out: tuple[str, ...] = ()) -> str:
    """Digest of the configuration (but the params in ``leave_out``), the code and the data."""
    params = {k: v for k, v in cfg.as_params().items() if k not in leave_out}
    identity = {"config": params, "code": code_version(), "data": data_digest}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def config_key(cfg: TrainConfig, data_digest: str) -> str:
    """The run key without the seed: the seed runs of one configuration (``reproduce``) share it."""
    return run_key(cfg, data_digest, leave_out=("seed",))


def find_reusable_run(key: str) -> str | None:
    """Id of the newest FINISHED run in the active experiment with ``key``, if any."""
    runs = runs_tagged({TAG_RUN_KEY: key}, "FINISHED", max_results=1)
    return runs[0].info.run_id if runs else None
