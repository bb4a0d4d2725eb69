"""Human-readable text for what the commands return: sizes, run reports, snapshot rows, verify and
prune results, job status, the report spool. Each function takes plain values and returns lines, so
the commands (and the demo) print the same text, and JSON output never passes through here."""

from __future__ import annotations

import stat
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Dict, Iterable, List, Mapping, Optional, Sequence

from agent.text import plural

if TYPE_CHECKING:
    from agent.checker import VerifyResult
    from agent.pruner import PruneResult
    from agent.report.model import RunReport
    from agent.store import Snapshot
    from agent.store.diff import ManifestDiff


def size(count: int) -> str:
    """`count` bytes as B, KiB, MiB or GiB (binary units, one decimal above bytes)."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def when(iso: str) -> str:
    """An ISO 8601 UTC time as `YYYY-MM-DD HH:MM:SS`."""
    return iso[:19].replace("T", " ")


def iso_ns(epoch_ns: int) -> str:
    """Nanoseconds since the epoch as ISO 8601 UTC with microseconds (`2026-11-27T07:25:01.123456Z`)."""
    moment = datetime.fromtimestamp(epoch_ns // 1000 / 1e6, timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


_TYPE_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}


def listing(rows: Sequence[Mapping]) -> List[str]:
    """`ls --json` rows as `ls -l` would show them: mode, owner, size, mtime, path (-> target)."""
    lines = []
    for row in rows:
        mode = stat.filemode(_TYPE_BITS.get(row["type"], 0) | int(row["mode"], 8))
        link = f" -> {row['target']}" if row["target"] is not None else ""
        lines.append(f"{mode}  {row['uid']:>5}:{row['gid']:<5} {row['size']:>12}  {when(row['mtime'])}  "
                     f"{row['path']}{link}")
    return lines


def changes(counts: Optional[Mapping]) -> str:
    """A snapshot's change counts as `+added -removed ~changed`, or "" without them."""
    if not counts:
        return ""
    return f"+{counts.get('added', 0)} -{counts.get('removed', 0)} ~{counts.get('changed', 0)}"


def diff(result: ManifestDiff, old: Snapshot, new: Snapshot) -> List[str]:
    """restic's `diff` lines: `+` added, `-` removed, `M` changed (with what changed), then the counts."""
    lines = [f"comparing {old.id[:12]} ({old.job}, {when(old.time)}) with {new.id[:12]} ({new.job}, "
             f"{when(new.time)})"]
    marked = [(path, f"+    {path}") for path in result.added] + [(path, f"-    {path}") for path in result.removed]
    marked += [(item.path, f"M    {item.path}  ({', '.join(item.what)})") for item in result.changed]
    from agent.store.manifest import manifest_order

    lines += [line for _, line in sorted(marked, key=lambda pair: manifest_order(pair[0]))]
    lines.append(f"{len(result.added)} added, {len(result.removed)} removed, {len(result.changed)} changed")
    return lines


def found(rows: Sequence[Mapping], pattern: str) -> List[str]:
    """`find --json` rows grouped by snapshot: the snapshot, then each matching path with size and mtime."""
    if not rows:
        return [f"no snapshot holds a path matching {pattern!r}"]
    lines: List[str] = []
    current = None
    for row in rows:
        if row["snapshot"] != current:
            current = row["snapshot"]
            lines.append(f"{current[:12]}  {when(row['time'])}  {row['job']}")
        shown = size(row["size"]) if row["type"] == "file" else row["type"]
        lines.append(f"  {row['path']}  {shown}  modified {when(row['mtime'])}")
    snapshots = len({row["snapshot"] for row in rows})
    lines.append(f"{plural(len(rows), 'match', 'matches')} in {plural(snapshots, 'snapshot')}")
    return lines


def report(run: RunReport) -> List[str]:
    """One run report: the job, its outcome and sizes, then its notes and errors indented."""
    state = "unchanged" if run.ok and not run.changed else run.status
    snap = f" snapshot {run.snapshot[:12]}" if run.snapshot else ""
    lines = [f"{run.job}: {state}{snap}, {plural(run.files, 'file')}, {size(run.bytes)}, {size(run.new_bytes)} new"]
    lines += [f"  note: {warning}" for warning in run.warnings]
    lines += [f"  error: {error}" for error in run.errors]
    return lines


