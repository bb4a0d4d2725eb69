"""Restore a snapshot (or some paths of it) into a directory, never writing outside that directory and
never replacing what the operator did not ask to replace.

The target is first compared with the snapshot (plan.py); under `--overwrite never` (the
default) any entry that would be written differently stops the restore before anything is written.
A file that replaces one in the target is written to a temp name and renamed into place, so a restore
never leaves a half-written file where a whole one was; a file where nothing was is written under its
name (one directory change instead of two: restic and tar do the same), its mode and times set last, so
that a file cut short by a crash is never taken for restored (the next restore's plan compares content,
mode and size and finds it different). A damaged blob never becomes wrong bytes on disk: that file is
named and left as it was (a new one removed), the rest is restored, and the run fails. All paths go
through `Target` (directory descriptors, O_NOFOLLOW), so a tampered manifest or a symlink planted in the
target cannot redirect a write or a delete. Several snapshots restored together (`restore --all`) are
written in one pass in storage order: a pack they share is read once. A command restoring thousands of
files writes them from several processes, each a contiguous part of that order (fanout.py).
"""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple

from agent.backend import BackendError
from agent.leftovers import sweep
from agent.progress import Progress
from agent.restorer import fanout
from agent.restorer.plan import CREATE, REPLACE, SAME, Keep, Plan, Step, extras, make_plan, selection, show
from agent.restorer.target import Parts, PathError, Target, TargetError, safe_parts
from agent.restorer.writer import RestoreResult, Unreadable, Writer
from agent.store import DamagedBlobError, Repository, RepositoryError, Snapshot
from agent.store.manifest import Entry
from agent.store.tree import read_tree

OVERWRITE_MODES = ("never", "if-changed", "always")

# objects in a row the storage would not give (each after the client's retries): the server is gone, and
# the rest would fail alike
_FAILING_IN_A_ROW = 10
# the bytes that cost a writer as much as creating a file (measured: ~30 µs for either), to cut the storage
# order into parts of equal work
_BYTES_A_FILE = 32 * 1024

# errors after which every further write would fail the same way: stop with one message, not 100k
_FATAL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
_ROOT = "\0target\0"  # in a stop's reason, where each request's message names its own target

__all__ = ["OVERWRITE_MODES", "PathError", "RestoreRequest", "RestoreResult", "Restored", "TargetError",
           "restore_snapshot", "restore_snapshots", "safe_parts"]


class RestoreRequest(NamedTuple):
    """One snapshot to restore and how (see restore_snapshot for the fields' meaning)."""

    snapshot: Snapshot
    target: str
    paths: Tuple[str, ...] = ()
    overwrite: str = "never"
    delete: bool = False
    dry_run: bool = False
    keep: Optional[Keep] = None
    entries: Optional[Iterable[Entry]] = None
    follow_target: bool = False


class Restored(NamedTuple):
    """What became of one RestoreRequest: its result, or (nothing written) why it could not start."""

    result: Optional[RestoreResult]
    failure: Optional[Exception] = None


# what stops one request before anything is written, and only that one (restore_snapshot raises them)
_REQUEST_FAILURES = (PathError, TargetError, RepositoryError, BackendError, ValueError, KeyError)


