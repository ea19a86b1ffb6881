"""`team`, run by the server's admin: the team's experiment and registered model, created if
missing, and each member's role granted (tracking/team.py). Idempotent: a second run with
the same members changes nothing. Prints one line per resource and per member. Logs no run.
"""

from __future__ import annotations

from mnist_pipeline.core.team import TeamParams
from mnist_pipeline.tracking import store, team


def run(params: TeamParams) -> list[str]:
    """Returns the lines it printed."""
    store.check_tracking_store()
    lines = team.setup(params)
    print("\n".join(lines))
    return lines