def snapshots(rows: Sequence[Mapping], this_host: Optional[str] = None) -> List[str]:
    """Rows shaped like `snapshots --json`, one line each; the host is shown when a row is not this
    host's (hosts sharing a repository)."""
    if not rows:
        return ["no snapshots"]
    hosts = {row.get("host") for row in rows} != {this_host}
    return [f"{row['id'][:12]}  {when(row['time'])}  " + (f"{row['host']:<16} " if hosts else "") +
            f"{row['job']:<24} {row['trigger']:<9}"
            f" {plural(row['files'], 'file'):>13}  {size(row['bytes']):>10}"
            f"{'  partial' if row['partial'] else ''}{'  ' + changes(row['changes']) if row['changes'] else ''}"
            for row in rows]


def verify(result: VerifyResult, read_data: bool) -> List[str]:
    lines: List[str] = []
    for key, reason in sorted(result.damaged.items()):
        lines.append(f"damaged: {key}: {reason}")
        lines += [f"  affects {where}" for where in result.affected.get(key, [])]
    lines += [f"damaged: {problem}" for problem in result.problems]
    mode = "read and re-hashed" if read_data else "checked"
    verdict = "ok" if result.ok else "DAMAGED"
    lines.append(f"{verdict}: {plural(result.snapshots, 'snapshot')}, {plural(result.blobs, 'blob')} in "
                 f"{plural(result.packs, 'pack')} {mode}")
    if result.recorded:
        lines.append(f"recorded {plural(result.recorded, 'damaged blob copy', 'damaged blob copies')}: no backup "
                     "reuses them, and the next backup that reads their files stores them again")
    return lines


def prune(result: PruneResult, dry_run: bool) -> List[str]:
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {snap.id[:12]}  {when(snap.time)}  {snap.job}" for snap in result.removed]
    lines += [f"kept every snapshot of {job}: no such job in the configuration" for job in result.unknown_jobs]
    lines.append(f"{plural(len(result.kept), 'snapshot')} kept, {len(result.removed)} {verb}"
                 + ("" if dry_run else f"; {plural(result.packs_deleted, 'pack')} deleted, "
                                       f"{result.packs_rewritten} rewritten, {size(result.bytes_freed)} freed"))
    lines += [f"rewrote the index in place of the damaged index file {name}" for name in result.index_replaced]
    return lines


def status(agent: Mapping, rows: Sequence[Mapping]) -> List[str]:
    """`status --json`'s agent and job rows as text."""
    pid = agent["pid"]
    lines = [f"agent: {'running, pid ' + str(pid) if pid else 'not running'}; host {agent['host']}"]
    width = max((len(row["name"]) for row in rows), default=4)
    for row in rows:
        last = "never" if not row["last_run"] else (
            f"{when(row['last_run'])} {row['last_status']} ({row['last_trigger']}"
            f"{', unchanged' if row['last_changed'] is False else ''})")
        paused = f", paused until {row['paused_until'][11:16]}" if row["paused_until"] else ""
        lines.append(f"  {row['name']:<{width}}  {row['type']:<7} last {last}; next "
                     f"{row['next_due'][:16].replace('T', ' ')} ({row['next_trigger']}); watch {row['watch']}{paused}")
        if row.get("last_error"):
            lines.append(f"  {'':<{width}}  error: {row['last_error']}")
    return lines


def spool(where: str, pending: Iterable[Dict], dead: Iterable[Dict], dropped: int,
          flushed: Optional[Mapping] = None) -> List[str]:
    """The report spool as `reports` shows it; `flushed` is `reports --json`'s "flush" object, if any."""
    pending, dead = list(pending), list(dead)
    lines = []
    if flushed is not None:
        lines.append(f"delivered {flushed['delivered']}, dead-lettered {flushed['dead']}"
                     + (f"; refused: {flushed['blocked']}" if flushed["blocked"] else ""))
    lines.append(f"{plural(len(pending), 'report')} pending ({where}), {len(dead)} dead-lettered, {dropped} "
                 "dropped by the spool's bounds")
    lines += [f"  pending #{row['seq']}  {when(row['finished_at'])}  {row['job']}  {row['status']}"
              for row in pending]
    lines += [f"  dead    #{row['seq']}  {when(row['finished_at'])}  {row['job']}  {row['status']}: {row['reason']}"
              for row in dead]
    return lines


def show(lines: Iterable[str]) -> None:
    for line in lines:
        print(line)
