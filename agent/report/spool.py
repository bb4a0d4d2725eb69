"""The durable report spool in state_dir: every run report is written here (fsynced) before anybody tries
to deliver it, and leaves only when the collector has acknowledged it (or rejected it for good: then it
moves to the dead-letter folder with the reason beside it).

Layout under `state_dir/reports/`:
  seq                      the last per-host sequence number handed out (flock'ed, fsynced)
  pending/SEQ-STATUS.json  one report each, exactly the bytes that are POSTed
  dead/SEQ-STATUS.json     rejected reports, with SEQ-STATUS.reason
  dropped                  how many reports the bounds have discarded so far

Several processes share it (the daemon and a manual `backup`): names are unique by sequence number,
writes are atomic renames, and a file that vanished under a reader was delivered by the other process.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Dict, Iterator, List, Optional, Tuple

from agent.durable import FILE_MODE, atomic_write, fsync_dir, make_private_dirs
from agent.report.model import RunReport

log = logging.getLogger("backup-agent")

DEFAULT_MAX_REPORTS = 10_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Entry:
    """One spooled report, known from its file name (listing never reads the files)."""

    seq: int
    status: str
    name: str
    size: int


def encode(report: RunReport) -> bytes:
    return json.dumps(report.to_json(), sort_keys=True, separators=(",", ":")).encode()


class Spool:
    def __init__(self, state_dir: str, max_reports: int = DEFAULT_MAX_REPORTS,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = os.path.join(state_dir, "reports")
        self.pending_dir = os.path.join(self.path, "pending")
        self.dead_dir = os.path.join(self.path, "dead")
        self.max_reports = max_reports
        self.max_bytes = max_bytes
        self._jobs: Dict[str, str] = {}

    @contextmanager
    def _locked(self) -> Iterator[int]:
        make_private_dirs(self.pending_dir)
        make_private_dirs(self.dead_dir)
        fd = os.open(os.path.join(self.path, "seq"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)

    def add(self, report: RunReport) -> RunReport:
        """Give `report` the next sequence number and store it durably; returns the stored report."""
        with self._locked() as fd:
            raw = os.pread(fd, 64, 0).strip()
            seq = int(raw) + 1 if raw.isdigit() else self._highest_seq() + 1
            report = replace(report, seq=seq)
            # The number first: if the report write fails, the number is not handed out twice.
            os.pwrite(fd, f"{seq}\n".encode().ljust(21), 0)
            os.fsync(fd)
            name = f"{seq:012d}-{report.status}.json"
            atomic_write(os.path.join(self.pending_dir, name), encode(report))
            self._enforce_bounds()
        return report

    def _highest_seq(self) -> int:
        """The seq file is lost (state wiped by hand): continue after whatever is still spooled."""
        seqs = [entry.seq for entry in self._scan(self.pending_dir) + self._scan(self.dead_dir)]
        return max(seqs, default=0)

    # --- reading ---------------------------------------------------------------------------------------

    @staticmethod
    def _scan(directory: str) -> List[Entry]:
        entries = []
        try:
            with os.scandir(directory) as scan:
                for item in scan:
                    stem, dot, ext = item.name.partition(".")
                    seq_text, _, status = stem.partition("-")
                    if ext != "json" or not seq_text.isdigit():
                        continue  # temp files of a write in progress, reasons
                    try:
                        size = item.stat().st_size
                    except FileNotFoundError:
                        continue
                    entries.append(Entry(int(seq_text), status, item.name, size))
        except FileNotFoundError:
            return []
        entries.sort(key=lambda entry: entry.seq)
        return entries

    def pending(self) -> List[Entry]:
        """Pending reports, oldest first."""
        return self._scan(self.pending_dir)

    def dead(self) -> List[Tuple[Entry, str]]:
        """Dead-lettered reports with the reason each was rejected."""
        result = []
        for entry in self._scan(self.dead_dir):
            try:
                with open(os.path.join(self.dead_dir, entry.name[:-5] + ".reason"), encoding="utf-8") as handle:
                    reason = handle.read().strip()
            except OSError:
                reason = "(reason not recorded)"
            result.append((entry, reason))
        return result

    def read(self, entry: Entry, dead: bool = False) -> Optional[bytes]:
        """The report's bytes, or None if another process delivered it meanwhile."""
        try:
            with open(os.path.join(self.dead_dir if dead else self.pending_dir, entry.name), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def job_of(self, entry: Entry) -> Optional[str]:
        if entry.name in self._jobs:
            return self._jobs[entry.name]
        data = self.read(entry)
        if data is None:
            return None
        try:
            job = str(json.loads(data).get("job"))
        except ValueError:
            return None
        self._jobs[entry.name] = job  # a spooled file never changes: cache for the next ordering
        return job

    def _newest_per_job(self, entries: List[Entry]) -> Dict[str, Entry]:
        newest: Dict[str, Entry] = {}
        for entry in entries:
            job = self.job_of(entry)
            if job is not None:
                newest[job] = entry  # entries are oldest first: the last one wins
        current = {entry.name for entry in entries}
        self._jobs = {name: job for name, job in self._jobs.items() if name in current}
        return newest

    def delivery_order(self, entries: Optional[List[Entry]] = None) -> List[Entry]:
        """The newest report of each job first (newest of all first), so the fleet view is fresh quickly;
        then the backlog, oldest first."""
        entries = self.pending() if entries is None else entries
        first = sorted(self._newest_per_job(entries).values(), key=lambda entry: -entry.seq)
        chosen = {entry.seq for entry in first}
        return first + [entry for entry in entries if entry.seq not in chosen]

    # --- leaving the spool -----------------------------------------------------------------------------

    def remove(self, entry: Entry) -> None:
        try:
            os.unlink(os.path.join(self.pending_dir, entry.name))
        except FileNotFoundError:
            pass

    def dead_letter(self, entry: Entry, reason: str) -> None:
        make_private_dirs(self.dead_dir)
        atomic_write(os.path.join(self.dead_dir, entry.name[:-5] + ".reason"), reason.encode() + b"\n")
        try:
            os.rename(os.path.join(self.pending_dir, entry.name), os.path.join(self.dead_dir, entry.name))
        except FileNotFoundError:
            return
        fsync_dir(self.dead_dir)
        log.error("report %d rejected by the collector, moved to %s: %s", entry.seq, self.dead_dir, reason)

    # --- bounds ----------------------------------------------------------------------------------------

    def dropped(self) -> int:
        try:
            with open(os.path.join(self.path, "dropped"), encoding="utf-8") as handle:
                return int(handle.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _enforce_bounds(self) -> None:
        """Called under the lock. Drops the oldest successful reports that are not their job's newest."""
        entries = self.pending()
        count, size = len(entries), sum(entry.size for entry in entries)
        if count <= self.max_reports and size <= self.max_bytes:
            return
        keep = {entry.seq for entry in self._newest_per_job(entries).values()}
        victims = []
        for entry in entries:
            if count <= self.max_reports and size <= self.max_bytes:
                break
            if entry.status != "ok" or entry.seq in keep:
                continue
            victims.append(entry)
            count -= 1
            size -= entry.size
        for entry in victims:
            self.remove(entry)
        if victims:
            total = self.dropped() + len(victims)
            atomic_write(os.path.join(self.path, "dropped"), f"{total}\n".encode(), durable=False)
            log.warning("report spool full (bounds: %d reports, %d bytes): dropped %d oldest successful "
                        "report(s), %d dropped in all; failed runs and each job's newest report are kept",
                        self.max_reports, self.max_bytes, len(victims), total)
