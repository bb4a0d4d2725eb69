"""Restore drills: prove that a job's latest snapshot restores, by restoring it into a scratch directory
and checking the result against the manifest (trees, streams), `PRAGMA integrity_check` (sqlite), or a
load into a throwaway database server with CHECK TABLE and exact row counts (mysql).

It reads the repository through its interface and restores through agent.restorer and agent.dumps; what
to drill and when is the caller's (the `drill` command, the daemon).
"""

from agent.drill.proof import Proof
from agent.drill.run import DrillTarget, drill, remove_leftovers, unopened

__all__ = ["DrillTarget", "Proof", "drill", "remove_leftovers", "unopened"]
