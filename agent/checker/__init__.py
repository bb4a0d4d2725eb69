"""Verify: the operation that checks a repository's snapshots, index and packs, through the
repository's interface only (agent.store.Repository)."""

from agent.checker.verify import VerifyResult, verify_repository

__all__ = ["VerifyResult", "verify_repository"]
