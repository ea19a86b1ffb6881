"""Hyperparameter sweep: an Optuna study over the final variant's hyperparameters. The one
module that imports Optuna; MLflow is reached through tracking.py and registry.py.

- **Trials.** Each trial trains `final` with the parameters TPE proposes, as one MLflow
  training run (tracking.track_training: the same params, per-epoch metrics, artifacts and
  model as `train`), a child of the study's sweep parent run. It reports each epoch's
  `val_accuracy` to Optuna and returns the last epoch's: what registry.selection_key ranks
  by, since the logged weights are the last epoch's.
- **Pruning.** MedianPruner: a trial whose val_accuracy at some epoch is below the median
  of the COMPLETE trials at that epoch (at least PRUNE_MIN_TRIALS of them) stops training at
  once (tracking.TrainingStopped).
  Its run ends FINISHED with the epochs done, tagged `trial_state=PRUNED`, without a
  `run_key`: `main` never reuses it, the registry never takes it.
- **Workers.** Every worker started with the same `study_name` and `storage` (PostgreSQL for
  several machines) and the same MLFLOW_TRACKING_URI joins one study. `n_trials` is the
  study's budget, all workers together: a worker starts trials until the study holds that
  many (a FAILed trial frees its place). Optuna numbers trials under a database lock, so
  two workers asking at once still get distinct numbers; if both asked for the last place,
  the higher number is not run and is marked FAIL. The first worker's sampler uses `seed`;
  the others mix in their worker id, so that no two propose the same parameters.
- **The parent run, and who creates it.** The worker whose `create_study` succeeds (the
  database refuses a second study of the name, so exactly one does, however many start at
  once) creates the parent run and names it in the study's user attrs; the others wait
  for that name. The parent is a container that is FINISHED from the moment it exists:
  workers only add tags and artifacts to it, never hold it open, so no worker, however it
  stops (error, Ctrl-C, SIGTERM, even SIGKILL), leaves it RUNNING. Its status therefore
  says nothing about the study's progress; the trial runs and the trials table do. A
  trial's own run ends KILLED or FAILED with its worker, as every run does; if a worker
  dies without ending it (SIGKILL, lost machine), the next worker's heartbeat check fails
  the trial in Optuna and ends its run KILLED.
- **End of a worker** (budget reached or `timeout` passed): it writes the trials table and
  the best COMPLETE trial's params on the parent run, and registers that trial's run as
  `main` does (registry.register_run: once per run; `champion` moves only on improvement).
  Workers ending later rewrite the table with what they see then.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
import zlib
from dataclasses import asdict, dataclass, fields

import optuna
import pandas as pd
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, ProgrammingError, SQLAlchemyError

from mnist_pipeline import registry, tracking
from mnist_pipeline.config import SweepConfig, TrainConfig, resolve
from mnist_pipeline.data import Mnist
from mnist_pipeline.errors import RegistrationError, UserError, first_line

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

PARENT_ATTR, DIGEST_ATTR = "mlflow_parent_run_id", "data_digest"  # study user attrs
RUN_ATTR, WORKER_ATTR = "mlflow_run_id", "worker"  # trial user attrs
# Tags on trial runs (the parent gets TAG_STUDY too).
TAG_STUDY, TAG_TRIAL, TAG_TRIAL_STATE, TAG_WORKER = "study_name", "trial_number", "trial_state", "worker"


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


class OverBudget(Exception):
    """The study's last place was taken while this trial was being created."""


def trial_config(params: dict, seed: int) -> TrainConfig:
    """The final variant with a trial's parameters, as Optuna holds them."""
    units = tuple(int(u) for u in params["hidden_units"].split(","))
    return resolve(VARIANT, {**params, "hidden_units": units, "seed": seed})


def median_pruner() -> optuna.pruners.MedianPruner:
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNE_MIN_TRIALS, n_warmup_steps=PRUNE_FROM_EPOCH,
                                       n_min_trials=PRUNE_MIN_TRIALS)


