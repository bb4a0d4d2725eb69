"""The S3 backend: a repository in a bucket of S3-compatible object storage (MinIO, Ceph RGW, AWS S3).

Location: `s3:ENDPOINT/BUCKET[/PREFIX]`, ENDPOINT `https://host[:port]` (or `http://`). Keys under the
prefix follow the local layout: `config`, `data/XX/ID`, and KIND/ID for every other kind (`index/`,
`snapshots/`, `damage/`, `keys/`, `packkeys/`), and `locks/` for the repository lock (s3lock.py).

Every object is written once under its final name with one PUT (S3 makes an object visible whole or
not at all), so no rename and no temp object exist; a content-named object written twice gets the same
bytes. Nothing but `remove` and prune's lock clean-up deletes: backups, restores and verify need no
delete permission (append-only nodes).

The client is botocore, boto3's core (the reference S3 client; see README "Off-host repository"): path-style
addressing (any endpoint, no DNS per bucket), its "standard" retry mode (timeouts, dropped connections,
5xx and SlowDown retried with exponential backoff and jitter). Errors that will not change (403, a
missing bucket) fail at once with a message naming the bucket and endpoint. The keys come from an AWS
shared-credentials file and are given to the client only: they are never in argv, the environment,
a message or an object.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import weakref
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    ContextManager,
    Dict,
    List,
    NamedTuple,
    Optional,
    Protocol,
    Sequence,
    Tuple,
)
from urllib.parse import urlsplit

from agent.backend.base import (
    CONFIG_NAME,
    BackendError,
    Buffer,
    FileInfo,
    Handle,
    Kind,
    NotFound,
    Span,
    check_name,
    config_listing,
)
from agent.backend.readahead import RecentPacks

if TYPE_CHECKING:  # the lock's module loads when a lock is taken: a local repository's commands never need it
    from agent.backend.s3lock import Listed, S3Lock

SCHEME = "s3:"
_ATTEMPTS = 8           # botocore's standard mode: backoff min(2^n * random, 20 s) between attempts
_CONNECT_TIMEOUT = 10.0
_READ_TIMEOUT = 60.0
_BODY_ATTEMPTS = 3  # reads of a GET's body (see get)
POOL_SIZE = 16          # connections: parallel pack uploads and restore reads


class S3Options(Protocol):
    """What the `[s3]` table of agent.toml gives (agent.config.model.S3Settings)."""

    credentials_file: Optional[str]
    region: Optional[str]
    ca_file: Optional[str]


@dataclass(frozen=True)
class S3Location:
    """A parsed `s3:ENDPOINT/BUCKET[/PREFIX]`."""

    endpoint: str   # scheme://host[:port]
    bucket: str
    prefix: str     # without slashes at either end; may be empty

    @property
    def secure(self) -> bool:
        return self.endpoint.startswith("https://")

    def __str__(self) -> str:
        return f"{SCHEME}{self.endpoint}/{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")


def is_s3(location: str) -> bool:
    return location.startswith(SCHEME)


def parse_location(location: str) -> S3Location:
    """Raises ValueError saying what is wrong with an `s3:` repository string."""
    url = location[len(SCHEME):] if is_s3(location) else location
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("an s3 repository is s3:https://HOST[:PORT]/BUCKET[/PREFIX]")
    if "@" in parts.netloc:
        raise ValueError("keys do not belong in the repository URL: put them in [s3] credentials_file")
    if parts.query or parts.fragment:
        raise ValueError("an s3 repository URL has no query or fragment")
    path = parts.path.strip("/")
    bucket, _, prefix = path.partition("/")
    if not bucket:
        raise ValueError("the bucket is missing: s3:https://HOST[:PORT]/BUCKET[/PREFIX]")
    if any(piece in ("", ".", "..") for piece in prefix.split("/")) and prefix:
        raise ValueError(f"prefix {prefix!r}: empty, '.' or '..' path elements are not allowed")
    return S3Location(f"{parts.scheme}://{parts.netloc}", bucket, prefix)


class Keys(NamedTuple):
    """The access key pair read from a shared-credentials file (never printed: see __repr__)."""

    access_key: str
    secret_key: str

    def __repr__(self) -> str:
        return "Keys(...)"


def read_credentials(path: str, profile: str = "default") -> Keys:
    """The `[default]` keys of an AWS shared-credentials file (`aws_access_key_id`,
    `aws_secret_access_key`). Raises BackendError naming the file and key, never a value."""
    import configparser

    parser = configparser.RawConfigParser()
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise BackendError(f"s3.credentials_file {path}: cannot be read ({exc.strerror})") from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise BackendError(f"s3.credentials_file {path}: not an AWS shared-credentials file "
                           f"({type(exc).__name__})") from None
    if not parser.has_section(profile):
        raise BackendError(f"s3.credentials_file {path}: no [{profile}] section")
    values = []
    for key in ("aws_access_key_id", "aws_secret_access_key"):
        value = parser.get(profile, key, fallback="").strip()
        if not value:
            raise BackendError(f"s3.credentials_file {path}: [{profile}] {key} is missing")
        values.append(value)
    return Keys(*values)


class S3Backend:
    """A repository under `s3:ENDPOINT/BUCKET/PREFIX` (see the module docstring)."""

    parallel_saves = 3  # packs uploaded at once by one backup (agent.store's BlobWriter): 3 x 16 MiB in flight

    def __init__(self, location: str, options: S3Options) -> None:
        self.where = parse_location(location)
        self.location = str(self.where)
        if not options.credentials_file:
            raise BackendError(f"{self.location}: [s3] credentials_file is required for an s3 repository")
        self._options = options
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._packs = RecentPacks()
        _backends.add(self)

    # --- the client -------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:  # a forked child starts with none (_forked)
                self._client = _client_for(self.where.endpoint, self._options)
            return self._client

    def _call(self, operation: str, what: str, **params: Any) -> Any:
        """One client call; a botocore error becomes NotFound or BackendError with a message naming the
        object (`what`), the bucket and the endpoint (never the keys nor the server's raw text)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, operation)(Bucket=self.where.bucket, **params)
        except ClientError as exc:
            raise self._client_error(exc, what) from None
        except BotoCoreError as exc:  # connection refused, timeouts after every retry, TLS
            raise BackendError(f"{what}: {self._name_error(exc)} (endpoint {self.where.endpoint}, "
                               f"bucket {self.where.bucket})") from None

    @staticmethod
    def _name_error(exc: Exception) -> str:
        kind = type(exc).__name__
        if kind == "SSLError":
            return "TLS verification failed (a private CA goes in [s3] ca_file)"
        if kind in ("EndpointConnectionError", "ConnectTimeoutError"):
            return "cannot connect, after retrying"
        if kind == "ConnectionClosedError":  # connected, then the connection ended before an answer
            return "the connection was closed before an answer, after retrying"
        if kind == "ReadTimeoutError":
            return "no answer in time, after retrying"
        return f"{kind}, after retrying"

    def _client_error(self, exc: Any, what: str) -> BackendError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        where = f"bucket {self.where.bucket} at {self.where.endpoint}"
        if code == "NoSuchBucket":
            return BackendError(f"{what}: {where}: the bucket does not exist (create it first)")
        if code == "InvalidRange" or status == 416:
            return _PastTheEnd(f"{what}: the range is past the end")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return NotFound(f"{what}: no such object")
        if status == 403 or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            hint = {"InvalidAccessKeyId": "the access key is not known to the server",
                    "SignatureDoesNotMatch": "the secret key does not match the access key"}.get(
                        code, "access denied")
            # a HEAD answer has no body to name the cause: its code is the status itself
            cause = f"HTTP 403 {code}" if code and code != "403" else "HTTP 403, a HEAD request names no cause"
            return AccessDenied(f"{what}: {where}: {hint} ({cause}; the keys are in [s3] credentials_file)")
        return BackendError(f"{what}: {where}: HTTP {status} {code if code != str(status) else ''}".rstrip())

    # --- names --------------------------------------------------------------------------------------

    def key(self, handle: Handle) -> str:
        if handle.kind is Kind.CONFIG:
            return self.key_under(CONFIG_NAME)
        check_name(handle)
        name = handle.name
        if handle.kind is Kind.DATA:
            return self.key_under(f"data/{name[:2]}/{name}")
        return self.key_under(f"{handle.kind.value}/{name}")

    def key_under(self, relative: str) -> str:
        return f"{self.where.prefix}/{relative}" if self.where.prefix else relative

    def describe(self, handle: Handle) -> str:
        return f"{self.location}/{self.key(handle)[len(self.where.prefix) + 1 if self.where.prefix else 0:]}"

    # --- objects ------------------------------------------------------------------------------------

    def create(self) -> None:
        try:
            self._call("head_bucket", self.location)
        except NotFound:  # HEAD answers carry no error code: a 404 here is the bucket's
            raise BackendError(f"{self.location}: bucket {self.where.bucket} at {self.where.endpoint}: the bucket "
                               "does not exist (create it first)") from None

    def save(self, handle: Handle, pieces: Sequence[Buffer]) -> None:
        self.put(self.key(handle), pieces, self.describe(handle))

    def put(self, key: str, pieces: Sequence[Buffer], what: str) -> Dict[str, Any]:
        """One PUT of the concatenated pieces with their Content-MD5 (the server refuses a body damaged
        on the way); returns the response's headers."""
        body = pieces[0] if len(pieces) == 1 and isinstance(pieces[0], bytes) else \
            b"".join(bytes(piece) if not isinstance(piece, bytes) else piece for piece in pieces)
        digest = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
        answer = self._call("put_object", what, Key=key, Body=body, ContentMD5=digest)
        return dict(answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}))

    def load(self, handle: Handle, length: int = -1, offset: int = 0) -> bytes:
        if handle.kind is Kind.DATA and (offset or length >= 0):
            return self._packs.read(handle.name, length, offset, lambda: self.get(
                self.key(handle), self.describe(handle)), lambda: self.get(
                self.key(handle), self.describe(handle), length, offset))
        return self.get(self.key(handle), self.describe(handle), length, offset)

    def get(self, key: str, what: str, length: int = -1, offset: int = 0) -> bytes:
        params: Dict[str, Any] = {"Key": key}
        if length == 0:
            self._call("head_object", what, Key=key)  # NotFound for a missing object, as for others
            return b""
        if offset or length > 0:
            params["Range"] = f"bytes={offset}-" + (str(offset + length - 1) if length > 0 else "")
        from botocore.exceptions import BotoCoreError
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        try:
            # the client retries a request, not the reading of its body: a body cut short or stalled past the
            # read timeout (a 16 MiB pack) is asked for again, or every file of that pack would fail
            for attempt in Retrying(retry=retry_if_exception_type(BotoCoreError), reraise=True,
                                    stop=stop_after_attempt(_BODY_ATTEMPTS), wait=wait_exponential(max=10)):
                with attempt:
                    return self._call("get_object", what, **params)["Body"].read()
        except _PastTheEnd:  # a range wholly past the end of an existing object
            return b""
        except BotoCoreError as exc:
            raise BackendError(f"{what}: {self._name_error(exc)} (endpoint {self.where.endpoint})") from None
        raise AssertionError("unreachable: Retrying returns or raises")

    def stat(self, handle: Handle) -> FileInfo:
        answer = self._call("head_object", self.describe(handle), Key=self.key(handle))
        return FileInfo(handle.name, int(answer["ContentLength"]))

    def list(self, kind: Kind) -> List[FileInfo]:
        if kind is Kind.CONFIG:
            return config_listing(self.stat)
        found = [FileInfo(item.key.rsplit("/", 1)[-1], item.size)
                 for item in self.list_keys(self.key_under(kind.value + "/"))[0]]
        return sorted(found, key=lambda info: info.name)

    def list_keys(self, prefix: str) -> Tuple[List[Listed], float]:
        """Every object under `prefix` (a full key prefix), and the server's clock at the answer (the
        Date header, seconds since the epoch): lock staleness is judged by the server's clock alone."""
        from agent.backend.s3lock import Listed

        listed: List[Listed] = []
        token: Optional[str] = None
        now = 0.0
        while True:
            params: Dict[str, Any] = {"Prefix": prefix, "MaxKeys": 1000}
            if token:
                params["ContinuationToken"] = token
            answer = self._call("list_objects_v2", f"{self.location} (listing {prefix or '/'})", **params)
            now = server_time(answer.get("ResponseMetadata", {}).get("HTTPHeaders", {})) or now
            for item in answer.get("Contents", ()):
                listed.append(Listed(item["Key"], int(item["Size"]), item["LastModified"].timestamp()))
            if not answer.get("IsTruncated"):
                return listed, now
            token = answer.get("NextContinuationToken")

    def read_ahead(self, spans: Sequence[Span]) -> ContextManager[None]:
        return self._packs.ahead([span for span in spans if span.handle.kind is Kind.DATA], lambda span: self.get(
            self.key(span.handle), self.describe(span.handle), -1 if span.end < 0 else span.end - span.offset,
            span.offset))

    def remove(self, handle: Handle) -> None:
        what = self.describe(handle)
        # S3 answers 204 for a missing key too; the interface says NotFound (prune counts what it freed)
        self._call("head_object", what, Key=self.key(handle))
        self._packs.forget(handle.name)
        self.delete(self.key(handle), what)

    def delete(self, key: str, what: str) -> None:
        try:
            self._call("delete_object", what, Key=key)
        except AccessDenied as exc:
            raise AccessDenied(f"{exc} -- deleting needs credentials with delete permission "
                               "(append-only node keys cannot prune; run prune where such keys are)") from None

    def lock(self, exclusive: bool, purpose: str) -> S3Lock:
        from agent.backend.s3lock import S3Lock

        return S3Lock(self, exclusive, purpose)

    def remove_leftovers(self) -> int:
        """Objects are never written under temporary names; what killed runs leave (unindexed packs)
        is prune's to collect, and lock objects that ended or went stale are removed here."""
        from agent.backend.s3lock import remove_dead_locks

        return remove_dead_locks(self)

    def release(self, kind: Optional[Kind] = None) -> None:
        if kind is None or kind is Kind.DATA:
            self._packs.clear()

    def close(self) -> None:
        self._packs.clear()  # the client's connection pool is reused by the next call


