"""Prune: the operation that applies retention and deletes data no snapshot needs, through the
repository's interface only (agent.store.Repository)."""

from agent.pruner.prune import PruneResult, prune_repository, select_kept

__all__ = ["PruneResult", "prune_repository", "select_kept"]