def run(cfg: SweepConfig, data: Mnist, space: SearchSpace | None = None,
        pruner: optuna.pruners.BasePruner | None = None) -> str:
    """One worker: join the study (creating it and its parent run if new), run trials until
    it holds ``cfg.n_trials`` or ``cfg.timeout`` passes, then log the trials table and
    register the best COMPLETE trial. Returns the parent run id. ``space`` and ``pruner``
    default to SEARCH_SPACE and median_pruner()."""
    space = space or SEARCH_SPACE
    worker = f"{socket.gethostname()}:{os.getpid()}"
    project_run = tracking.detach_project_run()  # `mlflow run -e sweep`'s own run stays beside
    study, parent_id = open_study(cfg, data.digest, worker, space, pruner or median_pruner())
    if project_run:
        tracking.set_run_tags(project_run, {TAG_STUDY: cfg.study_name, "sweep_parent_run_id": parent_id})
    optuna.storages.fail_stale_trials(study)  # a killed worker's trial must not hold a place
    if _taken(study) >= cfg.n_trials:
        print(f"study {cfg.study_name} already holds {cfg.n_trials} trials: none to run (a larger n_trials adds more)")
    else:
        objective = _Objective(cfg, data, space, parent_id, worker)
        study.optimize(objective, timeout=cfg.timeout, catch=(OverBudget,), callbacks=[objective.stop_when_full])
    summarize(study, parent_id, cfg.model_name, worker)
    return parent_id


def open_study(cfg: SweepConfig, digest: str, worker: str, space: SearchSpace,
               pruner: optuna.pruners.BasePruner) -> tuple[optuna.Study, str]:
    """The study and its parent run id; the worker that creates the study creates the parent."""
    storage = open_storage(cfg.storage)
    where = {"study_name": cfg.study_name, "storage": storage, "pruner": pruner}
    try:
        study = optuna.create_study(direction="maximize", sampler=_sampler(cfg.seed), **where)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(sampler=_sampler(zlib.crc32(f"{cfg.seed}/{worker}".encode())), **where)
        parent_id = _wait_for_parent(study, digest)
    else:
        parent_id = _create_parent(study, cfg, digest, space, storage)
    tracking.use_sweep_parent(parent_id)
    return study, parent_id


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The Optuna database, with heartbeats; a UserError naming it if it cannot be opened."""
    for attempt in range(1, STORAGE_ATTEMPTS + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
                return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                                                  heartbeat_stale_trial_callback=_end_stale_run)
        except (IntegrityError, ProgrammingError) as err:
            # Workers creating a new database's tables at once: PostgreSQL fails all but one
            # CREATE TABLE IF NOT EXISTS (a known race); the loser's transaction rolled back
            # and the tables exist now.
            if attempt == STORAGE_ATTEMPTS:
                raise _unopened(url, err) from None
            time.sleep(attempt)
        except (SQLAlchemyError, optuna.exceptions.OptunaError, RuntimeError) as err:  # RuntimeError: schema too new
            raise _unopened(url, err) from None


def _unopened(url: str, err: Exception) -> UserError:
    reason = first_line(err)[:200] or type(err).__name__
    return UserError(f"Optuna storage {_shown(url)} cannot be opened ({reason})")


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _sampler(seed: int) -> optuna.samplers.TPESampler:
    # constant_liar (Optuna's default): a trial running elsewhere counts as a poor result, so
    # that concurrent workers do not propose the same point
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=N_STARTUP_TRIALS, constant_liar=True)


def _create_parent(study: optuna.Study, cfg: SweepConfig, digest: str, space: SearchSpace, storage) -> str:
    params = {"study_name": cfg.study_name, "storage": _shown(cfg.storage), "seed": cfg.seed, "variant": VARIANT,
              "sampler": type(study.sampler).__name__, "pruner": type(study.pruner).__name__,
              "objective": "maximize last-epoch val_accuracy", "search_space": json.dumps(asdict(space))}
    try:
        parent_id = tracking.create_sweep_parent(
            cfg.study_name, params, {TAG_STUDY: cfg.study_name, tracking.TAG_DATA_DIGEST: digest})
        study.set_user_attr(DIGEST_ATTR, digest)
        study.set_user_attr(PARENT_ATTR, parent_id)  # last: the joining workers wait for it
    except BaseException:  # leave no study without a parent: the name is free again
        with contextlib.suppress(Exception):
            optuna.delete_study(study_name=cfg.study_name, storage=storage)
        raise
    print(f"study {cfg.study_name}: created, with sweep parent run {parent_id}")
    return parent_id


def _wait_for_parent(study: optuna.Study, digest: str) -> str:
    deadline = time.monotonic() + PARENT_WAIT_SECONDS
    while PARENT_ATTR not in (attrs := study.user_attrs):
        if time.monotonic() > deadline:
            raise UserError(f"study {study.study_name} names no sweep parent run after {PARENT_WAIT_SECONDS} s: "
                            "`mnist-pipeline sweep` did not create it, or its first worker died; use another study_name")
        time.sleep(0.5)
    if attrs.get(DIGEST_ATTR) != digest:
        raise UserError(f"study {study.study_name} trains on data {attrs.get(DIGEST_ATTR)}, this worker's is "
                        f"{digest}: give every worker the same MNIST files")
    print(f"study {study.study_name}: joined, sweep parent run {attrs[PARENT_ATTR]}")
    return attrs[PARENT_ATTR]


def _taken(study: optuna.Study, before: int | None = None) -> int:
    """Trials that hold a place in the budget (all but FAIL), numbered below ``before`` if given."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state != TrialState.FAIL and (before is None or t.number < before))