_clients: Dict[Tuple[str, Optional[str], Optional[str], Keys], Any] = {}
_clients_lock = threading.Lock()
_backends: weakref.WeakSet[S3Backend] = weakref.WeakSet()


def _forked() -> None:
    """In a forked child (verify's workers, a restore's writers): no client of the parent is used (two
    processes reading answers from one pooled socket get each other's bytes), the locks another thread of
    the parent held at the fork (a lock's refresher asking for the client) would stay held, so each starts
    afresh, and no pack read ahead by the parent is shared."""
    global _clients_lock
    _clients_lock = threading.Lock()
    _clients.clear()
    for backend in list(_backends):
        backend._client_lock = threading.Lock()
        backend._client = None
        backend._packs = RecentPacks()


os.register_at_fork(after_in_child=_forked)


def _client_for(endpoint: str, options: S3Options) -> Any:
    """The botocore S3 client for `endpoint` with these settings and keys: made once per process (a client
    costs ~70 ms of service-model loading and keeps the connection pool), shared by every S3Backend of the
    process (botocore clients are thread-safe); a forked child makes its own (_forked)."""
    keys = read_credentials(str(options.credentials_file))
    key = (endpoint, options.region, options.ca_file, keys)
    with _clients_lock:
        client = _clients.get(key)
    if client is None:  # made outside the lock: a process forked meanwhile (verify's workers) finds it free
        client = _make_client(endpoint, options, keys)
        with _clients_lock:
            client = _clients.setdefault(key, client)
    return client


