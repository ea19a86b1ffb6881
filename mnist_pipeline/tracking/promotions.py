"""The promotion gates' side that reads and writes the store: the evidence for a version
(its training run and the other seeds of its configuration), and the decision on the run
that took it (a row of its registry/decisions.csv, the registration's tags). The rule itself
is core/promotion.py."""

from __future__ import annotations

import sys

import pandas as pd
from mlflow.entities.model_registry import ModelVersion

from mnist_pipeline import names
from mnist_pipeline.core import promotion
from mnist_pipeline.core.errors import UserError
from mnist_pipeline.tracking import readback, runs


def evidence(version: ModelVersion) -> promotion.Evidence:
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

    def has_recalls(r) -> bool:
        return all(k in r.data.metrics for k in recall_keys)

    with_recalls = [r for r in seeds if has_recalls(r)] if has_recalls(run) else []  # the version's own first
    return promotion.Evidence(
        version=str(version.version),
        accuracies=tuple(r.data.metrics["val_accuracy"] for r in seeds),
        recalls=tuple(tuple(r.data.metrics[k] for k in recall_keys) for r in with_recalls),
    )


def decision_row(registration, model_name: str) -> dict:
    """One row of registry/decisions.csv for a registry.Registration."""
    d, version = registration.decision, registration.version
    return {
        "model": model_name,
        "version": version.version,
        "run_id": version.tags.get("run_id", ""),
        "variant": version.tags.get("variant", ""),
        "champion_before": registration.versus or "",
        "promoted": bool(d and d.promote),
        "gate": d.gate if d else "already champion",
        "gain_pp": d.gain if d else 0.0,
        "worst_digit": "" if d is None or d.worst_digit is None else d.worst_digit,
        "worst_drop_pp": d.worst_drop if d else 0.0,
        "welch_p": "" if d is None or d.p_value is None else d.p_value,
        "min_improvement": registration.gates.min_improvement,
        "max_class_drop": registration.gates.max_class_drop,
        "holds_champion": registration.champion,
        "reason": registration.reason,
    }


def log_decision(registration, model_name: str, run_id: str) -> None:
    """The decision on the run that took it: registry/decisions.csv (one row), then the
    registered model, its version and the decision as tags. The table is best effort: the
    decision stands (the alias and the version's tag are written) if it fails."""
    table = pd.DataFrame([decision_row(registration, model_name)])
    try:
        runs.log_text(table.to_csv(index=False), names.DECISIONS, run_id)
    except Exception as err:  # the store's errors come in many types
        print(f"warning: {names.DECISIONS} could not be logged on run {run_id}: {type(err).__name__}", file=sys.stderr)
    tags = {
        names.TAG_REGISTERED_MODEL: model_name,
        names.TAG_REGISTERED_VERSION: registration.version.version,
        names.TAG_CHAMPION_DECISION: registration.reason,
    }
    runs.set_run_tags(run_id, tags)
