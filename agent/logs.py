"""Logging to stderr in a shape journald shows well: under systemd (JOURNAL_STREAM set) each line
starts with a syslog priority prefix and carries no timestamp of its own (journald adds one).

Every line is bounded (`LINE_MAX` characters): a message that embeds a library's whole state (watchdog's
duplicate-watch warning printed its entire watch table, tens of kilobytes, on one line) must not flood
the journal. Python warnings and uncaught exceptions in threads go through the same handler, so nothing
the agent lets through escapes the bound.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from agent.report.schema import escape

LINE_MAX = 400  # characters per log line, the prefix included

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def bound_lines(text: str, limit: int = LINE_MAX) -> str:
    """`text` with each line cut to `limit` characters, saying how much was cut."""
    lines = []
    for line in text.split("\n"):
        if len(line) > limit:
            keep = max(limit - len(f"... ({len(line)} more characters)"), 0)
            line = (line[:keep] + f"... ({len(line) - keep} more characters)")[:limit]
        lines.append(line)
    return "\n".join(lines)


class BoundedFormatter(logging.Formatter):
    """A formatter whose every output line is at most `LINE_MAX` characters (prefix included)."""

    def __init__(self, fmt: str, prefix_priority: bool = False) -> None:
        super().__init__(fmt)
        self.prefix_priority = prefix_priority

    def format(self, record: logging.LogRecord) -> str:
        text = escape(super().format(record))  # a name that is not UTF-8 reads `\xff`, never a surrogate
        if self.prefix_priority:
            text = f"<{_PRIORITY.get(record.levelno, 6)}>{text}"
        return bound_lines(text)


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(BoundedFormatter("%(message)s", prefix_priority=True))
    else:
        handler.setFormatter(BoundedFormatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # watchdog's own INFO chatter is not for operators; its warnings still show
    logging.getLogger("watchdog").setLevel(logging.WARNING)
    logging.captureWarnings(True)  # warnings.warn from any library: through the bounded handler
    threading.excepthook = _log_thread_exception


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("backup-agent").error("thread %s crashed", name,
                                            exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