@dataclass
class _Objective:
    cfg: SweepConfig
    data: Mnist
    space: SearchSpace
    parent_id: str
    worker: str

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, self.worker)
        if _taken(trial.study, before=trial.number) >= self.cfg.n_trials:
            trial.study.stop()
            raise OverBudget(f"trial {trial.number} not run: another worker took the study's last place")
        cfg = trial_config(self.space.suggest(trial), self.cfg.seed)
        tags = {TAG_STUDY: self.cfg.study_name, TAG_TRIAL: str(trial.number)}
        last = {}

        def after_epoch(epoch: int, metrics: dict[str, float]) -> None:
            last["val_accuracy"] = metrics["val_accuracy"]
            trial.report(metrics["val_accuracy"], epoch)
            if trial.should_prune():
                raise tracking.TrainingStopped(f"pruned by {type(trial.study.pruner).__name__} after epoch {epoch}",
                                               {TAG_TRIAL_STATE: TrialState.PRUNED.name})

        try:
            run_id = tracking.track_training(cfg, self.data, after_epoch=after_epoch, tags={
                "mlflow.parentRunId": self.parent_id, TAG_WORKER: self.worker, **tags})
        except tracking.TrainingStopped as stop:
            trial.set_user_attr(RUN_ATTR, stop.run_id)
            raise optuna.TrialPruned(str(stop)) from None
        except BaseException:
            tracking.tag_last_run(tags, {TAG_TRIAL_STATE: TrialState.FAIL.name})
            raise
        trial.set_user_attr(RUN_ATTR, run_id)
        tracking.set_run_tags(run_id, {TAG_TRIAL_STATE: TrialState.COMPLETE.name})
        return last["val_accuracy"]

    def stop_when_full(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if _taken(study) >= self.cfg.n_trials:
            study.stop()


def _end_stale_run(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna failed ``trial``: its worker stopped sending heartbeats (killed, machine lost).
    End its MLflow run KILLED too."""
    parent_id = study.user_attrs.get(PARENT_ATTR)
    if parent_id:
        _end_runs_of(parent_id, trial.number, "its worker went silent")


def _end_runs_of(parent_id: str, number: int, why: str) -> None:
    """End KILLED any run of trial ``number`` still RUNNING. Best effort: this worker's own
    trials must go on even if the store refuses (summarize tries again at the end)."""
    try:
        for run_id in tracking.end_running_children(parent_id, {TAG_TRIAL: str(number)}):
            tracking.set_run_tags(run_id, {TAG_TRIAL_STATE: TrialState.FAIL.name})
            print(f"trial {number}: {why}; run {run_id} ended KILLED")
    except Exception as err:  # the store's errors come in many types
        print(f"warning: could not end the run of failed trial {number}: {err}")


def summarize(study: optuna.Study, parent_id: str, model_name: str, worker: str) -> pd.DataFrame:
    """Log the trials table and the best COMPLETE trial's params on the parent run, then
    register that trial's run (unless ``model_name`` is ''). Returns the table."""
    trials = study.get_trials(deepcopy=False)
    for trial in trials:  # a FAILed trial's run left RUNNING by a worker that died
        if trial.state == TrialState.FAIL:
            _end_runs_of(parent_id, trial.number, "failed")
    runs = {r.info.run_id: r for r in tracking.child_runs(parent_id)}
    table = pd.DataFrame([_row(t, runs) for t in trials], columns=_COLUMNS)
    states = table["state"].value_counts()
    tags = {"summary_by": worker, **{f"trials_{s.name.lower()}": int(states.get(s.name, 0)) for s in TrialState}}
    complete = [t.user_attrs[RUN_ATTR] for t in trials if t.state == TrialState.COMPLETE and RUN_ATTR in t.user_attrs]
    best = registry.best_run(complete) if complete else None
    best_trial = next((t for t in trials if best and t.user_attrs.get(RUN_ATTR) == best.info.run_id), None)
    if best_trial is not None:
        tags |= {"best_trial": best_trial.number, "best_run_id": best.info.run_id,
                 "best_val_accuracy": best.data.metrics["val_accuracy"],
                 **{f"best.{name}": value for name, value in best_trial.params.items()}}
    tracking.log_sweep_summary(parent_id, table, best_trial.params if best_trial else {}, tags)
    print(f"study {study.study_name}, sweep parent run {parent_id}:\n{table.to_markdown(index=False, floatfmt='.4g')}")
    if best_trial is None:
        print("no COMPLETE trial: nothing to register")
    elif model_name:
        _register(best, model_name, f"study {study.study_name}'s {len(complete)} COMPLETE trials", parent_id)
    return table


_COLUMNS = ["trial", "state", *PARAMS, "epochs_done", "val_accuracy", "test_accuracy", "run_id", "worker"]


def _row(trial: optuna.trial.FrozenTrial, runs: dict) -> dict:
    """val_accuracy is the last epoch's the trial reached (a pruned trial's too)."""
    run = runs.get(trial.user_attrs.get(RUN_ATTR))
    steps = trial.intermediate_values
    return {"trial": trial.number, "state": trial.state.name, **{p: trial.params.get(p) for p in PARAMS},
            "epochs_done": len(steps), "val_accuracy": steps[max(steps)] if steps else None,
            "test_accuracy": run.data.metrics.get("test_accuracy") if run else None,
            "run_id": trial.user_attrs.get(RUN_ATTR, ""), "worker": trial.user_attrs.get(WORKER_ATTR, "")}


def _register(best, model_name: str, chosen_from: str, parent_id: str) -> None:
    try:
        registration = registry.register_run(best, model_name, chosen_from)
    except Exception as err:  # the store's errors come in many types
        raise RegistrationError(
            f"registering the best trial's run {best.info.run_id} failed ({type(err).__name__}: "
            f"{first_line(err)}); the trials are kept: run the same sweep "
            "command again with --n-trials no larger than the trials the study holds (then it only registers)") from None
    version = registration.version
    print(f"{model_name} version {version.version} (run {best.info.run_id}): {registration.reason}")
    tracking.set_run_tags(parent_id, {"registered_model": model_name, "registered_version": version.version,
                                      "champion_decision": registration.reason})