def restore_snapshot(repo: Repository, snapshot: Snapshot, target: str, paths: Iterable[str] = (),
                     overwrite: str = "never", delete: bool = False, dry_run: bool = False,
                     keep: Optional[Keep] = None, progress: Optional[Progress] = None,
                     entries: Optional[Iterable[Entry]] = None, follow_target: bool = False,
                     fork_writers: bool = False) -> RestoreResult:
    """Restore `paths` of `snapshot` (all of it if none) into directory `target`, the job's path
    becoming `target`. `paths` are relative to the job's path, or absolute under it. `overwrite`: one
    of OVERWRITE_MODES; `delete` removes what the target holds under those paths and the snapshot does
    not, except what `keep(path, is_dir)` keeps (the job's excluded paths: Tomcat's logs/ contents).

    Raises PathError (nothing written) if a PATH is outside the job's path or not in the snapshot,
    TargetError if `target` cannot be a directory, DamagedBlobError if the snapshot's file list
    cannot be read. Everything else (a damaged file, a permission problem) is in the result's errors.
    `progress` is told the files and bytes to write, then each file's as it is done. `entries`: the
    snapshot's file list when the caller has read it already (a drill checks the restore against it).
    `follow_target`: a symlink at `target` itself is followed (the operator named it); without it such a
    link is a TargetError (a directory the caller derived: see Target). `fork_writers`: see
    restore_snapshots."""
    request = RestoreRequest(snapshot, target, tuple(paths), overwrite, delete, dry_run, keep, entries,
                             follow_target)
    (done,) = restore_snapshots(repo, [request], progress, fork_writers)
    if done.failure is not None:
        raise done.failure
    assert done.result is not None
    return done.result


def restore_snapshots(repo: Repository, requests: Sequence[RestoreRequest],
                      progress: Optional[Progress] = None, fork_writers: bool = False) -> List[Restored]:
    """Carry out `requests` (each as restore_snapshot would) in one pass: the files of all of them are
    written in the order their blobs are stored, so a pack that several snapshots share (the same jars in
    six services) is read once, not once per snapshot. A request that cannot start (PathError,
    TargetError, an unreadable file list, a storage error reading it) fails alone, named in its Restored;
    the others go on. One Restored per request, in order. `fork_writers`: a restore writing many files
    writes them from several processes (fanout.py), for a command that is a process of its own: the
    writers are forked, so no other thread of the caller may hold a lock the restore needs meanwhile."""
    if any(request.overwrite not in OVERWRITE_MODES for request in requests):
        raise ValueError(f"overwrite must be one of {OVERWRITE_MODES}")
    done: List[Restored] = []
    ready: List[_Job] = []
    try:
        for request in requests:
            try:
                job = _prepare(repo, request)
            except _REQUEST_FAILURES as exc:
                done.append(Restored(None, exc))
                continue
            done.append(Restored(job.result))
            if job.plan is not None:
                job.number = len(ready)
                ready.append(job)
        if ready:
            _apply(repo, ready, progress, fork_writers)
    finally:
        for job in ready:
            job.dest.close()
    return done


class _Job:
    """One request on its way: its target open, its plan made; `plan` None once nothing is to be written
    (a dry run, a refusal under `never`)."""

    def __init__(self, repo: Repository, request: RestoreRequest, result: RestoreResult, dest: Target,
                 plan: Plan) -> None:
        self.request, self.result, self.dest = request, result, dest
        self.plan: Optional[Plan] = plan
        self.writer = Writer(repo, dest, request.overwrite == "always", os.geteuid() == 0, result)
        self.dirs: List[Step] = []  # directories written, for their metadata at the end
        self.number = -1  # its place among the restore's jobs being written: names it across processes


def _prepare(repo: Repository, request: RestoreRequest) -> _Job:
    """Select the entries, open the target and plan; a `_Job` whose plan is None when nothing will be
    written. Raises what restore_snapshot raises before writing."""
    result = RestoreResult()
    snapshot = request.snapshot
    wanted = _wanted(snapshot, request.paths)
    entries = read_tree(repo, snapshot.tree) if request.entries is None else request.entries
    selected, unsafe, found = selection(entries, wanted)
    missing = [show(prefix) for prefix, hit in zip(wanted, found) if not hit]
    if missing:  # before the target is made: a wrong PATH writes nothing
        raise PathError("; ".join(f"{path}: not in snapshot {snapshot.id[:12]}" for path in missing))
    result.errors.extend(f"{path!r}: unsafe path in the manifest, not restored" for path in unsafe)
    dest = Target(request.target, create=not request.dry_run, follow_root=request.follow_target)
    try:
        plan = make_plan(repo, dest, selected, (wanted or [()]) if request.delete else (), os.geteuid() == 0,
                         request.keep)
    except BaseException:
        dest.close()
        raise
    result.errors.extend(plan.problems)
    if request.overwrite == "never":
        result.conflicts = plan.paths(REPLACE)
    else:
        plan = _spare_directories(dest, plan, request.delete, result)
    if request.dry_run:
        _describe(plan, result, request.overwrite == "always")
        _sweep(dest, plan, result, dry_run=True)
    job = _Job(repo, request, result, dest, plan)
    if result.conflicts or request.dry_run:
        dest.close()
        job.plan = None
    return job


