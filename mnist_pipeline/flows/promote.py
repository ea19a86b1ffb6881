"""`promote`: move `champion` to the `challenger` version on what `serve` saw of the two.

The pair's serving runs (tracking/serving_runs.py: every run of this champion and this
challenger, whichever server wrote it) are summed, and the live gates decide
(core/promotion_rule.decide_live): the offline gates passed the challenger, enough shadowed
images and no challenger error, its p99 within the ratio, and on the labelled images its
accuracy not worse beyond the margin at the 95% lower bound. The decision is one printed line,
the version's promote_decision tag and a row of registry/decisions.csv on a run of its own
(role `promote`; under `mlflow run`, the project's run).
"""

from mnist_pipeline import names
from mnist_pipeline.core import promotion_rule
from mnist_pipeline.core.commands import PromoteParams
from mnist_pipeline.core.errors import UserError
from mnist_pipeline.tracking import access, decisions, registry, run_lifecycle, serving_runs, store


def run(params: PromoteParams) -> promotion_rule.LiveDecision:
    store.check_tracking_store()
    name = params.model_name
    access.require("promote", "move the aliases of", "registered_model", name, access.REGISTER_NEEDS)
    champion, challenger = registry.aliases(name, names.CHAMPION, names.CHALLENGER)
    if champion is None or challenger in (None, champion):
        held = f"champion is version {champion}" if champion else "no version holds champion"
        raise UserError(f"{name}: nothing to promote ({held}, challenger is {challenger or 'not set'})")
    access.require_runs("promote")  # refused before any run
    experiment = serving_runs.experiment_of(name, params.serving_experiment)
    window, runs = serving_runs.pair_total(name, experiment, champion, challenger)
    version = registry.version_of(f"models:/{name}/{challenger}")
    evidence = promotion_rule.LiveEvidence.of(
        window, challenger, champion, version.tags.get(names.TAG_OFFLINE_GATE, "")
    )
    decision = promotion_rule.decide_live(evidence, params.gates())
    named = {} if run_lifecycle.launched_by_mlflow_run() else {"run_name": "promote"}  # mlflow run's own run is named
    with run_lifecycle.ended_run({names.TAG_ROLE: names.ROLE_PROMOTE}, **named) as decider:
        run_lifecycle.log_missing_params(
            {"model_name": name, "champion_version": champion, "challenger_version": challenger}
        )
        holds = decision.promote and registry.move_champion(name, champion, challenger)
        reason = decision.reason
        if decision.promote and not holds:
            reason += f"; not moved: champion no longer names version {champion}"
        registry.tag_version(version, names.TAG_PROMOTE_DECISION, reason)
        decisions.log_live_decision(evidence, decision, params.gates(), name, runs, holds, decider.info.run_id)
    print(f"{name} version {challenger}: {reason} ({len(runs)} serving runs in experiment {experiment!r})")
    return decision
