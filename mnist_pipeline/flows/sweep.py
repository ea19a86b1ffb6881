"""`sweep`: one worker of an Optuna study over the final variant's hyperparameters. This
module and flows/study.py are the ones that import Optuna; MLflow is reached through the
tracking layer.

- **Trials.** Each trial trains `final` with the parameters TPE proposes, as one MLflow
  training run (tracking/track_training.py: the same params, per-epoch metrics, artifacts and
  model as `train`), a child of the study's sweep parent run. It reports each epoch's
  `val_accuracy` to Optuna and returns the last epoch's: what registry.selection_key ranks
  by, since the logged weights are the last epoch's.
- **Pruning.** MedianPruner: a trial whose val_accuracy at some epoch is below the median
  of the COMPLETE trials at that epoch (at least PRUNE_MIN_TRIALS of them) stops training at
  once (track_training.TrainingStopped).
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

import functools
import os
import socket

import optuna
import pandas as pd
from optuna.trial import TrialState

from mnist_pipeline import names
from mnist_pipeline.core import promotion_rule
from mnist_pipeline.core.commands import SweepParams
from mnist_pipeline.core.config import TrainConfig, resolve
from mnist_pipeline.core.data import Mnist
from mnist_pipeline.core.errors import RegistrationError
from mnist_pipeline.flows import study as studies
from mnist_pipeline.flows.study import SearchSpace
from mnist_pipeline.tracking import access, decisions, liveness, readback, registry, run_lifecycle


class OverBudget(Exception):
    """The study's last place was taken while this trial was being created."""


def trial_config(params: dict, seed: int) -> TrainConfig:
    """The final variant with a trial's parameters, as Optuna holds them (hidden_units as text)."""
    units = tuple(int(u) for u in params["hidden_units"].split(","))
    return resolve(studies.VARIANT, {**params, "hidden_units": units, "seed": seed})


def run(params: SweepParams, space: SearchSpace | None = None, pruner: optuna.pruners.BasePruner | None = None) -> str:
    """One worker: join the study (creating it and its parent run if new), run trials until
    it holds ``params.n_trials`` or ``params.timeout`` passes, then log the trials table and
    register the best COMPLETE trial. Returns the parent run id. ``space`` and ``pruner``
    default to study.SEARCH_SPACE and study.median_pruner()."""
    splits = [resolve(studies.VARIANT, {"seed": params.training_seed}).validation_split]
    # a refusal to register is noted now, and said again with what to do once the trials are done
    kept = "the trials are run and kept"
    data = run_lifecycle.preflight("sweep", params.data_dir, splits, params.model_name, kept, ends_dead_runs=False)
    space = space or studies.SEARCH_SPACE
    worker = f"{socket.gethostname()}:{os.getpid()}"
    project_run = run_lifecycle.detach_project_run()  # `mlflow run -e sweep`'s own run stays beside
    # Optuna's INFO line per trial gives every parameter at full precision: after_trial says it shorter
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study, parent_id = studies.open_study(params, data.digest, worker, space, pruner or studies.median_pruner())
    liveness.end_dead_runs("sweep")  # runs left RUNNING by a process killed hard (after the storage's checks)
    if project_run:
        run_lifecycle.set_run_tags(project_run, {names.TAG_STUDY: params.study_name, names.TAG_SWEEP_PARENT: parent_id})
    if studies.taken(study) >= params.n_trials:
        print(
            f"study {params.study_name} already holds {params.n_trials} trials: none to run "
            "(a larger n_trials adds more)"
        )
    else:
        objective = functools.partial(_trial, params, data, space, parent_id, worker)
        budget = optuna.study.MaxTrialsCallback(params.n_trials, states=studies.TAKEN)  # all workers' trials
        study.optimize(objective, timeout=params.timeout or None, catch=(OverBudget,), callbacks=[_after_trial, budget])
    summarize(study, parent_id, params.model_name, worker, params.gates())
    return parent_id


def _trial(
    params: SweepParams, data: Mnist, space: SearchSpace, parent_id: str, worker: str, trial: optuna.Trial
) -> float:
    """Optuna's objective: one trial as a training run under the parent; its last epoch's val_accuracy."""
    from mnist_pipeline.tracking import track_training  # TensorFlow: after the command's fast checks

    trial.set_user_attr(names.WORKER_ATTR, worker)
    if studies.taken(trial.study, before=trial.number) >= params.n_trials:  # the budget callback then stops the study
        print(f"trial {trial.number}: not run, another worker took the study's last place")
        raise OverBudget
    suggested = space.suggest(trial)
    shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in suggested.items())
    print(f"trial {trial.number}: {shown}")
    cfg = trial_config(suggested, params.training_seed)
    tags = {names.TAG_STUDY: params.study_name, names.TAG_TRIAL: str(trial.number)}
    tags |= {names.TAG_PARENT_RUN: parent_id, names.TAG_WORKER: worker}
    last = {}

    def after_epoch(epoch: int, metrics: dict[str, float]) -> None:
        last["val_accuracy"] = metrics["val_accuracy"]
        trial.report(metrics["val_accuracy"], epoch)
        if trial.should_prune():
            raise track_training.TrainingStopped(
                f"pruned by {type(trial.study.pruner).__name__} after epoch {epoch}",
                {names.TAG_TRIAL_STATE: TrialState.PRUNED.name},
            )

    try:
        run_id = track_training.track_training(cfg, data, tags, after_epoch, label=f"trial {trial.number}")
    except track_training.TrainingStopped as stop:
        trial.set_user_attr(names.RUN_ATTR, stop.run_id)
        raise optuna.TrialPruned(str(stop)) from None
    except BaseException:
        run_lifecycle.tag_last_run(tags, {names.TAG_TRIAL_STATE: TrialState.FAIL.name})
        raise
    trial.set_user_attr(names.RUN_ATTR, run_id)
    run_lifecycle.set_run_tags(run_id, {names.TAG_TRIAL_STATE: TrialState.COMPLETE.name})
    return last["val_accuracy"]