def _spare_directories(dest: Target, plan: Plan, delete: bool, result: RestoreResult) -> Plan:
    """The plan without the files and symlinks of the snapshot that would replace a directory holding
    entries: replacing it removes what it holds, which the snapshot does not hold, and only --delete
    removes that (with it, the replacement is said in the warnings)."""
    steps = []
    for step in plan.steps:
        if step.action == REPLACE and step.entry.type != "dir" and step.parts:
            try:
                st = dest.lstat(step.parts)
            except OSError:  # in a directory this user may not search (yet): not known to be a directory
                st = None
            held = False
            if st is not None and stat.S_ISDIR(st.st_mode):
                try:
                    held = any(True for _ in dest.listdir(step.parts))
                except OSError:
                    held = True  # a directory that cannot be listed may hold anything
            if held and not delete:
                result.errors.append(f"{show(step.parts)}: a directory holding entries where the snapshot has a "
                                     f"{step.entry.type}; not replaced (only --delete removes what the snapshot "
                                     "does not hold)")
                continue
            if held:
                result.warnings.append(f"{show(step.parts)}: the directory there and what it holds replaced by the "
                                       f"snapshot's {step.entry.type} (--delete)")
        steps.append(step)
    return plan._replace(steps=tuple(steps))


def _wanted(snapshot: Snapshot, paths: Iterable[str]) -> List[Parts]:
    """`paths` as manifest components; raises PathError naming every one outside the job's path."""
    root = snapshot.source[0] if snapshot.source else None
    wanted, wrong = [], []
    for path in paths:
        rel = os.path.normpath(path)
        if rel.startswith("/"):
            # An absolute path names the same place as on the backed-up host: it must lie under the
            # job's path (which is "/" for riak snapshots).
            if root is None or not (rel == root or rel.startswith(root.rstrip("/") + "/")):
                wrong.append(f"{path}: not under the job's path {root or '(unknown)'}")
                continue
            rel = rel[len(root.rstrip("/")):]
        parts = safe_parts(rel.strip("/") or ".")
        if parts is None:
            wrong.append(f"{path}: not a path inside the snapshot")
            continue
        wanted.append(parts)
    if wrong:
        raise PathError("; ".join(wrong))
    return wanted


def _describe(plan: Plan, result: RestoreResult, always: bool) -> None:
    """A dry run's result: what the restore would do, as it would count it (`always`: every file and
    symlink found the same is rewritten, a directory found the same stays)."""
    result.warnings.extend(f"{show(parts)}: not readable without changing its mode; what --delete would "
                           "remove in it is known only when the restore opens it" for parts in plan.unlisted)
    def replaced(step: Step) -> bool:
        return step.action == REPLACE or (always and step.action == SAME and step.entry.type != "dir")

    result.created = plan.paths(CREATE)
    result.replaced = [show(step.parts) for step in plan.steps if replaced(step)]
    result.deleted = [show(parts) for parts in plan.delete]
    result.unchanged = sum(1 for step in plan.steps if step.action != CREATE and not replaced(step))


