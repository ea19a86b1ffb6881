"""`register`: the best training run of a `main` run into the Model Registry.

Registers it once (a run registered before keeps its version), with its model card, moves
`challenger` to it and `champion` if it passes the promotion gates against the champion
(core/promotion_rule.py). Prints the version and the champion decision, which a run of its own
(role `register`; under `mlflow run`, the project's run) records in registry/decisions.csv.
"""

from mnist_pipeline import names
from mnist_pipeline.core.commands import RegisterParams
from mnist_pipeline.tracking import access, registry, run_lifecycle, store


def run(params: RegisterParams):
    """Returns the registry.Registration."""
    store.check_tracking_store()

    parent_id, children = registry.children_of(params.run_id or None)
    name = {} if run_lifecycle.launched_by_mlflow_run() else {"run_name": "register"}  # mlflow run's own run is named
    # beside the main run it registers from; under `mlflow run`, in the project run's experiment
    experiment_id = (
        run_lifecycle.use_experiment_of(parent_id, "main run", "pass a run_id from this store") if name else None
    )
    access.require_runs("register", experiment_id)  # refused before any run or version
    if refused := access.registration_refusal(params.model_name, "register"):
        raise access.AccessError(refused)
    with run_lifecycle.ended_run(**name, tags={names.TAG_ROLE: names.ROLE_REGISTER}):
        run_lifecycle.log_missing_params({"main_run_id": parent_id, "model_name": params.model_name})
        chosen_from = f"main run {parent_id}"
        try:
            return registry.register_best(list(children.values()), params.model_name, chosen_from, params.gates())
        except Exception as err:  # refused half-way (a permission changed meanwhile): one line
            if access.is_refusal(err):
                raise access.AccessError(access.explain(err, params.model_name, "register")) from None
            raise
