"""`team`, run by the server's admin: the team's experiment and registered model, created if
missing, and each member's role granted (tracking/grants.py). Idempotent: a second run with
the same members changes nothing. Prints one line per resource and per member. Logs no run.
"""

from mnist_pipeline.core.roles import TeamParams
from mnist_pipeline.tracking import grants, store


def run(params: TeamParams) -> list[str]:
    """Returns the lines it printed."""
    store.check_tracking_store()
    lines = grants.setup(params)
    print("\n".join(lines))
    return lines
