"""The run lifecycle: the checks before a training command opens a run, a run that always
ends, the run `mlflow run` made, the experiment the next runs go to, and what any run is given
(params, metrics, tags, texts, figures): on the active run, or on the run whose ``run_id`` a
function takes.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import TYPE_CHECKING

import mlflow
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException

from mnist_pipeline import names
from mnist_pipeline.core import interrupts
from mnist_pipeline.core.data import Mnist, load_for
from mnist_pipeline.core.errors import UserError
from mnist_pipeline.core.secrets import mask_url, redact
from mnist_pipeline.tracking import access, liveness, store

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def preflight(
    command: str,
    data_dir: str,
    splits=(),
    model_name: str = "",
    kept: str = "",
    checks_runs: bool = True,
    ends_dead_runs: bool = True,
) -> Mnist:
    """What a training ``command`` checks before it opens a run, in this order; returns the data.
    MNIST loaded and checked (each validation split of ``splits`` leaves training images), the
    tracking store reached with the credentials taken, this user's right to create runs in the
    experiment they go to, a note now if it may not register in ``model_name`` ('': the command
    registers nothing; ``kept``: what is done and kept instead), and the runs of processes killed
    hard ended KILLED. ``checks_runs`` False: the command learns its experiment later and checks
    it then (verify); ``ends_dead_runs`` False: it ends them itself, in that experiment (sweep).
    TensorFlow is not imported: a bad data folder or a dead server is reported in seconds."""
    data = load_for(data_dir, splits)
    store.check_tracking_store()
    if checks_runs:
        access.require_runs(command)  # refused before any training
    access.note_registration_refusal(model_name, command, kept)
    if ends_dead_runs:
        liveness.end_dead_runs(command)  # runs left RUNNING by a process killed hard
    return data


@contextlib.contextmanager
def ended_run(tags: dict[str, str] | None = None, **start_run_kwargs):
    """``mlflow.start_run`` that always ends its run: FINISHED, KILLED on KeyboardInterrupt
    (the CLI turns SIGTERM into one), FAILED on any other exception. The run carries this
    process's liveness tags, so that a later command ends it KILLED if the process dies hard."""
    run = mlflow.start_run(tags={**liveness.tags(), **(tags or {})}, **start_run_kwargs)
    try:
        yield run
    except BaseException as err:
        ended = _end(run.info.run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        if not access.is_refusal(err):
            raise
        # a refusal the command's checks did not foresee: one line once the run is ended
        raise access.AccessError(access.refused_during(err, run.info.run_id, ended)) from None
    _end(run.info.run_id, "FINISHED")


@contextlib.contextmanager
def parent_run(role: str, data: Mnist, params: dict[str, str]):
    """An ended_run whose trainings are its children (main, reproduce), named after its ``role``:
    tagged with the data's digest and source, ``params`` logged unless `mlflow run` logged them."""
    with ended_run(run_name=role, tags={names.TAG_DATA_DIGEST: data.digest, names.TAG_ROLE: role}) as run:
        log_missing_params(params)
        set_tags({names.TAG_DATA_SOURCE: data.source})
        yield run


def _end(run_id: str, status: str) -> bool:
    """Ends the active run ``status``; whether it could. A FINISHED run that cannot be ended
    raises; otherwise an error is on its way out, and ending the run must not replace it."""
    try:
        with interrupts.deferred():  # a Ctrl-C now is raised once the run is ended
            mlflow.end_run(status)
        return True
    except Exception as err:
        if status == "FINISHED":
            raise
        print(f"warning: could not mark run {run_id} {status}: {redact(str(err))}", file=sys.stderr)
        return False


def create_finished_run(name: str, params: dict, tags: dict[str, str]) -> str:
    """A run that ends FINISHED at once, as a container: later work only adds tags and
    artifacts to it (set_run_tags, log_text with its id), so no process, however it stops,
    can leave it RUNNING."""
    with ended_run(run_name=name, tags=tags) as run:
        mlflow.log_params(params)
    return run.info.run_id


# MLflow's own system metrics (system/cpu_utilization_percentage, system/system_memory_usage_
# megabytes, ...) are recorded in every training run unless MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING
# is set (false turns them off). Their interval and their INFO lines are the process's, set
# once as the CLI starts (cli.SYSTEM_METRICS), not as each run starts.
def system_metrics() -> bool:
    """Whether the next training run records MLflow's system metrics."""
    variable = mlflow.environment_variables.MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING
    return variable.get() if variable.defined else True


def launched_by_mlflow_run() -> bool:
    """True under `mlflow run`, which made a run for the entry point and named it in the environment."""
    return bool(mlflow.environment_variables.MLFLOW_RUN_ID.get())


def detach_project_run() -> str | None:
    """Under `mlflow run`, the id of MLflow's own run for the entry point, taken out of the
    environment so that the next runs are new ones beside it rather than resuming it.
    `mlflow run` ends it when the process exits."""
    return os.environ.pop(mlflow.environment_variables.MLFLOW_RUN_ID.name, None)


def use_experiment_of(run_id: str, what: str, fix: str) -> str:
    """Start the next runs in ``run_id``'s experiment; returns its id. If this store lacks the run: UserError
    "<what> <run_id> is not in tracking store <uri>: <fix>"."""
    try:
        experiment_id = mlflow.get_run(run_id).info.experiment_id
    except MlflowException:
        where = mask_url(mlflow.get_tracking_uri())
        raise UserError(f"{what} {run_id} is not in tracking store {where}: {fix}") from None
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def log_missing_params(params: dict[str, str]) -> None:
    """Log ``params`` except keys already on the active run (`mlflow run` logs its own)."""
    logged = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in logged})


def log_metrics(metrics: dict[str, float], **link) -> None:
    """``metrics`` on the active run; ``link``: the ``dataset`` and ``model_id`` they are about."""
    mlflow.log_metrics(metrics, **link)


def make_dataset(make, *args, **kwargs):
    """``make(*args, **kwargs)`` (mlflow.data.from_numpy, from_pandas) without the warning that
    MLflow, registering its local-file source twice, gives for every path: ambiguous between
    the two identical candidates."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted")
        return make(*args, **kwargs)


def set_tags(tags: dict[str, str]) -> None:
    """``tags`` on the active run, if there is one."""
    if tags and mlflow.active_run():
        mlflow.set_tags(tags)


def set_run_tags(run_id: str, tags: dict[str, str]) -> None:
    mlflow.MlflowClient().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def tag_last_run(expected: dict[str, str], tags: dict[str, str]) -> None:
    """Best effort, while an error is on its way out: ``tags`` on the run this process ended
    last, if it carries the ``expected`` tags."""
    with contextlib.suppress(Exception):
        run = mlflow.last_active_run()
        if run is not None and all(run.data.tags.get(k) == v for k, v in expected.items()):
            set_run_tags(run.info.run_id, tags)


def log_text(text: str, path: str, run_id: str | None = None) -> None:
    """``text`` as an artifact of ``run_id``, else of the active run."""
    mlflow.MlflowClient().log_text(run_id or mlflow.active_run().info.run_id, text, path)


def log_dict(values: dict, path: str, run_id: str) -> None:
    mlflow.MlflowClient().log_dict(run_id, values, path)


def log_figure(fig: Figure, path: str) -> None:
    """The figure as a PNG artifact of the active run."""
    mlflow.log_figure(fig, path)


def end_running(run_ids: list[str]) -> None:
    """End KILLED runs whose process is gone."""
    for run_id in run_ids:
        mlflow.MlflowClient().set_terminated(run_id, "KILLED")