def _apply(repo: Repository, jobs: Sequence[_Job], progress: Optional[Progress], fork: bool) -> None:
    for job in jobs:
        assert job.plan is not None
        _delete(job.dest, job.plan.delete, job.result)
        _sweep(job.dest, job.plan, job.result)
        for parts in job.plan.unlisted:  # opened (and made readable) by dir_fd, parents first
            try:
                job.dest.dir_fd(parts)
                _delete(job.dest, extras(job.dest, parts, job.plan.held, job.request.keep), job.result)
            except OSError as exc:
                job.result.errors.append(f"{show(parts)}: cannot be listed, nothing deleted in it: "
                                         f"{exc.strerror or exc}")
    if progress is not None:
        files = [step.entry.size for job in jobs for step in job.plan.steps if step.entry.type == "file"]
        progress.expect(len(files), sum(files))
    _write_all(repo, jobs, _in_storage_order(repo, jobs), progress, fork)
    for job in jobs:
        order = {show(step.parts): number for number, step in enumerate(job.plan.steps)}
        for named in (job.result.created, job.result.replaced):  # reported in manifest order, as planned
            named.sort(key=order.__getitem__)
        # Directory modes and times last, deepest first: writing into a directory changes its mtime, and a
        # read-only directory could not be filled.
        for step in sorted(job.dirs, key=lambda item: len(item.parts), reverse=True):
            try:
                job.writer.finish_dir(step)
            except OSError as exc:
                job.result.errors.append(f"{show(step.parts)}: {exc.strerror or exc}")


def _sweep(dest: Target, plan: Plan, result: RestoreResult, dry_run: bool = False) -> None:
    """Remove the temp files that killed restores left in the directories this restore writes into
    (leftovers.py: never one a live restore is writing), each named in the result's warnings."""
    if dest.fresh:
        return
    held: Dict[Parts, set] = {}
    for step in plan.steps:
        if step.entry.type == "dir":
            held.setdefault(step.parts, set())
        if step.parts:
            held.setdefault(step.parts[:-1], set()).add(step.parts[-1])
    for parts, names in held.items():
        try:
            fd = dest.find_dir(parts)
            swept = sweep(fd, names, dry_run) if fd is not None else None
        except OSError:  # a directory that cannot be listed: what the restore does there says why
            continue
        if swept is not None:
            result.warnings.extend(swept.notes(lambda name, parts=parts: show(parts + (name,)), dry_run))


class _Item(NamedTuple):
    job: _Job
    step: Step


def _in_storage_order(repo: Repository, jobs: Sequence[_Job]) -> List[_Item]:
    """The directories in manifest order (parents first), then everything else ordered by where its first
    blob is stored. In manifest order a restore jumps between packs (the backup read files in directory
    order, and shares blobs with other files and jobs): a pack evicted and needed again is fetched whole
    again on object storage. In storage order each pack is read once, front to back. The sort is stable:
    a hard link's first name (the one `Writer.good` links the others to) stays ahead of the others."""

    def stored_at(item: _Item) -> Tuple[bytes, int]:
        chunks = item.step.entry.chunks if item.step.entry.type == "file" else ()
        return repo.read_order(chunks[0]) if chunks else (b"", 0)

    items = [_Item(job, step) for job in jobs for step in job.plan.steps]  # type: ignore[union-attr]
    return [item for item in items if item.step.entry.type == "dir"] + \
        sorted((item for item in items if item.step.entry.type != "dir"), key=stored_at)


def _writes(item: _Item) -> bool:
    """Whether the item's file is written (its blobs read)."""
    return item.step.entry.type == "file" and (item.step.action != SAME or item.job.writer.always)


def _chunks(items: Sequence[_Item]) -> Iterator[bytes]:
    return (chunk for item in items if _writes(item) for chunk in item.step.entry.chunks)


