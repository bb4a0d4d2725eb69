"""`collector serve` and `collector token`: the central collector's commands (no agent configuration)."""

from __future__ import annotations

import argparse
import os

from agent.cli.common import EXIT_FAILED, EXIT_OK, UsageError, err, error


def run_serve(args: argparse.Namespace) -> int:
    from agent.collector.serve import ServeOptions, parse_listen, serve
    from agent.collector.storage import StorageError
    from agent.config import parse_duration

    try:
        parse_listen(args.listen)
        grace = parse_duration(args.grace)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    db = args.db or f"sqlite://{os.path.abspath(os.path.join(args.state_dir, 'collector.db'))}"
    try:
        return serve(ServeOptions(listen=args.listen, db=db, tokens=os.path.abspath(args.tokens), grace=grace,
                                  read_auth=args.require_read_token, tls_cert=args.tls_cert, tls_key=args.tls_key,
                                  access_log=args.access_log))
    except (StorageError, OSError) as exc:
        error(f"collector: {exc}")
        return EXIT_FAILED


def run_token(args: argparse.Namespace) -> int:
    from agent.collector.schema import HOST
    from agent.collector.tokens import TokenFileError, create_token

    if not HOST.fullmatch(args.host):
        raise UsageError(f"{args.host!r} is not a host name")
    try:
        if args.reader and args.drill:
            raise UsageError("a token is --reader or --drill, not both")
        token = create_token(args.tokens, args.host, reader=args.reader, drill=args.drill)
    except (TokenFileError, OSError) as exc:
        raise UsageError(str(exc)) from None
    what = "reader" if args.reader else "drill host" if args.drill else "host"
    err(f"token for {what} {args.host} stored (as a hash) in {args.tokens}; any earlier token of {args.host} "
        "no longer works. It is shown once:")
    print(token, flush=True)
    return EXIT_OK
