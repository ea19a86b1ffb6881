"""The Optuna study a sweep's workers share: its storage (with heartbeats), its sampler and
pruner, its search space, and the MLflow parent run its first worker creates.

flows/sweep.py runs trials in it; how workers meet is told in that module's docstring.
"""

import contextlib
import json
import time
import warnings
import zlib
from dataclasses import asdict, dataclass, fields

import optuna
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, ProgrammingError, SQLAlchemyError

from mnist_pipeline import names
from mnist_pipeline.core.commands import SweepParams
from mnist_pipeline.core.errors import UserError, first_line
from mnist_pipeline.core.secrets import redact
from mnist_pipeline.tracking import readback, run_lifecycle

VARIANT = "final"  # the architecture whose hyperparameters the sweep tunes
N_STARTUP_TRIALS = 4  # TPE samples at random until this many trials finished (sweeps here are ~10-20)
# MedianPruner judges an epoch only against at least this many COMPLETE trials that reached
# it: epochs are searched too, and a median of one short trial would prune every longer one.
PRUNE_MIN_TRIALS = 3
PRUNE_FROM_EPOCH = 3  # nor ever before this epoch: the first epochs favour fast starters
HEARTBEAT_SECONDS = 30  # a RUNNING trial sends one this often; silent for GRACE_SECONDS: failed
GRACE_SECONDS = 120
PARENT_WAIT_SECONDS = 60  # a joining worker waits this long for the first to name the parent run
STORAGE_ATTEMPTS = 3  # opening the Optuna database (see open_storage)
TAKEN = tuple(s for s in TrialState if s != TrialState.FAIL)  # the trials that hold a place in the budget


@dataclass(frozen=True)
class SearchSpace:
    """What the sweep varies in the final variant: ranges (low, high) and choices."""

    hidden_units: tuple[str, ...] = ("256,128,64", "512,256,128", "1024,512,256")  # widths, as Optuna choices
    dropout: tuple[float, float] = (0.1, 0.6)
    l2: tuple[float, float] = (1e-6, 1e-3)  # log scale; 1e-6 is as good as none
    learning_rate: tuple[float, float] = (1e-4, 3e-3)  # log scale; RMSprop
    epochs: tuple[int, int] = (5, 15)
    batch_size: tuple[int, ...] = (64, 128, 256)

    def suggest(self, trial: optuna.Trial) -> dict:
        return {
            "hidden_units": trial.suggest_categorical("hidden_units", self.hidden_units),
            "dropout": trial.suggest_float("dropout", *self.dropout),
            "l2": trial.suggest_float("l2", *self.l2, log=True),
            "learning_rate": trial.suggest_float("learning_rate", *self.learning_rate, log=True),
            "epochs": trial.suggest_int("epochs", *self.epochs),
            "batch_size": trial.suggest_categorical("batch_size", self.batch_size),
        }


SEARCH_SPACE = SearchSpace()
PARAMS = tuple(f.name for f in fields(SearchSpace))


def median_pruner() -> optuna.pruners.MedianPruner:
    return optuna.pruners.MedianPruner(
        n_startup_trials=PRUNE_MIN_TRIALS, n_warmup_steps=PRUNE_FROM_EPOCH, n_min_trials=PRUNE_MIN_TRIALS
    )