def _write_all(repo: Repository, jobs: Sequence[_Job], items: Sequence[_Item], progress: Optional[Progress],
               fork: bool) -> None:
    """Every item: in this process, or (`fork` and many files to write) the directories here, then the
    files and symlinks in contiguous parts of the storage order by writer processes (fanout.py), then the
    later names of hard links, which need their first names restored by whichever part had them. A stop
    (storage gone, a full disk) in any part halts the others and is said once per request."""
    writers = fanout.writers_for(sum(1 for item in items if _writes(item))) if fork else 1
    if writers == 1:
        with repo.read_ahead(_chunks(items)):
            _say_stopped(jobs, [_write(repo, items, progress)])
        return
    dirs: List[_Item] = []
    rest: List[_Item] = []
    later: List[_Item] = []  # later names of hard links
    for item in items:
        entry = item.step.entry
        (dirs if entry.type == "dir" else later if entry.type == "file" and entry.hardlink else rest).append(item)
    stop = _write(repo, dirs, progress)
    if stop is not None:  # no directory could be made: nothing else could be written
        _say_stopped(jobs, [stop._replace(left=dict(Counter(stop.left) + Counter(_left([*rest, *later]))))])
        return
    parts = fanout.split(rest, writers, lambda item: 1 + (item.step.entry.size if _writes(item) else 0) / _BYTES_A_FILE)
    linked = {item.step.entry.hardlink for item in later}
    outcomes = fanout.in_processes(len(parts), lambda number, counted, halt: _write_part(
        repo, jobs, parts[number], counted, halt, linked), progress)
    stops: List[Optional[_Stop]] = []
    for part, outcome in zip(parts, outcomes):
        if isinstance(outcome, fanout.PartFailed):
            for job, count in Counter(item.job for item in part).items():
                job.result.errors.append(f"restore stopped: {outcome.why}; up to {count} entries it was writing "
                                         "may not be restored")
            continue
        for number, result in outcome.results.items():
            _merge(jobs[number], result, outcome.good[number])
        stops.append(outcome.stop)
    if any(stop is not None for stop in stops):
        # not linked: their first names may be among what was left out, and copies would meet the same stop
        stops.append(_Stop("", "", -1, _left(later)))
    else:
        # a later name whose first name was in a part that ended is left out: it would be written as a copy
        # of its own, the inode split (the next restore links it)
        lost = {(item.job, item.step.entry.path) for part, outcome in zip(parts, outcomes)
                if isinstance(outcome, fanout.PartFailed) for item in part}
        orphaned = [(item.job, item.step.entry.hardlink) in lost and item.step.entry.hardlink not in
                    item.job.writer.good for item in later]
        for job, count in Counter(item.job for item, orphan in zip(later, orphaned) if orphan).items():
            job.result.errors.append(f"{count} later names of hard links not restored: their first names were "
                                     "written by the part that ended")
        stops.append(_write(repo, [item for item, orphan in zip(later, orphaned) if not orphan], progress))
    _say_stopped(jobs, stops)


class _Written(NamedTuple):
    """What one part of a restore did, per job (by its number): its counts and names, the first names it
    restored that later names of their inodes link to, and where it stopped (None: it wrote its part)."""

    results: Dict[int, RestoreResult]
    good: Dict[int, Dict[str, Parts]]
    stop: Optional[_Stop]


def _write_part(repo: Repository, jobs: Sequence[_Job], items: Sequence[_Item], progress: Optional[Progress],
                halt: fanout.Halt, linked: Set[str]) -> _Written:
    """Write `items` with their own read-ahead, counting into fresh results (the part may run in a writer
    process: what it did goes back to the restore as a _Written)."""
    kept = [job.result for job in jobs]
    for job in jobs:
        job.result = job.writer.result = RestoreResult()
    try:
        with repo.read_ahead(_chunks(items)):
            stop = _write(repo, items, progress, halt)
        return _Written({job.number: job.result for job in jobs},
                        {job.number: {path: job.writer.good[path] for path in linked if path in job.writer.good}
                         for job in jobs}, stop)
    finally:
        for job, result in zip(jobs, kept):
            job.result = job.writer.result = result


