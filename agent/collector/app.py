"""The collector's ASGI app (Starlette): the report intake, the fleet view as HTML, JSON and Prometheus.

Intake order for `POST /api/v1/reports`, each step before the next:
  413  the body is over MAX_BODY (told by Content-Length, or found while streaming: never read whole)
  401  no or unknown bearer token
  400  not JSON
  403  the report's `host` is not the token's host (whatever else it holds)
  422  the schema (agent.collector.schema) says what is wrong
  200  stored, or already stored (idempotent on the report id)

Writes are grouped: each post hands its report to one writer thread, which commits whatever has queued
up in one transaction, then answers all of them. Reads run in the thread pool.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import AsyncIterator, Callable, List, Optional, Tuple

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from agent.collector import charts, pages
from agent.collector.freshness import DEFAULT_GRACE, fleet, iso
from agent.collector.schema import Report, validate
from agent.collector.storage import Storage, StorageUnavailable
from agent.collector.tokens import Principal, TokenStore

log = logging.getLogger("backup-agent.collector")

MAX_BODY = 256 * 1024
MAX_BATCH = 500
COMPLAINT_INTERVAL = 60.0
RETRY_AFTER = 5  # seconds a client is asked to wait while the database is unavailable


class _TooLarge(Exception):
    pass


class BatchWriter:
    """One thread that owns the writes: takes what queued up, commits it at once, resolves each post."""

    def __init__(self, storage: Storage, clock: Callable[[], float]) -> None:
        self.storage = storage
        self.clock = clock
        self.last_complaint = -COMPLAINT_INTERVAL
        self.queue: queue.Queue[Optional[Tuple[Report, Future]]] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="collector-writer", daemon=True)
        self.thread.start()

    def submit(self, report: Report) -> Future:
        future: Future = Future()
        self.queue.put((report, future))
        return future

    def step(self, first: Tuple[Report, Future]) -> None:
        batch = [first]
        while len(batch) < MAX_BATCH:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self.queue.put(None)
                break
            batch.append(item)
        try:
            results = self.storage.insert_many([report for report, _ in batch], self.clock())
        except Exception as exc:  # the whole batch failed: every poster gets a 503 and its agent retries
            now = time.monotonic()
            if now - self.last_complaint >= COMPLAINT_INTERVAL:  # one line a minute while the database is down
                log.error("storing %d report(s) failed: %s", len(batch), exc)
                self.last_complaint = now
            for _, future in batch:
                future.set_exception(exc)
            return
        for (_, future), new in zip(batch, results):
            future.set_result(new)

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            self.step(item)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(10)


@dataclass
class Settings:
    grace: float = DEFAULT_GRACE
    read_auth: bool = False  # pages, status, reports and metrics require a token too


def _bearer(request: Request) -> Optional[str]:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value.strip():  # browsers: any user name, the token as password
        try:
            return base64.b64decode(value.strip()).decode().partition(":")[2] or None
        except (ValueError, UnicodeDecodeError):
            return None
    return None


def _problem(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


async def _unavailable(request: Request, exc: Exception) -> Response:
    """Any route whose storage call found the database unavailable: 503 and when to retry, no traceback
    (the writer logs why storing fails, once a minute at most)."""
    return _problem(503, "storage unavailable, retry later", **{"Retry-After": str(RETRY_AFTER)})


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise _TooLarge
    chunks: List[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _timed(build: Callable[[], bytes], media_type: str) -> Callable[[], Response]:
    """Run `build` and tell how long it took (Server-Timing: what the benchmark reports as render time)."""

    def run() -> Response:
        started = time.perf_counter()
        body = build()
        elapsed = (time.perf_counter() - started) * 1000
        return Response(body, media_type=media_type, headers={"Server-Timing": f"render;dur={elapsed:.1f}"})

    return run


class _Endpoints:
    """The collector's request handlers over one storage and token store. `writer` exists between the
    app's startup and shutdown (the lifespan), so a report posted outside it is a bug, not a 503."""

    def __init__(self, storage: Storage, tokens: TokenStore, settings: Settings,
                 clock: Callable[[], float]) -> None:
        self.storage = storage
        self.tokens = tokens
        self.settings = settings
        self.clock = clock
        self.writer: Optional[BatchWriter] = None

    def denied(self, request: Request) -> Optional[Response]:
        """None when `request` may read (no read auth configured, or any known token), else the 401."""
        if not self.settings.read_auth:
            return None
        token = _bearer(request)
        if token and self.tokens.lookup(token) is not None:
            return None
        return _problem(401, "this collector requires a token to read", **{"WWW-Authenticate": 'Basic realm="backup"'})

    async def post_report(self, request: Request) -> Response:
        try:
            raw = await _read_body(request)
        except _TooLarge:
            return _problem(413, f"a report is at most {MAX_BODY} bytes", Connection="close")
        token = _bearer(request)
        principal: Optional[Principal] = self.tokens.lookup(token) if token else None
        if principal is None or principal.role not in ("host", "drill"):
            return _problem(401, "missing or unknown token", **{"WWW-Authenticate": "Bearer"})
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return _problem(400, "the body is not JSON")
        except RecursionError:  # the decoder's own depth guard: not a report, and not our fault
            return _problem(400, "the body is not a report: JSON nested too deeply")
        if principal.role == "drill":  # a central drill host: drill reports of any host, nothing else
            if not isinstance(body, dict) or body.get("trigger") != "drill":
                return _problem(403, f"this token ({principal.name}) may post drill reports only")
        elif not isinstance(body, dict) or body.get("host") != principal.name:
            return _problem(403, f"this token may post reports of host {principal.name} only")
        report, problems = validate(body)
        if report is None:
            return _problem(422, "; ".join(problems[:10]))
        if principal.role == "drill":  # its sequence numbers are the drill host's, not the reported host's
            report = replace(report, seq=0)
        assert self.writer is not None
        try:
            new = await asyncio.wrap_future(self.writer.submit(report))
        except Exception as exc:
            return await _unavailable(request, exc)
        return JSONResponse({"id": report.id, "stored": bool(new), "duplicate": not new})

    def fleet(self) -> tuple:
        """(now, jobs, views) of the whole fleet as of now (agent.collector.freshness.fleet)."""
        now = self.clock()
        jobs, views = fleet(*self.storage.fleet_rows(now), self.tokens.hosts(), now, self.settings.grace,
                            self.storage.drill_rows(now), self.storage.prune_rows())
        return now, jobs, views

    async def status(self, request: Request) -> Response:
        denied = self.denied(request)
        if denied:
            return denied

        def build() -> bytes:
            now, _, views = self.fleet()
            return json.dumps({
                "now": iso(now), "grace": self.settings.grace,
                "hosts": [{"host": view.host, "state": view.state, "last_seen": iso(view.last_seen),
                           "missing_reports": view.missing,
                           "last_prune": iso(view.prune.last_prune_ts) if view.prune else None,
                           "last_prune_status": view.prune.last_status if view.prune else None,
                           "repository_bytes": view.prune.repository_bytes if view.prune else None}
                          for view in views],
                "jobs": [cell.to_json(view.state) for view in views for cell in view.cells],
            }, separators=(",", ":")).encode()

        return await run_in_threadpool(_timed(build, "application/json"))

    async def list_reports(self, request: Request) -> Response:
        denied = self.denied(request)
        if denied:
            return denied
        try:
            limit = min(max(int(request.query_params.get("limit", "100")), 1), 1000)
        except ValueError:
            return _problem(400, "limit must be a number")
        rows = await run_in_threadpool(self.storage.reports, request.query_params.get("host"),
                                       request.query_params.get("job"), limit)
        return JSONResponse(rows)

    async def dashboard(self, request: Request) -> Response:
        denied = self.denied(request)
        if denied:
            return denied

        def build() -> bytes:
            now, jobs, views = self.fleet()
            return pages.dashboard(now, jobs, views, request.query_params.get("state")).encode()

        return await run_in_threadpool(_timed(build, "text/html; charset=utf-8"))

    async def history(self, request: Request) -> Response:
        denied = self.denied(request)
        if denied:
            return denied
        host, job = request.path_params["host"], request.path_params["job"]
        now = self.clock()

        def load() -> tuple:
            return (self.storage.reports(host, job, 500), self.storage.missing_seqs(host),
                    self.storage.runs(host, job, now - charts.WINDOW, charts.MAX_RUNS))

        rows, gaps, runs = await run_in_threadpool(load)
        if not rows:
            return HTMLResponse(pages.not_found(host, job), status_code=404)
        return HTMLResponse(pages.history(now, host, job, rows, gaps, runs))

    async def metrics(self, request: Request) -> Response:
        denied = self.denied(request)
        if denied:
            return denied
        from agent.collector.metrics import CONTENT_TYPE, render

        return await run_in_threadpool(_timed(
            lambda: render(*self.fleet(), self.storage.count_reports(), self.settings.grace), CONTENT_TYPE))

    async def healthz(self, request: Request) -> Response:
        """What a load balancer asks: ok only while a report could be stored (the writer thread runs
        and the database takes a write now)."""
        if self.writer is None or not self.writer.thread.is_alive():
            return PlainTextResponse("report writer not running\n", status_code=503)
        try:
            await run_in_threadpool(self.storage.ping)
        except StorageUnavailable as exc:
            return PlainTextResponse(f"storage unavailable: {exc}\n", status_code=503,
                                     headers={"Retry-After": str(RETRY_AFTER)})
        return PlainTextResponse("ok\n")

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.writer = BatchWriter(self.storage, self.clock)
        try:
            yield
        finally:
            self.writer.close()


def create_app(storage: Storage, tokens: TokenStore, settings: Optional[Settings] = None,
               clock: Callable[[], float] = time.time) -> Starlette:
    """The collector's ASGI app over `storage` and `tokens`; `clock` (epoch seconds) is what "now" is."""
    endpoints = _Endpoints(storage, tokens, settings or Settings(), clock)
    routes = [
        Route("/", endpoints.dashboard),
        Route("/hosts/{host}/jobs/{job}", endpoints.history),
        Route("/api/v1/reports", endpoints.post_report, methods=["POST"]),
        Route("/api/v1/reports", endpoints.list_reports, methods=["GET"]),
        Route("/api/v1/status", endpoints.status),
        Route("/metrics", endpoints.metrics),
        Route("/healthz", endpoints.healthz),
    ]
    return Starlette(routes=routes, lifespan=endpoints.lifespan,
                     exception_handlers={StorageUnavailable: _unavailable})
