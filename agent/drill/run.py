"""A drill of one job: find the snapshot to prove (the job's latest of the host), prove it in a scratch
directory by the snapshot's type, and turn the outcome into a run report (`"trigger": "drill"`) that
is spooled for the collector like every report -- but never recorded as a backup of the job (a drill
says nothing about how fresh the backups are).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace
from typing import Callable, Dict, Optional, Tuple

from agent.drill.dumps import prove_command, prove_mysql, prove_sqlite
from agent.drill.proof import Proof
from agent.drill.scratch import Cleared, Scratch, clear_leftovers
from agent.drill.server import ServerError
from agent.drill.tree import prove_tree
from agent.report import RunReport, new_run_id, utc_now
from agent.report.spool import Spool
from agent.store import DamagedBlobError, Repository, RepositoryError, Snapshot
from agent.text import in_words

Prover = Callable[[Repository, Snapshot, str], Proof]
PROVERS: Dict[str, Prover] = {"fs": prove_tree, "riak": prove_tree, "mysql": prove_mysql,
                              "command": prove_command, "sqlite": prove_sqlite}


@dataclass(frozen=True)
class DrillTarget:
    """One job to drill. `host`: whose snapshots (and whose name the report carries); `every_low`,
    `every_high`: the job's backup policy in seconds, carried in the report like a backup's;
    `drill_every`: the drill policy in seconds; `job_type`: the configured type (None: unknown here, the
    snapshot's is taken); `identity`: the file holding the identity of an encrypted repository (the
    command opens the repository with it)."""

    job: str
    host: str
    every_low: float
    every_high: float
    drill_every: float
    job_type: Optional[str] = None
    identity: Optional[str] = None


def drill(repo: Repository, target: DrillTarget, state_dir: str, spool: Optional[Spool] = None,
          fork_writers: bool = False) -> RunReport:
    """Prove `target`'s latest snapshot in a scratch directory under `state_dir` (removed afterwards;
    leftovers of killed drills removed first) and return the run report, spooled in `spool` if given.
    Nothing escapes as an exception: every failure is the report's error. `fork_writers`: a tree's
    restore may write from forked processes (agent.restorer.restore_snapshots: a command of its own, not
    the daemon, whose other threads hold locks)."""
    run_id, started = new_run_id(), utc_now()
    snapshot: Optional[Snapshot] = None
    notes: Tuple[str, ...] = ()
    try:
        with repo.lock(exclusive=False, purpose=f"drill {target.job}"):  # prune waits: no pack goes mid-drill
            repo.refresh()
            histories, damaged = repo.histories(target.host)
            found = histories.get(target.job, [])
            snapshot = found[-1] if found else None
            if snapshot is None:  # its snapshots may be among the documents that cannot be read: named
                proof = Proof(errors=(f"no {'readable ' if damaged else ''}snapshot of {target.job} by host "
                                      f"{target.host} to prove", *(document.reason for document in damaged)))
            else:
                # any job's latest may be among them (a sealed or unserved document does not say whose)
                notes = tuple(f"{document.reason} (if it is the latest snapshot of {target.job}, an older "
                              "one was proven)" for document in damaged)
                proof = _prove(repo, snapshot, state_dir, fork_writers)
    except Exception as exc:  # the storage failing mid-drill (a lock, a listing): the drill fails, named
        proof = Proof(errors=(in_words(exc),))
    return _reported(target, run_id, started, snapshot, proof, notes + tuple(repo.index_problems()), state_dir,
                     spool)


def unopened(target: DrillTarget, problem: str, state_dir: str, spool: Optional[Spool] = None) -> RunReport:
    """The report of a drill that could not begin because the repository cannot be opened (`problem`:
    why, naming the object: a damaged config, an unreachable endpoint), spooled in `spool` if given: the
    collector learns that the job's drills fail as it learns of any other failure."""
    return _reported(target, new_run_id(), utc_now(), None,
                     Proof(errors=(f"the repository cannot be opened: {problem}",)), (), state_dir, spool)


def _reported(target: DrillTarget, run_id: str, started: str, snapshot: Optional[Snapshot], proof: Proof,
              notes: Tuple[str, ...], state_dir: str, spool: Optional[Spool]) -> RunReport:
    """The drill's run report (`notes`: warnings besides the proof's), spooled in `spool` if given."""
    report = RunReport(id=run_id, host=target.host, job=target.job,
                       type=snapshot.type if snapshot else (target.job_type or "fs"), trigger="drill",
                       status="ok" if proof.ok else "failed", changed=False,
                       snapshot=snapshot.id if snapshot else None, started_at=started, finished_at=utc_now(),
                       files=proof.files, bytes=proof.bytes, errors=proof.errors,
                       warnings=proof.warnings + notes,
                       every_low=target.every_low, every_high=target.every_high, drill_every=target.drill_every,
                       tables=proof.tables)
    if spool is not None:
        try:
            report = spool.add(report)
        except OSError as exc:  # the drill's outcome stands; it is printed even if it cannot be sent
            report = replace(report, warnings=report.warnings + (
                f"the report could not be spooled in {state_dir}: {exc.strerror}",))
    return report


def _prove(repo: Repository, snapshot: Snapshot, state_dir: str, fork_writers: bool) -> Proof:
    """The proof of `snapshot` in a new scratch directory, with what could not be cleaned up as warnings.
    Raises OSError if no scratch directory can be made."""
    prover = PROVERS.get(snapshot.type)
    if prover is None:
        return Proof(errors=(f"snapshot {snapshot.id[:12]} is of type {snapshot.type}, which no drill proves",))
    if prover is prove_tree and fork_writers:
        prover = functools.partial(prove_tree, fork_writers=True)
    with Scratch(state_dir) as scratch:
        proof = _proven(prover, repo, snapshot, scratch)
    return replace(proof, warnings=proof.warnings + tuple(scratch.warnings))


def _proven(prover: Prover, repo: Repository, snapshot: Snapshot, scratch: Scratch) -> Proof:
    try:
        return prover(repo, snapshot, scratch.directory(snapshot.type))
    except DamagedBlobError as exc:  # a blob of the manifest, or of a dump being read: named with its pack
        location = repo.index.get(exc.blob_id)
        pack = f" (pack {location.pack.hex()})" if location is not None else ""
        return Proof(errors=(f"snapshot {snapshot.id[:12]} cannot be read: {exc}{pack}",))
    except RepositoryError as exc:
        return Proof(errors=(f"snapshot {snapshot.id[:12]} cannot be read: {exc}",))
    except ServerError as exc:
        return Proof(errors=(f"throwaway server: {exc}",))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return Proof(errors=(f"{where}{exc.strerror or exc}",))
    except Exception as exc:  # a restore path that fails in a way of its own: the drill fails, named
        return Proof(errors=(in_words(exc),))


def remove_leftovers(state_dir: str) -> Cleared:
    """Scratch directories of killed drills, removed (with their servers); for start-up of the daemon.
    Never raises: what could not be removed is in the result's problems."""
    return clear_leftovers(os.path.join(state_dir, "drill"))
