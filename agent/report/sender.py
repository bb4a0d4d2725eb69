"""Delivers spooled reports to the collector: httpx for the request, tenacity for the waiting.

What a response means is decided in one place (`classify`):
  2xx                         delivered: the report leaves the spool
  400, 413, 422               rejected for good: dead letter, reason logged (retrying cannot help)
  401, 403                    the token is wrong: keep everything, wait long, say so loudly
  408, 429, 5xx, no answer    transient: retry with exponential backoff and jitter, honouring Retry-After
  anything else (404, 405)    a misconfigured URL: treated like an auth problem (kept, long wait)

Every wait is `stop.wait`, so a stopping agent never sits in a backoff. The token is read strictly from
its file for each pass (rotation needs no restart; a malformed file is a configuration error, not a
transient one) and never appears in a log line or an exception message: transport errors are logged by
type, with their text only for kinds that cannot quote a request header (`describe_error`).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Callable, Optional

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential, wait_random

from agent import __version__
from agent.config import CollectorSettings
from agent.config.token import TokenFileError, read_token
from agent.report.spool import Entry, Spool

log = logging.getLogger("backup-agent")
# httpx logs every request at INFO ("HTTP Request: POST ... 200 OK"): one line per delivered report is
# noise in the daemon's journal. Its warnings still show; failed deliveries are logged here.
logging.getLogger("httpx").setLevel(logging.WARNING)

REPORTS_PATH = "/api/v1/reports"
RETRY_AFTER_CAP = 3600.0
PASS_SIZE = 100  # reports per pass before the order is looked at again (new reports jump the queue)


class Transient(Exception):
    def __init__(self, reason: str, retry_after: Optional[float] = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class Blocked(Exception):
    """The collector refuses this agent (bad token, wrong URL): nothing can be delivered for now."""


@dataclass(frozen=True)
class PassResult:
    delivered: int
    dead: int
    remaining: int
    blocked: Optional[str] = None  # why delivery is blocked (401/403/404, the token file), if it is
    config_error: bool = False  # blocked by the agent's own configuration (the token file), not the collector

    @property
    def done(self) -> bool:
        return self.remaining == 0 and self.blocked is None


def classify(response: httpx.Response) -> str:
    code = response.status_code
    if 200 <= code < 300:
        return "delivered"
    if code in (400, 413, 422):
        return "dead"
    if code in (408, 429) or code >= 500:
        return "transient"
    return "blocked"


def retry_after(response: httpx.Response) -> Optional[float]:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


# Transport errors whose text is about the connection (address, timeout, TLS), never about the request's
# headers. Any other (a LocalProtocolError from h11 quotes an illegal header value whole) is named only.
_SAFE_TEXT = (httpx.TimeoutException, httpx.ConnectError, httpx.ReadError, httpx.WriteError,
              httpx.CloseError, httpx.RemoteProtocolError, httpx.ProxyError, httpx.UnsupportedProtocol)


def describe_error(exc: BaseException, token: Optional[str] = None) -> str:
    """A transport error for a log line: its type, and its text only when that cannot hold a header (the
    token is masked in it all the same)."""
    name = type(exc).__name__
    text = str(exc).strip() if isinstance(exc, _SAFE_TEXT) else ""
    if token and text:
        text = text.replace(token, "***")
    return f"{name}: {text[:300]}" if text else name


def _short(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return f"HTTP {response.status_code}" + (f": {text[:200]}" if text else "")


class Sender:
    def __init__(self, spool: Spool, settings: CollectorSettings, stop: Optional[threading.Event] = None,
                 timeout: float = 10.0, max_backoff: Optional[float] = None, patient: bool = True) -> None:
        """patient=False: one attempt per report, no waiting (a one-shot `backup` must not linger)."""
        self.spool = spool
        self.patient = patient
        self.settings = settings
        self.stop = stop or threading.Event()
        self.max_backoff = settings.max_backoff if max_backoff is None else max_backoff
        self.url = settings.url.rstrip("/") + REPORTS_PATH
        verify: object = True
        if settings.ca_file:
            verify = ssl.create_default_context(cafile=settings.ca_file)
        self.client = httpx.Client(verify=verify, timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
                                   headers={"User-Agent": f"backup-agent/{__version__}",
                                            "Content-Type": "application/json"})

    def close(self) -> None:
        self.client.close()

    def _token(self) -> Optional[str]:
        if not self.settings.token_file:
            return None
        return read_token(self.settings.token_file)

    def _post(self, body: bytes, token: Optional[str]) -> str:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = self.client.post(self.url, content=body, headers=headers)
        except httpx.TransportError as exc:
            raise Transient(describe_error(exc, token)) from None
        verdict = classify(response)
        if verdict == "transient":
            raise Transient(_short(response), retry_after(response))
        if verdict == "blocked":
            raise Blocked(_short(response))
        if verdict == "dead":
            return "dead:" + _short(response)
        return verdict

    def _wait(self, state: RetryCallState) -> float:
        # 0.5 s doubling, plus up to 1 s of jitter, at most max_backoff (Google's retry strategy, as tenacity's
        # wait_exponential_jitter; spelled out because its `initial` is deprecated and `multiplier` is new)
        base = min((wait_exponential(multiplier=0.5, max=self.max_backoff) + wait_random(0, 1.0))(state),
                   self.max_backoff)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Transient) and exc.retry_after is not None:
            return min(max(base, exc.retry_after), RETRY_AFTER_CAP)
        return base

    def deliver(self, entry: Entry, token: Optional[str], deadline: Optional[float]) -> str:
        """Deliver one report, retrying transient failures until it goes through, `stop` is set or the
        deadline (monotonic) passes. Returns "delivered", "dead" or "gone"; raises Transient or Blocked."""
        body = self.spool.read(entry)
        if body is None:
            return "gone"

        def give_up(state: RetryCallState) -> bool:
            if self.stop.is_set() or not self.patient:
                return True
            if deadline is None:
                return False
            wait = state.upcoming_sleep or 0.0
            return time.monotonic() + wait >= deadline

        def before_sleep(state: RetryCallState) -> None:  # only when a wait follows
            exc = state.outcome.exception() if state.outcome else None
            log.warning("collector: report %d not delivered (%s); retrying in %.1f s", entry.seq, exc,
                        state.upcoming_sleep)

        retrying = Retrying(retry=retry_if_exception_type(Transient), wait=self._wait, stop=give_up,
                            sleep=self.stop.wait, before_sleep=before_sleep, reraise=True)
        verdict = retrying(self._post, body, token)
        if verdict == "delivered":
            self.spool.remove(entry)
            return verdict
        self.spool.dead_letter(entry, verdict[len("dead:"):])
        return "dead"

    def drain(self, deadline: Optional[float] = None) -> PassResult:
        """Deliver pending reports, newest of each job first, until the spool is empty, the deadline
        (time.monotonic) passes, `stop` is set, or the collector refuses us."""
        delivered = dead = 0
        blocked: Optional[str] = None
        config_error = False
        try:
            token = self._token()
            while not self.stop.is_set():
                batch = self.spool.delivery_order()[:PASS_SIZE]
                if not batch:
                    break
                for entry in batch:
                    if self.stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                        raise Transient("deadline")
                    verdict = self.deliver(entry, token, deadline)
                    delivered += verdict == "delivered"
                    dead += verdict == "dead"
        except Transient:
            pass
        except TokenFileError as exc:  # a configuration error: retrying cannot help until the file is fixed
            # the caller says it, in its own voice: the daemon's log, or the command's one error line
            blocked, config_error = f"configuration error: {exc}", True
        except Blocked as exc:
            blocked = str(exc)
            log.error("collector %s refuses this agent's reports (%s): they stay spooled; check "
                      "collector.url and collector.token_file", self.settings.url, blocked)
        return PassResult(delivered, dead, len(self.spool.pending()), blocked, config_error)


class DeliveryLoop:
    """The daemon's sender thread: drains the spool whenever a run adds a report (`kick`), and every
    `poll` seconds for reports spooled by other processes; backs off long while the collector refuses us."""

    def __init__(self, make_sender: Callable[[threading.Event], Sender], poll: float = 30.0) -> None:
        self.stop = threading.Event()
        self.kicked = threading.Event()
        self.poll = poll
        self.sender = make_sender(self.stop)
        self.thread = threading.Thread(target=self._loop, name="report-sender", daemon=True)

    def start(self) -> DeliveryLoop:
        self.thread.start()
        return self

    def kick(self) -> None:
        self.kicked.set()

    def step(self) -> float:
        """One pass; returns how long to wait before the next one."""
        self.kicked.clear()
        result = self.sender.drain()
        if result.config_error:
            log.error("%s; reports stay spooled", result.blocked)
        if result.blocked:
            return 3 * self.sender.max_backoff
        return self.poll

    def _loop(self) -> None:
        while not self.stop.is_set():
            wait = self.step()
            if wait > self.poll:
                self.stop.wait(wait)  # refused: new reports would be refused too
            else:
                self.kicked.wait(wait)

    def close(self, timeout: float = 5.0) -> None:
        self.stop.set()
        self.kicked.set()
        self.thread.join(timeout)
        self.sender.close()