def _merge(job: _Job, done: RestoreResult, good: Dict[str, Parts]) -> None:
    result = job.result
    for name in ("created", "replaced", "errors", "warnings"):
        getattr(result, name).extend(getattr(done, name))
    result.unchanged += done.unchanged
    result.files += done.files
    result.bytes += done.bytes
    job.writer.good.update(good)


def _write(repo: Repository, items: Sequence[_Item], progress: Optional[Progress],
           halt: Optional[fanout.Halt] = None) -> Optional[_Stop]:
    """Every step, in order; directories are collected into their job's `dirs` for their metadata. A pack
    the storage would not give fails the files that need it, each named, and is not asked for again.
    Returns where and why it stopped early (storage gone, a full disk: then `halt` is set for the other
    parts), or where it was when another part's stop set `halt`; None when every step was taken."""
    unreadable: Dict[bytes, str] = {}  # pack id -> why the storage would not give it
    for job in {item.job for item in items}:
        job.writer.unreadable = unreadable
    failing = 0  # objects in a row the storage would not give
    for number, (job, step) in enumerate(items):
        if halt is not None and halt.is_set():
            return _Stop("", "", -1, _left(items[number:]))
        result = job.result
        why = ""
        try:
            if job.writer.step(step):
                job.dirs.append(step)
            if progress is not None and step.entry.type == "file":
                progress.advance(files=1, bytes=step.entry.size)
            failing = 0
        except (DamagedBlobError, Unreadable) as exc:
            result.errors.append(f"{show(step.parts)}: not restored, {exc}")
        except (BackendError, RepositoryError) as exc:
            # an object the server will not give (after the client's retries), or a pack that cannot be
            # opened (a data key the identity cannot unwrap)
            result.errors.append(f"{show(step.parts)}: not restored, {exc}")
            failing += 1
            if failing >= _FAILING_IN_A_ROW:
                why = f"the repository's storage would not give {failing} objects in a row"
        except OSError as exc:
            result.errors.append(f"{show(step.parts)}: {exc.strerror or exc}")
            if exc.errno in _FATAL:
                why = f"{exc.strerror} in {_ROOT}"  # each request names its own target
        if why:
            if halt is not None:
                halt.set()
            return _Stop(why, show(step.parts), job.number, _left(items[number + 1:]))
    return None


class _Stop(NamedTuple):
    """Where a pass over items stopped: why (empty: another part's stop halted it), the entry it stopped
    at and that entry's job (by number; -1 when halted), and how many entries of each job it left out."""

    why: str
    at: str
    job: int
    left: Dict[int, int]


def _left(items: Sequence[_Item]) -> Dict[int, int]:
    return dict(Counter(item.job.number for item in items))


def _say_stopped(jobs: Sequence[_Job], stops: Sequence[Optional[_Stop]]) -> None:
    """Say once in each request's result what the restore left out when a pass (or a part of it) stopped:
    the first stop's reason, and every part's entries left out, counted together."""
    fatal = [stop for stop in stops if stop is not None and stop.why]
    if not fatal:
        return
    first = fatal[0]
    left: Counter = Counter()
    for stop in stops:
        if stop is not None:
            left.update(stop.left)
    for job in jobs:
        if job.number in left or job.number == first.job:  # the job it stopped at is named even with none left
            alone = sum(1 for stop in stops if stop is not None) == 1  # one pass: "after" says where
            where = f"after {first.at} " if job.number == first.job and alone else ""
            why = first.why.replace(_ROOT, job.dest.root)
            job.result.errors.append(f"restore stopped: {why}; {left[job.number]} entries {where}were not restored")


def _delete(dest: Target, paths: Iterable[Parts], result: RestoreResult) -> None:
    for parts in paths:
        try:
            dest.remove(dest.dir_fd(parts[:-1]), parts[-1])
            result.deleted.append(show(parts))
        except OSError as exc:
            result.errors.append(f"{show(parts)}: not deleted: {exc.strerror or exc}")
