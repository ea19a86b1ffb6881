"""The promotion gates' side that reads and writes the store: the evidence for a version
(its training run and the other seeds of its configuration), and the decision on the run
that took it (a row of its registry/decisions.csv, the registration's tags). The rule itself
is core/promotion_rule.py."""

import sys
from dataclasses import fields

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
    """The offline gates' decision on a registry.Registration, on the run that took it (_record)."""
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
        "require_shadow": registration.gates.require_shadow,
        "holds_champion": registration.champion,
        "reason": registration.reason,
    }
    _record(row, version.name, version.version, registration.reason, run_id)


def log_live_decision(
    evidence: promotion_rule.LiveEvidence,
    decision: promotion_rule.LiveDecision,
    gates: promotion_rule.LiveGates,
    model: str,
    serving_runs: list[str],
    holds_champion: bool,
    run_id: str,
) -> None:
    """`promote`'s decision on the run that took it, as log_decision records the offline gates'
    (its registry/decisions.csv has the live figures for columns)."""
    e, labelled = evidence, sum(evidence.paired)
    row = {
        "model": model,
        "version": e.version,
        "champion_before": e.champion,
        "promoted": decision.promote,
        "gate": decision.gate,
        "offline_gate": e.offline_gate,
        "shadowed_images": e.shadowed,
        "challenger_errors": e.errors,
        "agreement": e.agreement,
        "labelled_images": labelled,
        "labelled_fraction": labelled / e.shadowed if e.shadowed else None,
        **dict(zip(("both_right", "only_champion_right", "only_challenger_right", "neither_right"), e.paired)),
        "accuracy_difference_pp": decision.difference,
        "lower_bound_pp": decision.lower_bound,
        "champion_p99_ms": 1000 * e.p99_seconds[0],
        "challenger_p99_ms": 1000 * e.p99_seconds[1],
        "latency_ratio": decision.latency_ratio,
        **{f.name: getattr(gates, f.name) for f in fields(gates)},
        "serving_runs": " ".join(serving_runs),
        "holds_champion": holds_champion,
        "reason": decision.reason,
    }
    _record(row, model, e.version, decision.reason, run_id)


def _record(row: dict, model: str, version, reason: str, run_id: str) -> None:
    """A decision on the run that took it: registry/decisions.csv (one row), then the model, the
    version and the reason as tags. The table is best effort: the decision stands (the alias
    and the version's tag are written) if it fails."""
    try:
        run_lifecycle.log_text(pd.DataFrame([row]).to_csv(index=False), names.DECISIONS, run_id)
    except Exception as err:  # the store's errors come in many types
        print(f"warning: {names.DECISIONS} could not be logged on run {run_id}: {type(err).__name__}", file=sys.stderr)
    tags = {
        names.TAG_REGISTERED_MODEL: model,
        names.TAG_REGISTERED_VERSION: version,
        names.TAG_CHAMPION_DECISION: reason,
    }
    run_lifecycle.set_run_tags(run_id, tags)
