"""The `backup-agent` command: parses arguments, calls the modules that do the work, maps outcomes to
exit codes (0 ok, 1 a run or check failed, 2 usage or configuration error).

With --json, stdout holds only JSON; every message goes to stderr. Heavy modules are imported inside the
commands that need them, so a no-change backup is not dominated by start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, List, Optional

from agent import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _load(args: argparse.Namespace):
    from agent.config import load_config

    config = load_config(args.config)
    for warning in config.warnings:
        _err(f"warning: {warning}")
    return config


def _open_repo(config):
    from agent.store import Repository, RepositoryError

    try:
        return Repository.open(config.repository)
    except RepositoryError as exc:
        raise UsageError(str(exc)) from None


# --- commands ---------------------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.json:
        _print_json({"config": config.path, "host": config.host, "repository": config.repository,
                     "jobs": [{"name": job.name, "type": job.type, "target": job.target,
                               "schedule": job.schedule, "every": job.every.text, "file": job.source}
                              for job in config.jobs]})
        return EXIT_OK
    print(f"{config.path}: ok, {len(config.jobs)} jobs, host {config.host}, repository {config.repository}")
    width = max((len(job.name) for job in config.jobs), default=4)
    for job in config.jobs:
        print(f"  {job.name:<{width}}  {job.type:<7}  {job.target}  ({job.schedule})")
    return EXIT_OK


def cmd_backup(args: argparse.Namespace) -> int:
    from agent.runner import open_repository, run_job

    config = _load(args)
    if args.all and args.jobs:
        raise UsageError("give job names or --all, not both")
    if not args.all and not args.jobs:
        raise UsageError("name the jobs to back up, or give --all")
    names = [job.name for job in config.jobs] if args.all else args.jobs
    unknown = [name for name in names if name not in {job.name for job in config.jobs}]
    if unknown:
        raise UsageError(f"unknown job(s): {', '.join(unknown)} (known: "
                         f"{', '.join(job.name for job in config.jobs)})")
    reports = []
    repo = None
    try:
        repo = open_repository(config)  # shared by the runs: the index is loaded once
    except Exception:
        pass  # each run reports the problem in its own report
    # One job after the other: measured, two threads were slower (GIL) and doubled peak memory.
    for name in names:
        report = run_job(config, config.job(name), trigger="manual", repo=repo)
        reports.append(report)
        if not args.json:
            _print_report(report)
    if args.json:
        _print_json([report.to_json() for report in reports])
    if config.collector is not None:
        _deliver_briefly(config)
    return EXIT_OK if all(report.ok for report in reports) else EXIT_FAILED


BRIEF_DELIVERY = 5.0  # a one-shot backup tries this long; the daemon (or `reports --flush`) does the rest


def _deliver_briefly(config) -> None:
    import time

    from agent.report.sender import Sender
    from agent.runner import spool_for

    sender = Sender(spool_for(config), config.collector, timeout=3.0, patient=False)
    try:
        result = sender.drain(deadline=time.monotonic() + BRIEF_DELIVERY)
    finally:
        sender.close()
    if result.remaining:
        _err(f"note: {result.remaining} report(s) not delivered to the collector yet: they stay spooled "
             "(`backup-agent reports`)")


def _print_report(report) -> None:
    if report.ok and not report.changed:
        state = "unchanged"
    else:
        state = report.status
    snap = f" snapshot {report.snapshot[:12]}" if report.snapshot else ""
    print(f"{report.job}: {state}{snap}, {report.files} files, {_size(report.bytes)}, "
          f"{_size(report.new_bytes)} new")
    for warning in report.warnings:
        print(f"  note: {warning}")
    for error in report.errors:
        print(f"  error: {error}")


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def cmd_snapshots(args: argparse.Namespace) -> int:
    config = _load(args)
    from agent.store import Repository

    if not Repository(config.repository).exists():
        snaps = []
    else:
        snaps = _open_repo(config).snapshots(args.job)
    rows = [{"id": snap.id, "job": snap.job, "time": snap.time, "trigger": snap.trigger,
             "files": snap.files, "bytes": snap.bytes} for snap in snaps]
    if args.json:
        _print_json(rows)
        return EXIT_OK
    if not rows:
        print("no snapshots")
    for row in rows:
        print(f"{row['id'][:12]}  {row['time'][:19].replace('T', ' ')}  {row['job']:<24} {row['trigger']:<9}"
              f" {row['files']:>7} files  {_size(row['bytes'])}")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    from agent.dumps.restore import STREAM_TYPES
    from agent.restorer import restore_snapshot
    from agent.store import RepositoryError

    config = _load(args)
    repo = _open_repo(config)
    with repo.lock(exclusive=False, purpose="restore"):
        try:
            snapshot = repo.find_snapshot(args.snapshot)
        except RepositoryError as exc:
            raise UsageError(str(exc)) from None
        if snapshot.type in STREAM_TYPES:
            return _restore_dump(args, config, repo, snapshot)
        if args.to_database:
            raise UsageError(f"--to-database restores mysql snapshots; {snapshot.id[:12]} is {snapshot.type}")
        if not args.target:
            raise UsageError("give --target DIR")
        result = restore_snapshot(repo, snapshot, os.path.abspath(args.target), args.paths)
    for error in result.errors:
        _err(f"error: {error}")
    _err(f"restored {result.files} files ({_size(result.bytes)}) of snapshot {snapshot.id[:12]} "
         f"({snapshot.job}, {snapshot.time}) into {args.target}")
    return EXIT_FAILED if result.errors else EXIT_OK


def _restore_dump(args: argparse.Namespace, config, repo, snapshot) -> int:
    from agent.dumps.restore import RestoreRefused, restore_to_database, restore_to_file

    try:
        if args.to_database:
            try:
                job = config.job(snapshot.job)
            except KeyError:
                raise UsageError(f"job {snapshot.job} is not in the configuration: its client settings "
                                 "are needed to load the dump") from None
            size = restore_to_database(repo, snapshot, job, args.to_database, args.options_file, args.force)
            _err(f"loaded {_size(size)} dump of {snapshot.job} ({snapshot.time}) into database {args.to_database}")
            return EXIT_OK
        if not args.target:
            raise UsageError("give --target FILE (or --to-database NAME for a mysql snapshot)")
        size = restore_to_file(repo, snapshot, os.path.abspath(args.target), args.force)
    except RestoreRefused as exc:
        _err(f"error: {exc}")
        return EXIT_FAILED
    _err(f"restored the {_size(size)} dump of {snapshot.job} ({snapshot.time}) to {args.target}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from agent.store import Repository
    from agent.store.verify import verify_repository

    config = _load(args)
    if not Repository(config.repository).exists():
        _err(f"{config.repository}: no repository yet, nothing to verify")
        if args.json:
            _print_json({"ok": True, "snapshots": 0, "packs": 0, "blobs": 0, "damaged": [], "problems": []})
        return EXIT_OK
    repo = _open_repo(config)
    with repo.lock(exclusive=False, purpose="verify"):
        result = verify_repository(repo, read_data=args.read_data)
    if args.json:
        _print_json({"ok": result.ok, "snapshots": result.snapshots, "packs": result.packs,
                     "blobs": result.blobs, "problems": result.problems,
                     "damaged": [{"object": key, "reason": reason, "affects": result.affected.get(key, [])}
                                 for key, reason in sorted(result.damaged.items())]})
    else:
        for key, reason in sorted(result.damaged.items()):
            print(f"damaged: {key}: {reason}")
            for where in result.affected.get(key, []):
                print(f"  affects {where}")
        for problem in result.problems:
            print(f"damaged: {problem}")
        mode = "read and re-hashed" if args.read_data else "checked"
        verdict = "ok" if result.ok else "DAMAGED"
        print(f"{verdict}: {result.snapshots} snapshots, {result.blobs} blobs in {result.packs} packs {mode}")
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_prune(args: argparse.Namespace) -> int:
    from agent.store.prune import prune_repository

    config = _load(args)
    repo = _open_repo(config)
    policies = {job.name: job.retention for job in config.jobs}
    with repo.lock(exclusive=True, purpose="prune"):
        result = prune_repository(repo, policies, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    if args.json:
        _print_json({"dry_run": args.dry_run,
                     "removed": [snap.id for snap in result.removed], "kept": [snap.id for snap in result.kept],
                     "unknown_jobs": result.unknown_jobs, "packs_deleted": result.packs_deleted,
                     "packs_rewritten": result.packs_rewritten, "bytes_freed": result.bytes_freed})
        return EXIT_OK
    for snap in result.removed:
        print(f"{verb} {snap.id[:12]}  {snap.time[:19].replace('T', ' ')}  {snap.job}")
    for job in result.unknown_jobs:
        print(f"kept every snapshot of {job}: no such job in the configuration")
    print(f"{len(result.kept)} snapshots kept, {len(result.removed)} {verb}"
          + ("" if args.dry_run else f"; {result.packs_deleted} packs deleted, {result.packs_rewritten} "
                                     f"rewritten, {_size(result.bytes_freed)} freed"))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from agent.daemon import Daemon, install_signal_handlers
    from agent.logs import setup_logging

    setup_logging(args.verbose)
    daemon = Daemon(args.config)
    install_signal_handlers(daemon)
    return daemon.run_forever()


def _iso(epoch: Optional[float]) -> Optional[str]:
    if epoch is None:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def cmd_status(args: argparse.Namespace) -> int:
    import time

    from agent.daemon import running_daemon
    from agent.schedule import next_due
    from agent.state import StateDir

    config = _load(args)
    state = StateDir(config.state_dir)
    pid, modes, started_at = running_daemon(config.state_dir)
    now = time.time()
    pauses = state.pauses(now)
    rows = []
    for job in config.jobs:
        job_state = state.job(job.name)
        last = job_state.last_run or {}
        due = next_due(job, config.host, job_state, started_at if pid else now)
        paused_until = pauses.get(job.name, pauses.get("*"))
        watch = modes.get(job.name, "off") if pid else "off"
        rows.append({"name": job.name, "type": job.type, "last_run": last.get("finished_at"),
                     "last_ok": job_state.last_ok, "last_status": last.get("status"),
                     "last_trigger": last.get("trigger"), "last_changed": last.get("changed"),
                     "next_due": _iso(due.at), "next_trigger": due.trigger, "watch": watch,
                     "paused_until": _iso(paused_until) if job.on_change and paused_until else None,
                     "failures": job_state.failures})
    if args.json:
        _print_json({"agent": {"running": pid is not None, "pid": pid, "host": config.host}, "jobs": rows})
        return EXIT_OK
    print(f"agent: {'running, pid ' + str(pid) if pid else 'not running'}; host {config.host}")
    width = max((len(row["name"]) for row in rows), default=4)
    for row in rows:
        last = "never" if not row["last_run"] else (
            f"{row['last_run'][:19].replace('T', ' ')} {row['last_status']} ({row['last_trigger']}"
            f"{', unchanged' if row['last_changed'] is False else ''})")
        paused = f", paused until {row['paused_until'][11:16]}" if row["paused_until"] else ""
        print(f"  {row['name']:<{width}}  {row['type']:<7} last {last}; next {row['next_due'][:16].replace('T', ' ')}"
              f" ({row['next_trigger']}); watch {row['watch']}{paused}")
    return EXIT_OK


def _nudge_daemon(config) -> None:
    import signal

    from agent.daemon import running_daemon

    pid, _, _ = running_daemon(config.state_dir)
    if pid:
        try:
            os.kill(pid, signal.SIGUSR1)
        except OSError:
            pass


def cmd_pause(args: argparse.Namespace) -> int:
    import time

    from agent.config import parse_duration
    from agent.state import StateDir

    config = _load(args)
    if args.job and args.job not in {job.name for job in config.jobs}:
        raise UsageError(f"unknown job: {args.job}")
    try:
        seconds = parse_duration(args.duration)
    except ValueError as exc:
        raise UsageError(f"--for: {exc}") from None
    until = time.time() + seconds
    StateDir(config.state_dir).set_pause(args.job, until)
    _nudge_daemon(config)
    print(f"change-triggered backups of {args.job or 'every job'} paused until {_iso(until)}; "
          "`backup-agent resume` takes one backup")
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    from agent.state import StateDir

    config = _load(args)
    if args.job and args.job not in {job.name for job in config.jobs}:
        raise UsageError(f"unknown job: {args.job}")
    StateDir(config.state_dir).set_pause(args.job, None)
    _nudge_daemon(config)
    print(f"change-triggered backups of {args.job or 'every job'} resumed")
    return EXIT_OK


def cmd_reports(args: argparse.Namespace) -> int:
    import time

    from agent.runner import spool_for

    config = _load(args)
    spool = spool_for(config)
    flushed = None
    if args.flush:
        if config.collector is None:
            raise UsageError(f"{config.path}: no [collector] is configured; reports stay local")
        from agent.report.sender import Sender

        sender = Sender(spool, config.collector, timeout=10.0, max_backoff=min(config.collector.max_backoff, 5.0))
        try:
            flushed = sender.drain(deadline=time.monotonic() + args.timeout)
        finally:
            sender.close()
    pending = [_spooled(spool, entry, None) for entry in spool.pending()]
    dead = [_spooled(spool, entry, reason) for entry, reason in spool.dead()]
    if args.json:
        data = {"collector": config.collector.url if config.collector else None, "pending": pending,
                "dead": dead, "dropped": spool.dropped()}
        if flushed is not None:
            data["flush"] = {"delivered": flushed.delivered, "dead": flushed.dead, "blocked": flushed.blocked}
        _print_json(data)
    else:
        where = f"collector {config.collector.url}" if config.collector else "no collector configured: kept locally"
        if flushed is not None:
            print(f"delivered {flushed.delivered}, dead-lettered {flushed.dead}"
                  + (f"; refused: {flushed.blocked}" if flushed.blocked else ""))
        print(f"{len(pending)} pending ({where}), {len(dead)} dead-lettered, {spool.dropped()} dropped by the "
              "spool's bounds")
        for row in pending:
            print(f"  pending #{row['seq']}  {row['finished_at'][:19].replace('T', ' ')}  {row['job']}  "
                  f"{row['status']}")
        for row in dead:
            print(f"  dead    #{row['seq']}  {row['finished_at'][:19].replace('T', ' ')}  {row['job']}  "
                  f"{row['status']}: {row['reason']}")
    if flushed is not None and (pending or flushed.blocked):
        return EXIT_FAILED
    return EXIT_OK


def _spooled(spool, entry, reason: Optional[str]) -> dict:
    raw = spool.read(entry, dead=reason is not None)
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        data = {}
    row = {"seq": entry.seq, "id": data.get("id"), "job": data.get("job"), "status": entry.status,
           "finished_at": data.get("finished_at") or "", "bytes": entry.size}
    if reason is not None:
        row["reason"] = reason
    return row


def cmd_collector_serve(args: argparse.Namespace) -> int:
    from agent.collector.serve import ServeOptions, parse_listen, serve
    from agent.collector.storage import StorageError
    from agent.config import parse_duration

    try:
        parse_listen(args.listen)
        grace = parse_duration(args.grace)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    db = args.db or f"sqlite:///{os.path.abspath(os.path.join(args.state_dir, 'collector.db'))}"
    try:
        return serve(ServeOptions(listen=args.listen, db=db, tokens=os.path.abspath(args.tokens), grace=grace,
                                  read_auth=args.require_read_token, tls_cert=args.tls_cert, tls_key=args.tls_key,
                                  access_log=args.access_log))
    except (StorageError, OSError) as exc:
        _err(f"backup-agent collector: {exc}")
        return EXIT_FAILED


def cmd_collector_token(args: argparse.Namespace) -> int:
    from agent.collector.schema import HOST
    from agent.collector.tokens import TokenFileError, create_token

    if not HOST.fullmatch(args.host):
        raise UsageError(f"{args.host!r} is not a host name")
    try:
        token = create_token(args.tokens, args.host, reader=args.reader)
    except (TokenFileError, OSError) as exc:
        raise UsageError(str(exc)) from None
    what = "reader" if args.reader else "host"
    _err(f"token for {what} {args.host} stored (as a hash) in {args.tokens}; any earlier token of {args.host} "
         "no longer works. It is shown once:")
    print(token, flush=True)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    return run_demo(args.dir)


# --- parser -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backup-agent",
        description="Change-triggered, deduplicated, verifiable backups for Enstratius nodes.")
    parser.add_argument("--version", action="version", version=f"backup-agent {__version__}")
    parser.add_argument("--config", metavar="FILE",
                        help="agent.toml (default: $BACKUP_AGENT_CONFIG, else /etc/backup-agent/agent.toml)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name: str, func, help_text: str, listing: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        if listing:
            p.add_argument("--json", action="store_true", help="print JSON on stdout, messages on stderr")
        return p

    command("check-config", cmd_check_config, "validate the configuration and list the jobs")
    p = command("backup", cmd_backup, "back up jobs now")
    p.add_argument("jobs", nargs="*", metavar="JOB")
    p.add_argument("--all", action="store_true", help="every configured job")
    p = command("snapshots", cmd_snapshots, "list snapshots, oldest first")
    p.add_argument("job", nargs="?", metavar="JOB")
    p = command("restore", cmd_restore, "restore a snapshot, or some paths of it", listing=False)
    p.add_argument("snapshot", metavar="SNAPSHOT", help="an id, a unique id prefix, or JOB:latest")
    p.add_argument("--target", metavar="DIR", help="restore the job's path as DIR itself (a dump: to FILE)")
    p.add_argument("--to-database", metavar="NAME", help="load a mysql dump into database NAME")
    p.add_argument("--options-file", metavar="FILE", help="client options file for --to-database "
                                                           "(default: the job's)")
    p.add_argument("--force", action="store_true", help="replace an existing file / load into a non-empty database")
    p.add_argument("paths", nargs="*", metavar="PATH", help="paths relative to the job's path")
    p = command("verify", cmd_verify, "check that every snapshot is complete")
    p.add_argument("--read-data", action="store_true", help="read and re-hash every stored object")
    p = command("prune", cmd_prune, "forget snapshots beyond retention and delete unneeded data")
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    p = command("run", cmd_run, "run the agent: watch trees, run jobs on their schedule", listing=False)
    p.add_argument("--verbose", action="store_true", help="debug logging")
    command("status", cmd_status, "per job: last run, last success, next due, watcher mode")
    p = command("pause", cmd_pause, "hold change-triggered backups (during a deployment)", listing=False)
    p.add_argument("job", nargs="?", metavar="JOB", help="one job (default: every job)")
    p.add_argument("--for", dest="duration", default="1h", metavar="DURATION",
                   help="expire by itself after this long (default 1h)")
    p = command("resume", cmd_resume, "lift a pause and take one backup", listing=False)
    p.add_argument("job", nargs="?", metavar="JOB")
    p = command("reports", cmd_reports, "run reports waiting for the collector, and rejected ones")
    p.add_argument("--flush", action="store_true", help="deliver pending reports now (exit 1 if some remain)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long --flush may try (default 60)")
    p = command("collector", lambda _: EXIT_USAGE, "the central collector: serve it, make tokens", listing=False)
    csub = p.add_subparsers(dest="collector_command", metavar="COMMAND")
    csub.required = True
    p = csub.add_parser("serve", help="receive reports and show the fleet (HTTP)",
                        description="receive reports and show the fleet (HTTP)")
    p.set_defaults(func=cmd_collector_serve)
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="e.g. 0.0.0.0:8443 (port 0: any free)")
    p.add_argument("--tokens", required=True, metavar="FILE", help="the token file (`collector token`)")
    p.add_argument("--db", metavar="URL", help="sqlite:///PATH (default: STATE_DIR/collector.db) or "
                                               "postgresql://USER@HOST/DB (password in ~/.pgpass or PGPASSWORD)")
    p.add_argument("--state-dir", default="/var/lib/backup-agent-collector", metavar="DIR",
                   help="where the default SQLite database lives (default /var/lib/backup-agent-collector)")
    p.add_argument("--grace", default="1h", metavar="DURATION", help="beyond a job's policy before it is "
                                                                     "overdue (default 1h)")
    p.add_argument("--require-read-token", action="store_true",
                   help="pages, status, reports and metrics require a token too (Bearer, or Basic password)")
    p.add_argument("--tls-cert", metavar="FILE")
    p.add_argument("--tls-key", metavar="FILE")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p = csub.add_parser("token", help="create or rotate a host's token; prints it once, last line",
                        description="create or rotate a host's token; prints it once, as the last line")
    p.set_defaults(func=cmd_collector_token)
    p.add_argument("host", metavar="HOST")
    p.add_argument("--tokens", required=True, metavar="FILE")
    p.add_argument("--reader", action="store_true", help="a read-only token (for --require-read-token)")
    p = command("demo", cmd_demo, "back up a sandbox /services tree and restore it", listing=False)
    p.add_argument("--dir", metavar="DIR", help="where to build the sandbox (default: a new temp dir)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    # argparse cannot give positionals that follow an option (restore X --target D PATH...) to an
    # earlier nargs="*" positional, so restore collects them from the leftovers.
    args, extra = parser.parse_known_args(argv)
    if extra and (args.command != "restore" or any(item.startswith("-") for item in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.paths = [*args.paths, *extra]
    from agent.config import ConfigError

    try:
        return int(args.func(args))
    except ConfigError as exc:
        for problem in exc.problems:
            _err(problem)
        return EXIT_USAGE
    except UsageError as exc:
        _err(f"backup-agent: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