def open_study(
    params: SweepParams, digest: str, worker: str, space: SearchSpace, pruner: optuna.pruners.BasePruner
) -> tuple[optuna.Study, str]:
    """The study and its parent run id; the worker that creates the study creates the parent.
    The trials of workers that stopped sending heartbeats are failed (their runs ended)."""
    storage = open_storage(params.storage)
    where = {"study_name": params.study_name, "storage": storage, "pruner": pruner}
    try:
        study = optuna.create_study(direction="maximize", sampler=_sampler(params.training_seed), **where)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(sampler=_sampler(zlib.crc32(f"{params.training_seed}/{worker}".encode())), **where)
        parent_id = _wait_for_parent(study, digest)
    else:
        parent_id = _create_parent(study, params, digest, space, storage)
    run_lifecycle.use_experiment_of(
        parent_id, "the study's parent run", "all workers of a study must use the same MLFLOW_TRACKING_URI"
    )
    # a killed worker's trial must not hold a place (Optuna does it before each trial too)
    with warnings.catch_warnings(action="ignore", category=optuna.exceptions.ExperimentalWarning):  # see open_storage
        optuna.storages.fail_stale_trials(study)
    return study, parent_id


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The Optuna database, with heartbeats; a UserError naming it if it cannot be opened."""
    for attempt in range(1, STORAGE_ATTEMPTS + 1):
        try:
            # heartbeats are experimental: a warning at every start that a user can do nothing about
            with warnings.catch_warnings(action="ignore", category=optuna.exceptions.ExperimentalWarning):
                return optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=HEARTBEAT_SECONDS,
                    grace_period=GRACE_SECONDS,
                    heartbeat_stale_trial_callback=_end_stale_run,
                )
        except (SQLAlchemyError, optuna.exceptions.OptunaError, RuntimeError) as err:  # RuntimeError: schema too new
            # Workers creating a new database's tables at once: PostgreSQL fails all but one
            # CREATE TABLE IF NOT EXISTS (a known race); the loser's transaction rolled back
            # and the tables exist now: it tries again.
            if attempt == STORAGE_ATTEMPTS or not isinstance(err, (IntegrityError, ProgrammingError)):
                reason = first_line(err)[:200] or type(err).__name__
                raise UserError(f"Optuna storage {_shown(url)} cannot be opened ({reason})") from None
            time.sleep(attempt)


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _sampler(seed: int) -> optuna.samplers.TPESampler:
    # constant_liar (Optuna's default): a trial running elsewhere counts as a poor result, so
    # that concurrent workers do not propose the same point
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=N_STARTUP_TRIALS, constant_liar=True)


def _create_parent(study: optuna.Study, params: SweepParams, digest: str, space: SearchSpace, storage) -> str:
    logged = {
        "study_name": params.study_name,
        "storage": _shown(params.storage),
        "seed": params.training_seed,
        "variant": VARIANT,
        "sampler": type(study.sampler).__name__,
        "pruner": type(study.pruner).__name__,
        "objective": "maximize last-epoch val_accuracy",
        "search_space": json.dumps(asdict(space)),
    }
    try:
        tags = {names.TAG_ROLE: names.ROLE_SWEEP, names.TAG_STUDY: params.study_name, names.TAG_DATA_DIGEST: digest}
        parent_id = run_lifecycle.create_finished_run(params.study_name, logged, tags)
        study.set_user_attr(names.DIGEST_ATTR, digest)
        study.set_user_attr(names.PARENT_ATTR, parent_id)  # last: the joining workers wait for it
    except BaseException:  # leave no study without a parent: the name is free again
        with contextlib.suppress(Exception):
            optuna.delete_study(study_name=params.study_name, storage=storage)
        raise
    print(f"study {params.study_name}: created, with sweep parent run {parent_id}")
    return parent_id


def _wait_for_parent(study: optuna.Study, digest: str) -> str:
    deadline = time.monotonic() + PARENT_WAIT_SECONDS
    while names.PARENT_ATTR not in (attrs := study.user_attrs):
        if time.monotonic() > deadline:
            raise UserError(
                f"study {study.study_name} names no sweep parent run after {PARENT_WAIT_SECONDS} s: "
                "`mnist-pipeline sweep` did not create it, or its first worker died; use another study_name"
            )
        time.sleep(0.5)
    if attrs.get(names.DIGEST_ATTR) != digest:
        raise UserError(
            f"study {study.study_name} trains on data {attrs.get(names.DIGEST_ATTR)}, this worker's is "
            f"{digest}: give every worker the same MNIST files"
        )
    print(f"study {study.study_name}: joined, sweep parent run {attrs[names.PARENT_ATTR]}")
    return attrs[names.PARENT_ATTR]


def taken(study: optuna.Study, before: float = float("inf")) -> int:
    """Trials that hold a place in the budget (all but FAIL), numbered below ``before``."""
    return sum(t.number < before for t in study.get_trials(deepcopy=False, states=TAKEN))


def _end_stale_run(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna failed ``trial``: its worker stopped sending heartbeats (killed, machine lost).
    End its MLflow run KILLED too."""
    if parent_id := study.user_attrs.get(names.PARENT_ATTR):
        end_runs_of(parent_id, trial.number, "its worker went silent")


def end_runs_of(parent_id: str, number: int, why: str) -> None:
    """End KILLED any run of trial ``number`` still RUNNING. Best effort: this worker's own
    trials must go on even if the store refuses (summarize tries again at the end)."""
    try:
        running = [r.info.run_id for r in readback.child_runs(parent_id, {names.TAG_TRIAL: str(number)}, "RUNNING")]
        run_lifecycle.end_running(running)
        for run_id in running:
            run_lifecycle.set_run_tags(run_id, {names.TAG_TRIAL_STATE: TrialState.FAIL.name})
            print(f"trial {number}: {why}; run {run_id} ended KILLED")
    except Exception as err:  # the store's errors come in many types
        print(f"warning: could not end the run of failed trial {number}: {redact(str(err))}")
