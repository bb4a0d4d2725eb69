"""`backup-agent collector serve`: binds the socket itself (so `--listen 127.0.0.1:0` works and the
chosen port is printed before anything else) and runs the app on uvicorn."""

from __future__ import annotations

import gc
import socket
import sys
from dataclasses import dataclass
from typing import Optional, Tuple

from agent.text import plural


@dataclass(frozen=True)
class ServeOptions:
    listen: str
    db: str
    tokens: str
    grace: float = 3600.0
    read_auth: bool = False
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    access_log: bool = False


def parse_listen(text: str) -> Tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen: {text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve(options: ServeOptions) -> int:
    import uvicorn

    from agent.collector.app import Settings, create_app
    from agent.collector.storage import open_storage
    from agent.collector.tokens import TokenStore

    host, port = parse_listen(options.listen)
    storage = open_storage(options.db)
    tokens = TokenStore(options.tokens)
    app = create_app(storage, tokens, Settings(grace=options.grace, read_auth=options.read_auth))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    bound = sock.getsockname()[1]
    scheme = "https" if options.tls_cert else "http"
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"collector listening on {scheme}://{shown}:{bound} (storage {storage.describe()}, "
          f"{plural(len(tokens.hosts()), 'host token')})", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=options.access_log, lifespan="on",
                            ssl_certfile=options.tls_cert, ssl_keyfile=options.tls_key,
                            timeout_graceful_shutdown=5, server_header=False, proxy_headers=False)
    server = uvicorn.Server(config)
    # A fleet page allocates ~100k small objects that all die together: with the default gen0 threshold
    # (700) the collector would run dozens of collections per page, each walking the long-lived heap
    # (frozen here, after start-up) again.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        server.run(sockets=[sock])
    finally:
        storage.close()
        sock.close()
    sys.stdout.flush()
    return 0
