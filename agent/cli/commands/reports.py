"""`reports [--flush]`: the report spool (pending and dead-lettered reports), and delivering it now."""

from __future__ import annotations

import argparse
import json
from typing import Optional

import agent.cli.render as render
from agent.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError, error, load_config, print_json


def reports(config, flush: bool = False, timeout: float = 60.0, as_json: bool = False) -> int:
    """Exit status 1 when `flush` left reports undelivered or refused, 2 when the agent's own configuration
    (the token file) stopped it, else 0."""
    import time

    from agent.runner import spool_for

    spool = spool_for(config)
    flushed = None
    config_error = False
    if flush:
        if config.collector is None:
            raise UsageError(f"{config.path}: no [collector] is configured; reports stay local")
        from agent.report.sender import Sender

        sender = Sender(spool, config.collector, timeout=10.0, max_backoff=min(config.collector.max_backoff, 5.0))
        try:
            result = sender.drain(deadline=time.monotonic() + timeout)
        finally:
            sender.close()
        flushed = {"delivered": result.delivered, "dead": result.dead, "blocked": result.blocked}
        config_error = result.config_error
    pending = [_spooled(spool, entry, None) for entry in spool.pending()]
    dead = [_spooled(spool, entry, reason) for entry, reason in spool.dead()]
    if as_json:
        data = {"collector": config.collector.url if config.collector else None, "pending": pending,
                "dead": dead, "dropped": spool.dropped()}
        if flushed is not None:
            data["flush"] = flushed
        print_json(data)
    else:
        where = f"collector {config.collector.url}" if config.collector else "no collector configured: kept locally"
        render.show(render.spool(where, pending, dead, spool.dropped(), flushed))
    if config_error:
        error(f"{flushed['blocked']}; reports stay spooled")
        return EXIT_USAGE
    if flushed is not None and (pending or flushed["blocked"]):
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


def run(args: argparse.Namespace) -> int:
    return reports(load_config(args.config), args.flush, args.timeout, args.json)
