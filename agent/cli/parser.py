"""The command line: every command, its options and the function that runs it."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

from agent import __version__
from agent.cli.commands import (
    backup,
    collector,
    config,
    control,
    demo,
    drill,
    inspect,
    key,
    reports,
    repository,
    restore,
    snapshots,
)
from agent.cli.common import EXIT_USAGE, PREFIX

SNAPSHOT_HELP = "an id, a unique id prefix, JOB:latest, or JOB:latest~N (the N-th before the latest)"
IDENTITY_HELP = "an age identity file (overrides [encryption] identity_file)"
CONFIG_HELP = "agent.toml (default: $BACKUP_AGENT_CONFIG, else /etc/backup-agent/agent.toml)"

# declares one command: (name, the function that runs it, help text, listing=True) -> its parser
_Command = Callable[..., argparse.ArgumentParser]


class _Parser(argparse.ArgumentParser):
    """argparse with the one error prefix of every message (`backup-agent: error: ...`, not argparse's
    `backup-agent forget: error: ...`); its subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{PREFIX}error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Every command in the order `--help` lists them; each group of commands declared by one function."""
    parser = _Parser(
        prog="backup-agent",
        description="Change-triggered, deduplicated, verifiable backups for Enstratius nodes.")
    parser.add_argument("--version", action="version", version=f"backup-agent {__version__}")
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name: str, func: Callable[[argparse.Namespace], int], help_text: str,
                listing: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        # also after the command; SUPPRESS keeps a --config given before it when none follows
        p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=CONFIG_HELP)
        if listing:
            p.add_argument("--json", action="store_true", help="print JSON on stdout, messages on stderr")
        return p

    command("check-config", config.run, "validate the configuration and list the jobs")
    _snapshot_commands(command)
    _restore_commands(command)
    _repository_commands(command)
    _agent_commands(command)
    _key_commands(command("key", lambda _: EXIT_USAGE, "encryption keys: make an identity, recover a node key",
                          listing=False))
    _collector_commands(command("collector", lambda _: EXIT_USAGE, "the central collector: serve it, make tokens",
                                listing=False))
    p = command("demo", demo.run, "back up a sandbox /services tree and restore it", listing=False)
    p.add_argument("--dir", metavar="DIR", help="where to build the sandbox (default: a new temp dir)")
    p.add_argument("--serve", action="store_true", help="keep the collector and its dashboard running at the end, "
                                                        "until Ctrl-C")
    return parser


def _snapshot_commands(command: _Command) -> None:
    """backup, and the commands that list, compare, search and forget snapshots."""
    p = command("backup", backup.run, "back up jobs now")
    p.add_argument("jobs", nargs="*", metavar="JOB")
    p.add_argument("--all", action="store_true", help="every configured job")
    p = command("snapshots", snapshots.run, "list snapshots, oldest first")
    p.add_argument("job", nargs="?", metavar="JOB")
    p = command("ls", inspect.run_ls, "list a snapshot's entries (type, mode, owner, size, mtime, link target)")
    p.add_argument("snapshot", metavar="SNAPSHOT", help=SNAPSHOT_HELP)
    p.add_argument("path", nargs="?", metavar="PATH", help="only this path and what is beneath it")
    p = command("diff", inspect.run_diff, "what was added, removed and changed between two snapshots of a job")
    p.add_argument("snapshot_a", metavar="SNAPSHOT_A", help=SNAPSHOT_HELP)
    p.add_argument("snapshot_b", metavar="SNAPSHOT_B")
    p.add_argument("path", nargs="?", metavar="PATH", help="only this path and what is beneath it")
    p = command("find", inspect.run_find, "which snapshots hold a path matching a glob, with its size and mtime")
    p.add_argument("pattern", metavar="PATTERN", help="a glob; without '/' it matches the name at any depth")
    p.add_argument("--job", metavar="JOB", help="only this job's snapshots")
    p = command("forget", snapshots.run_forget, "remove single snapshots (their data goes with the next prune)",
                listing=False)
    p.add_argument("snapshots", nargs="+", metavar="SNAPSHOT", help=SNAPSHOT_HELP)


def _restore_commands(command: _Command) -> None:
    """restore, and the drill that proves a restore works."""
    p = command("restore", restore.run, "restore a snapshot, or some paths of it", listing=False)
    p.add_argument("snapshot", metavar="SNAPSHOT", nargs="?", help=SNAPSHOT_HELP)
    p.add_argument("--all", action="store_true",
                   help="the latest snapshot of every job of this host, each into DIR/JOB (a dump: to the file "
                        "DIR/JOB, replaced with --force or an --overwrite other than never)")
    p.add_argument("--target", metavar="DIR", help="restore the job's path as DIR itself (a dump: to FILE)")
    p.add_argument("--to-database", metavar="NAME", help="load a mysql dump into database NAME")
    p.add_argument("--options-file", metavar="FILE", help="client options file for --to-database "
                                                           "(default: the job's)")
    p.add_argument("--force", action="store_true",
                   help="dumps only: replace an existing --target FILE, or load into a non-empty --to-database")
    p.add_argument("--overwrite", choices=("never", "if-changed", "always"), default="never",
                   help="entries in DIR that the snapshot would write differently: never (the default: restore "
                        "nothing and list them), if-changed (replace those), always (replace every entry)")
    p.add_argument("--delete", action="store_true",
                   help="remove what lies under the restored paths in DIR but not in the snapshot")
    p.add_argument("--dry-run", action="store_true", help="list what would be created, replaced and deleted")
    p.add_argument("--json", action="store_true", help="what was done, as JSON on stdout")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="paths relative to the job's path, or absolute under it (/services/api/conf)")
    p.add_argument("--identity", metavar="FILE", help=IDENTITY_HELP)
    p = command("drill", drill.run, "prove that each job's latest snapshot restores (a restore drill)")
    p.add_argument("jobs", nargs="*", metavar="JOB")
    p.add_argument("--all", action="store_true", help="every configured job (with --host: every job of that host)")
    p.add_argument("--identity", metavar="FILE", help="the identity that opens an encrypted repository")
    p.add_argument("--repository", metavar="URL", help="drill another host's jobs in this repository (with --host)")
    p.add_argument("--host", metavar="NODE", help="whose snapshots to drill; the reports carry this name")


def _repository_commands(command: _Command) -> None:
    """verify and prune: the whole repository."""
    p = command("verify", repository.run_verify, "check that every snapshot is complete")
    p.add_argument("--read-data", action="store_true", help="read and re-hash every stored object")
    p.add_argument("--identity", metavar="FILE", help=IDENTITY_HELP + "; also checks the encryption of contents")
    p = command("prune", repository.run_prune, "forget snapshots beyond retention and delete unneeded data")
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    p.add_argument("--identity", metavar="FILE", help=IDENTITY_HELP + "; stands in for a missing node key")


def _agent_commands(command: _Command) -> None:
    """The daemon and what talks to it or to its state: run, status, pause, resume, reports."""
    p = command("run", control.run_daemon, "run the agent: watch trees, run jobs on their schedule", listing=False)
    p.add_argument("--verbose", action="store_true", help="debug logging")
    p = command("status", control.run_status, "per job: last run, last success, next due, watcher mode")
    p.add_argument("job", nargs="?", metavar="JOB", help="one job (default: every job)")
    p = command("pause", control.run_pause, "hold change-triggered backups (during a deployment)", listing=False)
    p.add_argument("job", nargs="?", metavar="JOB", help="one job (default: every job)")
    p.add_argument("--for", dest="duration", default="1h", metavar="DURATION",
                   help="expire by itself after this long (default 1h)")
    p = command("resume", control.run_resume, "lift a pause and take one backup", listing=False)
    p.add_argument("job", nargs="?", metavar="JOB")
    p = command("reports", reports.run, "run reports waiting for the collector, and rejected ones")
    p.add_argument("--flush", action="store_true", help="deliver pending reports now (exit 1 if some remain)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long --flush may try (default 60)")


def _key_commands(parent: argparse.ArgumentParser) -> None:
    ksub = parent.add_subparsers(dest="key_command", metavar="COMMAND")
    ksub.required = True
    text = "write a new age identity (mode 0600); its recipient is the last line of stdout"
    p = ksub.add_parser("generate", help=text, description=text)
    p.set_defaults(func=key.run_generate)
    p.add_argument("--identity", required=True, metavar="FILE", help="where to write it (never overwritten)")
    text = "recover the node key of the configured encrypted repository with an identity, into a new file"
    p = ksub.add_parser("recover-node", help=text, description=text)
    p.set_defaults(func=key.run_recover_node)
    p.add_argument("--identity", required=True, metavar="FILE", help="an identity the repository was written for")
    p.add_argument("--out", required=True, metavar="FILE", help="the node key file to write (mode 0600; "
                                                                 "never overwritten)")
    p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=CONFIG_HELP)


def _collector_commands(parent: argparse.ArgumentParser) -> None:
    csub = parent.add_subparsers(dest="collector_command", metavar="COMMAND")
    csub.required = True
    p = csub.add_parser("serve", help="receive reports and show the fleet (HTTP)",
                        description="receive reports and show the fleet (HTTP)")
    p.set_defaults(func=collector.run_serve)
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
    p.set_defaults(func=collector.run_token)
    p.add_argument("host", metavar="HOST")
    p.add_argument("--tokens", required=True, metavar="FILE")
    p.add_argument("--reader", action="store_true", help="a read-only token (for --require-read-token)")
    p.add_argument("--drill", action="store_true", help="a token that posts drill reports of any host, and "
                                                         "nothing else (a central `drill --host`)")