def _after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """A line for each trial this worker trained."""
    if (epoch := trial.last_step) is not None:  # None: a trial not run (OverBudget)
        line = f"trial {trial.number}: {trial.state.name} after epoch {epoch}"
        line += f", val_accuracy {trial.intermediate_values[epoch]:.4f}"
        if trial.state == TrialState.COMPLETE:
            line += f"; best so far: trial {study.best_trial.number}, {study.best_value:.4f}"
        print(line)


def summarize(study: optuna.Study, parent_id: str, model_name: str, worker: str, gates: promotion_rule.Gates) -> None:
    """Log the trials table and the best COMPLETE trial's params on the parent run, then
    register that trial's run (unless ``model_name`` is '')."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):  # its run left RUNNING by a dead worker
        studies.end_runs_of(parent_id, trial.number, "failed")
    trials = study.get_trials(deepcopy=False)
    trial_runs = {r.info.run_id: r for r in readback.child_runs(parent_id)}
    table = pd.DataFrame([_row(t, trial_runs) for t in trials])  # never empty: run() starts a trial or found some
    states = table["state"].value_counts()
    tags = {names.TAG_SUMMARY_BY: worker}
    tags |= {f"{names.TAG_TRIALS_PREFIX}{s.name.lower()}": int(states.get(s.name, 0)) for s in TrialState}
    # by run id: the objective names its run before it returns, so every COMPLETE trial has one
    complete = {t.user_attrs[names.RUN_ATTR]: t for t in trials if t.state == TrialState.COMPLETE}
    best = registry.best_run(list(complete)) if complete else None
    best_trial = complete[best.info.run_id] if best else None
    if best_trial is not None:
        tags |= {
            names.TAG_BEST_TRIAL: best_trial.number,
            names.TAG_BEST_RUN_ID: best.info.run_id,
            names.TAG_BEST_VAL_ACCURACY: best.data.metrics["val_accuracy"],
            **{f"{names.TAG_BEST_PARAM_PREFIX}{name}": value for name, value in best_trial.params.items()},
        }
    run_lifecycle.log_text(table.to_csv(index=False), names.SWEEP_TRIALS_CSV, parent_id)
    run_lifecycle.log_text(table.to_markdown(index=False, floatfmt=".4g"), names.SWEEP_TRIALS_MD, parent_id)
    run_lifecycle.log_dict(best_trial.params if best_trial else {}, names.SWEEP_BEST_PARAMS, parent_id)
    run_lifecycle.set_run_tags(parent_id, tags)
    print(f"study {study.study_name}, sweep parent run {parent_id} (run ids and workers: its {names.SWEEP_TRIALS_MD}):")
    # the table within 120 columns: epochs as done/searched, no run id or worker
    done = [f"{n}/{of:.0f}" if pd.notna(of) else "" for n, of in zip(table["epochs_done"], table["epochs"])]
    shown = table.drop(columns=["epochs_done", "run_id", "worker"]).assign(epochs=done)
    print(shown.to_string(index=False, float_format="{:.4g}".format, na_rep=""))
    if best_trial is None:
        print("no COMPLETE trial: nothing to register")
    elif model_name:
        _register(best, model_name, f"study {study.study_name}'s {len(complete)} COMPLETE trials", parent_id, gates)


def _row(trial: optuna.trial.FrozenTrial, trial_runs: dict) -> dict:
    """val_accuracy is the last epoch's the trial reached (a pruned trial's too)."""
    run = trial_runs.get(trial.user_attrs.get(names.RUN_ATTR))
    return {
        "trial": trial.number,
        "state": trial.state.name,
        **{p: trial.params.get(p) for p in studies.PARAMS},
        "epochs_done": len(trial.intermediate_values),
        "val_accuracy": trial.intermediate_values.get(trial.last_step),
        "test_accuracy": run.data.metrics.get("test_accuracy") if run else None,
        "run_id": trial.user_attrs.get(names.RUN_ATTR, ""),
        "worker": trial.user_attrs.get(names.WORKER_ATTR, ""),
    }


def _register(best, model_name: str, chosen_from: str, parent_id: str, gates: promotion_rule.Gates | None) -> None:
    again = (
        "run the same sweep command again with --n-trials no larger than the trials the study holds "
        "(then it only registers)"
    )
    if refused := access.registration_refusal(model_name, "sweep"):
        raise RegistrationError(f"{refused}; the trials are kept: a release manager can {again}")
    try:
        registration = registry.register_run(best, model_name, chosen_from, gates)
    except Exception as err:  # the store's errors come in many types
        raise RegistrationError(
            f"registering the best trial's run {best.info.run_id} failed ({access.explain(err, model_name, 'sweep')}); "
            f"the trials are kept: {again}"
        ) from None
    print(f"{model_name} version {registration.version.version} (run {best.info.run_id}): {registration.reason}")
    decisions.log_decision(registration, parent_id)
