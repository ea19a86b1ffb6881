"""`main` (what `mlflow run .` runs): the variants as child runs of one parent run, a
comparison table, and the best child registered.

On the parent run: the comparison table (comparison/comparison.csv and .md), both
validation curves in one plot (comparison/validation_curves.png), tags naming its
children and the reused runs; then the registration's version and champion decision.
A child whose configuration, code and data match a FINISHED run is that run, reused.
Prints one line per variant with its scores, the registry's decision, and how to open the UI.
"""

import contextlib
import json

import pandas as pd
import psutil

from mnist_pipeline import names
from mnist_pipeline.core import console, plots
from mnist_pipeline.core.commands import MainParams
from mnist_pipeline.core.config import TrainConfig
from mnist_pipeline.core.data import Mnist
from mnist_pipeline.core.errors import RegistrationError
from mnist_pipeline.core.phases import Phases
from mnist_pipeline.tracking import access, readback, registry, run_lifecycle, store, training_dispatch


def run(params: MainParams) -> pd.DataFrame:
    """Returns the comparison table."""
    phases = Phases(origin=psutil.Process().create_time())
    phases.seconds["start and imports"] = phases.total()
    with phases("data and store checks"):
        configs = params.configs()
        splits, kept = [cfg.validation_split for cfg in configs], "the runs are trained and kept"
        data = run_lifecycle.preflight("main", params.data_dir, splits, params.model_name, kept)
    return compare(configs, data, params, phases)


def compare(configs: list[TrainConfig], data: Mnist, params: MainParams, phases: Phases | None = None) -> pd.DataFrame:
    """The parent run with ``configs`` as children (``params``' own variants and knobs are not
    read), retrained if ``params.force``, ``params.workers`` at once (0: one per core); registers
    the best unless ``params.model_name`` is '', through ``params``' gates. A failed
    registration leaves the parent FINISHED, tagged registration_error, and raises
    RegistrationError saying how to retry. ``phases`` (those before) gets this command's
    phases, logged on the parent run."""
    phases = phases or Phases()
    logged = {"variants": ",".join(c.variant for c in configs), "force": str(params.force).lower()}
    with run_lifecycle.parent_run(names.ROLE_MAIN, data, logged) as parent:
        with phases("variants"):
            children = training_dispatch.train_or_reuse(configs, data, params.force, params.workers)
        run_lifecycle.set_tags({f"{names.TAG_REUSED}.{c.variant}": c.run_id for c in children if c.reused})
        run_lifecycle.set_tags({names.TAG_CHILDREN: json.dumps({c.variant: c.run_id for c in children})})
        with phases("comparison"):  # the table (CSV and markdown) and the validation overlay
            table = readback.comparison_table(children)
            run_lifecycle.log_text(table.to_csv(index=False), names.COMPARISON_CSV)
            run_lifecycle.log_text(table.to_markdown(index=False, floatfmt=".4g"), names.COMPARISON_MD)
            curves = {c.variant: readback.metric_history(c.run_id) for c in children}
            run_lifecycle.log_figure(plots.validation_overlay(curves), names.OVERLAY)
        print(console.summary(parent.info.run_id, table.to_dict("records")))
        failure = _register(children, params.model_name, params.gates(), phases) if params.model_name else None
        with contextlib.suppress(Exception):  # a timing is never worth failing the command
            run_lifecycle.log_dict({**phases.seconds, "total": phases.total()}, names.PHASES, parent.info.run_id)
    print(console.ui_hint(store.tracking_uri()))
    if failure:  # raised only now: training and comparison are complete, the parent FINISHED
        kept = f"the training runs and main run {parent.info.run_id} are FINISHED and kept"
        retry = f"`mlflow run . -e register -P run_id={parent.info.run_id}`"
        if isinstance(failure, access.Refusal):  # a release manager registers it
            raise RegistrationError(f"{failure}; {kept}: a release manager registers its best with {retry}")
        raise RegistrationError(f"registering the best run failed ({failure}); {kept}: retry with {retry}")
    return table


def _register(children, model_name: str, gates, phases: Phases) -> str | None:
    """Register the best child on the active (parent) run; the failure in one line, or None.
    A user without the right to register is not sent to the registry at all."""
    failure = access.registration_refusal(model_name, "main")
    if failure is None:
        try:
            with phases("registration and model card"):
                registry.register_best([c.run_id for c in children], model_name, "this main run's variants", gates)
        except Exception as err:  # the store's errors come in many types
            failure = access.explain(err, model_name, "main")
    if failure:
        with contextlib.suppress(Exception):  # the store may be what failed
            run_lifecycle.set_tags({names.TAG_REGISTRATION_ERROR: failure[:5000]})
    return failure
