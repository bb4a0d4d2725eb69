"""The `backup-agent` command: parses arguments, dispatches to one module per command
(agent/cli/commands/), maps outcomes to exit codes (0 ok, 1 a run or check failed, 2 usage or
configuration error). Human text is built in agent/cli/render.py, apart from what the commands do.

With --json, stdout holds only JSON; every message goes to stderr. Heavy modules are imported inside the
commands that need them, so a no-change backup is not dominated by start-up.
"""

from __future__ import annotations

from typing import List, Optional

from agent.cli.common import EXIT_FAILED, EXIT_USAGE, CommandFailed, UsageError, err, error
from agent.text import plural

_SERVING = ("daemon", "collector")  # long-running: the collector's default pace suits them


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command `argv` (default: the process's arguments); returns its exit status."""
    status = _command(argv)
    if argv is None:
        # The process ends next: what is alive now is left out of the collections of the interpreter's
        # teardown, which otherwise walk every object of the loaded modules (botocore's service models
        # alone are hundreds of thousands): 50 ms of a 0.75 s no-change backup on object storage.
        import gc

        gc.freeze()
    return status


def _command(argv: Optional[List[str]]) -> int:
    from agent.cli.common import escape_names_in_output
    from agent.cli.parser import build_parser

    escape_names_in_output()
    parser = build_parser()
    # argparse cannot give positionals that follow an option (restore X --target D PATH...) to an
    # earlier nargs="*" positional, so restore collects them from the leftovers.
    args, extra = parser.parse_known_args(argv)
    if extra and (args.command != "restore" or any(item.startswith("-") for item in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.paths = [*args.paths, *extra]
    if args.command not in _SERVING:
        # A command that runs once allocates a lot and frees most of it by reference counting: the cyclic
        # collector's default pace (every 700 allocations) spent 35 ms of a 0.75 s no-change backup walking
        # the loaded modules' objects again and again. mypy's main does the same.
        import gc

        gc.set_threshold(100_000, 20, 20)
    from agent.backend import BackendError
    from agent.config import ConfigError
    from agent.store import RepositoryError

    try:
        return int(args.func(args))
    except ConfigError as exc:
        # README contract: each problem as `FILE: jobs.NAME.KEY: what is wrong`, after one prefixed line
        error(f"the configuration has {plural(len(exc.problems), 'problem')}:")
        for problem in exc.problems:
            err(problem)
        return EXIT_USAGE
    except UsageError as exc:
        error(str(exc))
        return EXIT_USAGE
    except (CommandFailed, RepositoryError, BackendError) as exc:  # a damaged repository: named, never a traceback
        error(str(exc))
        return EXIT_FAILED
    except BrokenPipeError:  # `ls ... | head`: the reader had enough; say nothing, as ls(1) does
        import os
        import sys

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return EXIT_FAILED
    except OSError as exc:  # what the system refused (a repository not ours to lock, a full disk): named
        error(f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        error("interrupted")
        return 130