def _make_client(endpoint: str, options: S3Options, keys: Keys) -> Any:
    # botocore alone, not boto3: boto3 adds s3transfer and its resource layer (about 20 ms of CPU at the
    # command's start) for nothing this backend calls
    import botocore.session
    from botocore.config import Config

    config = Config(
        region_name=options.region or "us-east-1",
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"mode": "standard", "max_attempts": _ATTEMPTS},
        connect_timeout=_CONNECT_TIMEOUT, read_timeout=_READ_TIMEOUT,
        max_pool_connections=POOL_SIZE,
        # integrity is ours (content-named objects re-hashed on read, Content-MD5 on every PUT);
        # the newer default (aws-chunked trailing checksums) is not understood by every server
        request_checksum_calculation="when_required", response_checksum_validation="when_required",
        tcp_keepalive=True)
    verify: Any = options.ca_file if options.ca_file else True
    # the keys are handed to this client alone: never the environment's or ~/.aws's
    return botocore.session.Session().create_client(
        "s3", endpoint_url=endpoint, config=config, verify=verify,
        aws_access_key_id=keys.access_key, aws_secret_access_key=keys.secret_key)


class AccessDenied(BackendError):
    """HTTP 403: the keys may not do this here (no retry changes it)."""


class _PastTheEnd(BackendError):
    """HTTP 416: a range that starts at or past the end of an existing object."""


def server_time(headers: Dict[str, Any]) -> float:
    """The Date header as seconds since the epoch (0.0 without one)."""
    from email.utils import parsedate_to_datetime

    stamp = headers.get("date")
    if not stamp:
        return 0.0
    try:
        return parsedate_to_datetime(stamp).timestamp()
    except (TypeError, ValueError):
        return 0.0


__all__ = ["AccessDenied", "Keys", "S3Backend", "S3Location", "S3Options", "is_s3", "parse_location",
           "read_credentials", "server_time"]
