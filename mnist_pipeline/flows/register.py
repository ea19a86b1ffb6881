"""`register`: the best training run of a `main` run into the Model Registry.

Registers it once (a run registered before keeps its version), with its model card, moves
`challenger` to it and `champion` if it beats the champion (tracking/registry.py).
Prints the version and the champion decision.
"""

from __future__ import annotations

from mnist_pipeline.core.params import RegisterParams
from mnist_pipeline.tracking import registry, store


def run(params: RegisterParams):
    """Returns the registry.Registration."""
    store.check_tracking_store()

    parent_id, children = registry.children_of(params.run_id or None)
    return registry.register_best(list(children.values()), params.model_name, chosen_from=f"main run {parent_id}")
