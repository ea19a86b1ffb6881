"""The promotion gates' side that reads and writes the store: the evidence for a version
(its training run and the other seeds of its configuration), and the decision on the run
that took it (a row of its registry/decisions.csv, the registration's tags). The rule itself
is core/promotion_rule.py."""

import sys

import pandas as pd
from mlflow.entities.model_registry import ModelVersion

from mnist_pipeline import names
from mnist_pipeline.core import promotion_rule
from mnist_pipeline.core.errors import UserError
from mnist_pipeline.tracking import readback, run_lifecycle


def evidence(version: ModelVersion) -> promotion_rule.Evidence:
    """The last-epoch validation scores of the version's training run and of the other
    seeds of its configuration in the store."""
    cannot = ", so the promotion gates cannot compare with it (move the champion alias by hand)"
    run = readback.training_run_of(version, cannot)
    if "val_accuracy" not in run.data.metrics:
        raise UserError(
            f"{version.name} version {version.version}: its training run {run.info.run_id} has no val_accuracy "
            f"in this store{cannot}"
        )
    seeds = readback.seed_runs(run)
    recall_keys = [names.VAL_RECALL.format(digit=d) for d in range(10)]
    recalls = [tuple(r.data.metrics.get(k) for k in recall_keys) for r in seeds]
    # the val recalls of the runs that logged all ten, if the version's own run (the first) did
    recalls = tuple(r for r in recalls if None not in r) if None not in recalls[0] else ()
    return promotion_rule.Evidence(str(version.version), tuple(r.data.metrics["val_accuracy"] for r in seeds), recalls)


def log_decision(registration, run_id: str) -> None:
    """The decision on the run that took it: registry/decisions.csv (one row for a
    registry.Registration), then the registered model, its version and the decision as tags.
    The table is best effort: the decision stands (the alias and the version's tag are
    written) if it fails."""
    d, version = registration.decision, registration.version
    row = {
        "model": version.name,
        "version": version.version,
        "run_id": version.tags.get("run_id", ""),
        "variant": version.tags.get("variant", ""),
        "champion_before": registration.versus or "",
        "promoted": bool(d and d.promote),
        "gate": d.gate if d else "already champion",
        "gain_pp": d.gain if d else 0.0,
        "worst_digit": d.worst_digit if d else None,  # None: an empty cell
        "worst_drop_pp": d.worst_drop if d else 0.0,
        "welch_p": d.p_value if d else None,
        "min_improvement": registration.gates.min_improvement,
        "max_class_drop": registration.gates.max_class_drop,
        "holds_champion": registration.champion,
        "reason": registration.reason,
    }
    try:
        run_lifecycle.log_text(pd.DataFrame([row]).to_csv(index=False), names.DECISIONS, run_id)
    except Exception as err:  # the store's errors come in many types
        print(f"warning: {names.DECISIONS} could not be logged on run {run_id}: {type(err).__name__}", file=sys.stderr)
    tags = {
        names.TAG_REGISTERED_MODEL: version.name,
        names.TAG_REGISTERED_VERSION: version.version,
        names.TAG_CHAMPION_DECISION: registration.reason,
    }
    run_lifecycle.set_run_tags(run_id, tags)
